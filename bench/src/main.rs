//! regent-bench: times `docker-credential-regent get` of a stored credential as
//! a whole process, side by side in one run with an exec floor, and reports the
//! helper's size and memory and the agent's memory.
//!
//! Run it through `scripts/bench`, which builds the release binaries and
//! then calls this program. Without `--server`, it starts an agent of its own
//! on the memory store in a hermetic world (HOME, the XDG dirs and the socket
//! in a temporary directory: [`regent_tests::World`]) and stores one made-up
//! credential through the helper; with `--server URL`, it times the agent the
//! caller's environment points at, which must hold a credential for URL.
//! `--help` lists the options.
//!
//! These kinds of process are spawned `--runs` times each (default 2000),
//! round-robin with the order rotating every round, so that machine noise hits
//! all of them alike:
//!
//! - `floor`: `regent-bench-floor`, an empty Rust binary, with the URL on stdin;
//! - `floor-static`: the same program linked statically for musl, when
//!   scripts/bench could build it (`--floor-static`);
//! - `cat`: `/bin/cat`, reading the URL from stdin;
//! - `helper`: `docker-credential-regent get`, with the URL on stdin;
//! - the helper's other operations, on an agent of this program's own only
//!   (not with `--server`, whose agent is the caller's): `get-missing` (a
//!   `get` of a server never stored, which exits 1 with Docker's "not
//!   found" message), `store` (JSON on stdin, overwriting one server),
//!   `list-100` (with 100 credentials stored) and `erase` (of a server
//!   re-stored untimed before each run);
//! - `ecr` (a fourth kind, unless `--quick` or `--no-ecr`): the helper's `get`
//!   of an ECR host whose token a second agent of this program's own holds
//!   (see [`ecr`]); that section then counts token-endpoint calls over
//!   `--ecr-gets` gets with short token lifetimes;
//! - `github-app` and `env` (unless `--quick` or `--no-sources`): the
//!   helper's `get` of a host whose entry is that source, in a third agent
//!   (see [`sources`]).
//!
//! Then, unless `--quick` or `--no-load`, the load section ([`load`]):
//! per-operation latency beside the floor and the other Debian helpers,
//! parallel helpers, and an agent with many credentials.
//!
//! Every process gets the URL from a pipe filled before the spawn and writes to
//! /dev/null (the helper's answer holds the secret: it is never printed). The
//! wall time runs from just before the spawn to the return of `wait4`.
//!
//! Peak RSS is reported two ways. `wait4`'s `ru_maxrss` (max over the timed
//! runs) is an upper bound only: Linux carries the high-water mark of the
//! memory image that called `execve` over to the new program, and with
//! `posix_spawn` (a vfork) that image is this benchmark's own, so every kind
//! shows at least this process's RSS. The exact figure comes from a separate,
//! untimed pass (`--rss-runs`, default 20 per kind) that traces each child with
//! ptrace and reads `VmHWM` from `/proc/<pid>/status` when it is about to exit
//! (Linux; elsewhere, or when ptrace is not allowed, only the upper bound is
//! given). The helper's RSS target is judged on the exact figure when there is
//! one.
//!
//! The targets are printed with PASS or MISS and never change the exit status:
//! this program reports, it does not assert. It exits non-zero only when it
//! cannot measure (a binary is missing, the helper's `get` does not return the
//! stored credential).

mod agent;
mod args;
mod ecr;
mod load;
mod proc;
mod report;
mod run;
mod sources;
mod system;
mod timing;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = args::Args::parse();
    match run::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("regent-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Progress, on stderr.
fn progress(msg: &str) {
    eprintln!("==> {msg}");
}
