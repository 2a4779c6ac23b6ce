#!/usr/bin/env bash
# Times `entitled import` of ROWS users (default 100000) into a fresh release
# server on a temporary directory, then the re-run (all rows unchanged) and an
# export. Prints the figures BENCHMARKS.md records.
#   scripts/bench-import.sh [ROWS]
set -euo pipefail
rows=${1:-100000}
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=$PWD/target/release/entitled
dir=$(mktemp -d)
trap 'kill "$server" 2>/dev/null || true; rm -rf "$dir"' EXIT

"$bin" serve --listen 127.0.0.1:0 --data-dir "$dir/data" 2>"$dir/serve.log" &
server=$!
for _ in $(seq 100); do grep -q "serving addr=" "$dir/serve.log" 2>/dev/null && break; sleep 0.1; done
addr=$(sed -n 's/.*serving addr=\([0-9.:]*\).*/\1/p' "$dir/serve.log" | head -1)
export ENTITLED_SERVER=http://$addr ENTITLED_TOKEN
ENTITLED_TOKEN=$(cat "$dir/data/operator.token")
for a in $(seq 0 9); do "$bin" account create "co$a" --product-line work >/dev/null; done

# 10 accounts; editions across the X Series; tiers each edition allows.
awk -v n="$rows" 'BEGIN {
  print "account_id,user_id,display_name,edition,analytics_tier"
  split("X1 X2 X3 X4 X6 X8 X8e", ed, " "); split("none essentials supervisor", t, " ")
  for (i = 0; i < n; i++) {
    e = ed[i % 7 + 1]; tier = t[i % 3 + 1]
    if (tier == "supervisor" && (e == "X1" || e == "X2" || e == "X3")) tier = "essentials"
    printf "co%d,u%07d,User %d,%s,%s\n", i % 10, i, i, e, tier
  }
}' > "$dir/users.csv"

time_it() { local start=$EPOCHREALTIME; "$@" >/dev/null 2>&1; awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f", b - a }'; }
echo "rows: $rows"
echo "import (dry run of every chunk, then apply): $(time_it "$bin" import "$dir/users.csv") s"
echo "re-run (every row unchanged):                $(time_it "$bin" import "$dir/users.csv") s"
echo "export to CSV:                                $(time_it "$bin" export --out "$dir/out.csv") s"
echo "exported lines (with header):                 $(wc -l < "$dir/out.csv")"
