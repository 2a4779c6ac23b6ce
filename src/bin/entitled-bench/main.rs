//! `entitled-bench`: the load generator. In one run it measures a baseline
//! tonic server (one unary RPC answered from an in-memory map: the floor of
//! what a gRPC call costs here) and `entitled` loaded with N users, with the
//! same client, concurrency and connections, and prints the table.
//!
//! Each server runs in a child process of this binary (`serve`), pinned with
//! `taskset -c SERVER_CORE`; the load generator pins itself to
//! `CLIENT_CORE`. Users are written by `load` (another child) through the
//! store's bulk import, which bypasses the RPCs and the catalogue's rules
//! (the records it writes are valid by construction); every figure is then
//! measured through gRPC. Benchmarks print figures; nothing here asserts a
//! time.
//!
//! Built only with the `bench` feature. By job: `cli` (flags and the
//! children's roles), `data` (the data set and the `load` child), `servers`
//! (the `serve` child and the handle on it), `drivers` (the client loops),
//! `stats` (what a run measured), `migrate` (`entitled-bench migrate`:
//! MigrateAccount on one large account), `report` (the tables), `run` (the order of
//! it all). Its server processes are handled by the tests' `child.rs`, not
//! a copy of it.

mod callgrind;
#[allow(dead_code, reason = "the tests use what the bench does not")]
#[path = "../../../tests/common/child.rs"]
mod child;
mod cli;
mod data;
mod drivers;
mod h2load;
mod migrate;
mod postgres;
mod proto;
mod prune;
mod raw;
mod report;
mod run;
mod servers;
mod stats;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Role};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.role {
        Some(Role::Load {
            dir,
            store,
            users,
            users_per_account,
            legacy,
        }) => data::load(&dir, store.as_deref(), users, users_per_account, legacy),
        Some(Role::Migrate(args)) => migrate::migrate(args),
        Some(Role::SledScan { dir, cache_mib }) => data::sled_scan(&dir, cache_mib),
        Some(Role::Serve {
            kind,
            dir,
            store,
            users,
            users_per_account,
        }) => servers::serve(kind, dir, store, users, users_per_account),
        Some(Role::Callgrind(args)) => callgrind::callgrind(args),
        Some(Role::H2load(args)) => h2load::h2load(args),
        Some(Role::Prune(args)) => prune::prune(args),
        None => run::orchestrate(cli.run),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
