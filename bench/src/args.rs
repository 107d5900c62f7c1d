//! regent-bench's command line (`--help` lists it).

use std::path::PathBuf;

use clap::Parser;

use crate::load::LoadOptions;

/// Times `docker-credential-regent get` against an exec floor; see scripts/bench.
///
/// A later occurrence of an option replaces an earlier one, so that
/// scripts/bench's own choices can be overridden.
#[derive(Parser)]
#[command(name = "regent-bench", args_override_self = true)]
pub struct Args {
    /// The server URL of a credential a running agent holds [default: start an
    /// agent of this program's own in a temporary directory and store one
    /// made-up credential for bench.regent.test]
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// Timed runs per kind
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub runs: usize,
    /// Untimed runs per kind first
    #[arg(long, value_name = "N", default_value_t = 50)]
    pub warmup: usize,
    /// docker-credential-regent
    #[arg(long, value_name = "PATH", default_value_os_t = next_to_this_program("docker-credential-regent"))]
    pub helper: PathBuf,
    /// The empty Rust binary
    #[arg(long, value_name = "PATH", default_value_os_t = next_to_this_program("regent-bench-floor"))]
    pub floor: PathBuf,
    /// The cat floor
    /// The same empty program, linked statically for musl (scripts/bench
    /// builds it with rustc when the musl target is installed): the
    /// physical floor of "exec a program". Left out when the file is not
    /// there.
    #[arg(long, value_name = "PATH", default_value_os_t = next_to_this_program("regent-bench-floor-static"))]
    pub floor_static: PathBuf,
    #[arg(long, value_name = "PATH", default_value = "/bin/cat")]
    pub cat: PathBuf,
    /// Traced runs per kind for the exact peak RSS (0: skip)
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub rss_runs: usize,
    /// The agent, for its RSS [default: the agent regent-bench started, or
    /// the one answering on the socket]
    #[arg(long, value_name = "PID")]
    pub agent_pid: Option<u32>,
    /// Print one JSON object instead of the table
    #[arg(long)]
    pub json: bool,
    /// Only the helper, the floors, sizes and RSS: no ECR, sources or load section
    #[arg(long)]
    pub quick: bool,
    /// Skip the sources section (the github-app and env gets)
    #[arg(long)]
    pub no_sources: bool,
    /// The agent executable
    #[arg(long, value_name = "PATH", default_value_os_t = next_to_this_program("regent"))]
    pub regent: PathBuf,
    #[command(flatten)]
    pub ecr: EcrOptions,
    #[command(flatten)]
    pub load: LoadOptions,
}

/// The ECR section's options.
#[derive(clap::Args)]
#[command(
    next_help_heading = "ECR section (a fake GetAuthorizationToken on 127.0.0.1 and a second agent)"
)]
pub struct EcrOptions {
    /// Skip it
    #[arg(long)]
    pub no_ecr: bool,
    /// Gets in the short-lifetime run (0: skip that run)
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub ecr_gets: usize,
    /// Token lifetime of that run, seconds
    #[arg(long, value_name = "S", default_value_t = 6)]
    pub ecr_lifetime: u64,
}

impl Args {
    /// The values clap cannot check alone.
    pub fn check(&self) -> Result<(), String> {
        if self.runs == 0 {
            return Err("--runs must be at least 1".into());
        }
        if self.ecr.ecr_lifetime < 2 {
            return Err("--ecr-lifetime must be at least 2 (seconds)".into());
        }
        if self.load.load_runs == 0 {
            return Err("--load-runs must be at least 1".into());
        }
        if self.load.parallel.contains(&0) {
            return Err("--parallel: every count must be at least 1".into());
        }
        Ok(())
    }

    /// Whether the ECR section runs.
    pub fn with_ecr(&self) -> bool {
        !self.quick && !self.ecr.no_ecr
    }

    /// Whether the sources section runs.
    pub fn with_sources(&self) -> bool {
        !self.quick && !self.no_sources
    }

    /// Whether the load section runs.
    pub fn with_load(&self) -> bool {
        !self.quick && !self.load.no_load
    }
}

/// `name` in the directory of this executable (target/release when built).
fn next_to_this_program(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}
