//! `regent reload`: the running agent re-reads the config file; without
//! one, the file is only checked.

use std::process::ExitCode;
use std::time::Duration;

use regent_shared::protocol::{Request, Response};

use super::call;
use super::output::outln;
use crate::config::Settings;

pub fn run() -> anyhow::Result<ExitCode> {
    let Some(mut conn) = call::running_agent()? else {
        // Nothing to reload; still say whether the next start will work
        // (the file and this shell's REGENT_* variables, as the start
        // checks them).
        let settings = Settings::load()?;
        let state = if settings.file_present {
            "is valid"
        } else {
            "does not exist (the defaults apply)"
        };
        outln!(
            "regent agent is not running; {} {state} ({} registry entries) \
             and will be read when it starts",
            settings.path.display(),
            settings.rules.len()
        );
        return Ok(ExitCode::SUCCESS);
    };
    match call::accepted(conn.call(&Request::Reload, Duration::from_secs(10))?)? {
        Response::Reloaded { config, rules } => {
            outln!("reloaded {config}: {rules} registry entries in force");
            Ok(ExitCode::SUCCESS)
        }
        other => Err(call::unexpected(&other)),
    }
}
