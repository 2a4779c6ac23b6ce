//! `entitled-bench callgrind`: the server's user-space instructions per
//! call, counted by valgrind's callgrind, for the baseline and for
//! `entitled` (production configuration: authentication, metrics, the
//! overload limit, the full answer), with the same calls in the same run.
//! Instructions do not move with the machine's load (about 0.2 % between
//! runs), so this is the figure to steer by on a shared machine.
//!
//! Each server runs under `valgrind --tool=callgrind`; after a warm-up its
//! counters are zeroed (`callgrind_control -z`), the measured calls are
//! made, and the counters dumped (`callgrind_control -d`) to
//! `OUT/KIND.callgrind.1`, which `callgrind_annotate` reads.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use entitled::client::Bearer;

use crate::{
    BoxError,
    cli::CallgrindArgs,
    data::load_store,
    drivers::{baseline_call, batch_call, counted, entitled_call},
    servers::{Launch, ServerProcess},
};

pub fn callgrind(args: CallgrindArgs) -> Result<(), BoxError> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(args))
}

async fn run(args: CallgrindArgs) -> Result<(), BoxError> {
    std::fs::create_dir_all(&args.out)?;
    let out = std::fs::canonicalize(&args.out)?;
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("store");
    load_store(&dir, args.users, args.users_per_account)?;
    let pin = (!args.no_pin).then_some(args.server_core);
    let launch = |kind: &str| {
        Launch::pinned(pin).under(
            "valgrind",
            [
                "--tool=callgrind".to_owned(),
                format!("--callgrind-out-file={}/{kind}.callgrind", out.display()),
            ],
        )
    };
    eprintln!(
        "callgrind: {} users, {} calls after {} warm-up calls, {} in flight over {} connections",
        args.users, args.calls, args.warmup_calls, args.concurrency, args.connections
    );

    let (users, per) = (args.users, args.users_per_account);
    let entitled = ServerProcess::entitled(&launch("entitled"), &dir).await?;
    let bearer = entitled.bearer.clone();
    if args.batch_size > 0 {
        // The batch row's profile: entitled alone, per user-check.
        let size = args.batch_size;
        let call = batch_call(users, per, size, args.omit_reports, bearer);
        let ent = measure(&args, &out, "entitled", &entitled, call).await?;
        entitled.stop()?;
        let checks = args.calls * size as u64;
        println!(
            "entitled BatchCheckAnalyticsAccess × {size}{}: {} calls, {ent} instructions, {:.0} per user-check",
            if args.omit_reports {
                ", answers without reports"
            } else {
                ""
            },
            args.calls,
            ent as f64 / checks as f64
        );
        println!(
            "profile: scripts/callgrind-top.py {}/entitled.callgrind.1 {checks}",
            out.display()
        );
        return Ok(());
    }
    let call = entitled_call(users, per, bearer.clone());
    let ent = measure(&args, &out, "entitled", &entitled, call).await?;
    entitled.stop()?;

    // The same calls: with entitled's token (`baseline_call` says why),
    // unless asked for the baseline's bare calls.
    let bearer = if args.bare_baseline {
        Bearer::new(None)?
    } else {
        bearer
    };
    let baseline = ServerProcess::baseline(&launch("baseline"), users, per).await?;
    let call = baseline_call(users, per, bearer);
    let base = measure(&args, &out, "baseline", &baseline, call).await?;
    baseline.stop()?;

    let (b, e) = (
        base as f64 / args.calls as f64,
        ent as f64 / args.calls as f64,
    );
    let ratio = e / b;
    println!("| server | calls | instructions (Ir) | per call |");
    println!("| --- | --- | --- | --- |");
    let bare = if args.bare_baseline {
        " (no token)"
    } else {
        ""
    };
    println!(
        "| baseline Lookup{bare} | {} | {base} | {b:.0} |",
        args.calls
    );
    println!(
        "| entitled CheckAnalyticsAccess | {} | {ent} | {e:.0} |",
        args.calls
    );
    println!();
    println!(
        "user-space instructions per check vs the baseline's: {ratio:.3} (target ≤ 1.10: {})",
        if ratio <= 1.10 { "met" } else { "**not met**" }
    );
    println!();
    println!(
        "profiles: scripts/callgrind-top.py {0}/entitled.callgrind.1 {1}; scripts/callgrind-top.py --diff {0}/baseline.callgrind.1 {0}/entitled.callgrind.1 {1}",
        out.display(),
        args.calls
    );
    Ok(())
}

/// Warms `server` up, zeroes its counters, makes the measured calls and
/// dumps the counters; returns the instructions they counted.
async fn measure<F, Fut>(
    args: &CallgrindArgs,
    out: &Path,
    kind: &str,
    server: &ServerProcess,
    call: F,
) -> Result<u64, BoxError>
where
    F: Fn(tonic::transport::Channel, usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<u64, tonic::Status>> + Send,
{
    let (conns, c) = (args.connections, args.concurrency);
    eprintln!("callgrind: {kind}: warm-up");
    counted(server.addr, conns, c, args.warmup_calls, 0, call.clone()).await?;
    control(server.id(), "-z")?;
    eprintln!("callgrind: {kind}: {} calls", args.calls);
    counted(server.addr, conns, c, args.calls, args.warmup_calls, call).await?;
    // What a call does after its answer has left (freeing, the metrics'
    // timers) belongs to it too.
    tokio::time::sleep(Duration::from_millis(200)).await;
    control(server.id(), "-d")?;
    let dump: PathBuf = out.join(format!("{kind}.callgrind.1"));
    instructions(&dump)
}

fn control(pid: u32, command: &str) -> Result<(), BoxError> {
    let status = Command::new("callgrind_control")
        .arg(command)
        .arg(pid.to_string())
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run `callgrind_control` ({e}); install valgrind"))?;
    if !status.success() {
        return Err(format!("`callgrind_control {command} {pid}` failed").into());
    }
    Ok(())
}

/// The total of a callgrind dump (its `summary:` or `totals:` line).
fn instructions(dump: &Path) -> Result<u64, BoxError> {
    // The dump is written by the server after `callgrind_control` returns.
    for _ in 0..100 {
        if let Ok(text) = std::fs::read_to_string(dump)
            && let Some(total) = text.lines().find_map(|l| {
                l.strip_prefix("summary: ")
                    .or_else(|| l.strip_prefix("totals: "))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
        {
            return Ok(total);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("no totals in {}", dump.display()).into())
}
