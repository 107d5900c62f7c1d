//! `regent secret set/rm/ls`: the named secrets config entries refer to,
//! kept by the agent. A value is read from stdin ([`super::prompt`]), never
//! from the command line.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use regent_shared::protocol::{Request, Response};

use super::output::outln;
use super::{call, prompt};
use crate::named_secrets;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Store a named secret; the value is read from stdin (never from the command line).
    Set {
        name: String,
        /// Never the value: anything after NAME is refused without being
        /// shown (see `usage_error` in `cli/mod.rs`).
        #[arg(hide = true, num_args = 0.., allow_hyphen_values = true, trailing_var_arg = true)]
        rest: Vec<OsString>,
    },
    /// Remove a named secret (succeeds when it is not there).
    Rm { name: String },
    /// List the names of the named secrets (never their values).
    Ls,
}

impl Args {
    /// True when `regent secret set NAME` was given more than the NAME:
    /// maybe the value, which is refused.
    pub fn value_on_command_line(&self) -> bool {
        matches!(&self.command, Command::Set { rest, .. } if !rest.is_empty())
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let req = match args.command {
        Command::Set { name, .. } => {
            named_secrets::check_name(&name).map_err(anyhow::Error::msg)?;
            let value = prompt::read_secret(&name)?;
            if value.is_empty() {
                bail!(
                    "no secret on stdin; nothing was stored (e.g. `printf %s \"$TOKEN\" | regent secret set {name}`)"
                );
            }
            Request::SecretSet {
                name,
                secret: regent_shared::Secret::new(value.to_string()),
            }
        }
        Command::Rm { name } => Request::SecretRm { name },
        Command::Ls => Request::SecretLs,
    };
    match call::call_agent(&req)? {
        Response::Done => Ok(ExitCode::SUCCESS),
        Response::Secrets { names } => {
            for name in names {
                outln!("{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        other => Err(call::unexpected(&other)),
    }
}
