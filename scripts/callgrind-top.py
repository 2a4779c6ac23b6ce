#!/usr/bin/env python3
"""The top functions of a callgrind dump by their own (exclusive) cost, per
call: what `callgrind_annotate` would list, for the dumps that
`entitled-bench callgrind` writes. (valgrind 3.19's callgrind_annotate puts
the whole of such a dump under `clone`, the start of the worker thread
whose frames span the zeroing, so it cannot be used on them.)

    scripts/callgrind-top.py DUMP CALLS [N]
    scripts/callgrind-top.py --diff BASE_DUMP DUMP CALLS [N]

With --diff, each function's cost per call in DUMP minus that in BASE_DUMP,
largest differences first: where one server spends what the other does not.
"""

import collections
import re
import sys


def self_costs(path):
    """Exclusive Ir of each function in a callgrind dump."""
    names = {}

    def name(value):
        # Name compression: "(id) name" defines an id, "(id)" reuses it.
        m = re.match(r"\((\d+)\)(?: (.*))?", value)
        if not m:
            return value
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), value)

    costs = collections.Counter()
    fn = None
    call_line = False
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("fn="):
                fn = name(line[3:])
            elif line.startswith("cfn="):
                name(line[4:])
            elif line.startswith("calls="):
                # The next cost line is the call's inclusive cost.
                call_line = True
            elif line and (line[0].isdigit() or line[0] in "+-*"):
                parts = line.split()
                if len(parts) >= 2:
                    if call_line:
                        call_line = False
                    else:
                        costs[fn] += int(parts[1])
    return costs


def main(argv):
    if argv[:1] == ["--diff"]:
        base, dump, calls = self_costs(argv[1]), self_costs(argv[2]), int(argv[3])
        n = int(argv[4]) if len(argv) > 4 else 30
        diff = {k: (dump.get(k, 0) - base.get(k, 0)) / calls for k in set(base) | set(dump)}
        print(f"{sum(diff.values()):10.0f}  total difference per call")
        for k, v in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:n]:
            print(f"{v:10.0f}  {k}")
        return
    costs, calls = self_costs(argv[0]), int(argv[1])
    n = int(argv[2]) if len(argv) > 2 else 30
    total = sum(costs.values())
    print(f"{total / calls:10.0f}  total per call")
    for k, v in costs.most_common(n):
        print(f"{v / calls:10.0f}  {100 * v / total:5.1f}%  {k}")


if __name__ == "__main__":
    main(sys.argv[1:])
