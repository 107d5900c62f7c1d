//! `regent status [--json]`: the running agent as it describes itself, or,
//! when none runs, whether a start would work (the config, the clients'
//! set-up, the last start's failure in the agent log).

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use regent_shared::paths;
use regent_shared::protocol::{Request, Response, StatusInfo};

use super::output::{human_duration, outln};
use super::{call, setup};
use crate::config::Settings;

/// Exit status of `regent status` when no agent is running (as `systemctl status`).
const EXIT_NOT_RUNNING: u8 = 3;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Some(mut conn) = call::running_agent()? else {
        not_running(args.json)?;
        return Ok(ExitCode::from(EXIT_NOT_RUNNING));
    };
    let resp = conn.call(&Request::Status, Duration::from_secs(5))?;
    let Response::Status(info) = resp else {
        return Err(call::unexpected(&resp));
    };
    let warnings = setup_warnings();
    if args.json {
        let mut value = serde_json::to_value(&*info)?;
        value["running"] = serde_json::Value::Bool(true);
        if !warnings.is_empty() {
            value["warnings"] = warnings.into();
        }
        outln!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        print_status(&info);
        for w in &warnings {
            outln!("warning:      {w}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Would a start work? The config and the environment are checked here as
/// the agent checks them; what only the agent can find out (the store)
/// comes from its log's last start.
fn not_running(json: bool) -> anyhow::Result<()> {
    let socket = paths::socket_path();
    let config_error = Settings::load().err().map(|e| e.to_string());
    let warnings = setup_warnings();
    let log = paths::log_file();
    let failed = last_start_failure(&log);
    if json {
        let mut value = serde_json::json!({
            "running": false,
            "socket": socket.display().to_string(),
        });
        if let Some(e) = &config_error {
            value["config_error"] = e.clone().into();
        }
        if !warnings.is_empty() {
            value["warnings"] = warnings.clone().into();
        }
        if let Some((time, message)) = &failed {
            value["last_start_error"] = message.clone().into();
            value["last_start_error_time"] = time.clone().into();
            value["log"] = log.display().to_string().into();
        }
        outln!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        outln!("agent:        not running");
        outln!("socket:       {}", socket.display());
        if let Some(e) = &config_error {
            outln!("cannot start: {e}");
            outln!("              (fix it, then `regent start`)");
        } else if let Some((time, message)) = &failed {
            outln!("last start:   failed at {time}: {message}");
            outln!(
                "              (from {}; `regent start` tries again and says why it fails)",
                log.display()
            );
        } else {
            outln!("              (`regent start` or any docker-credential-regent call starts it)");
        }
        for w in &warnings {
            outln!("warning:      {w}");
        }
    }
    Ok(())
}

/// What is wrong with the clients' set-up: a podman drop-in of an older
/// regent that falls back to plaintext auth.json files.
fn setup_warnings() -> Vec<String> {
    setup::dropins_with_plaintext_fallback()
        .into_iter()
        .map(|path| {
            format!(
                "{} lets podman, buildah and skopeo save a login in a plaintext auth.json \
                 when regent cannot store it; `regent setup podman` rewrites it",
                path.display()
            )
        })
        .collect()
}

/// The last start of a background agent, if it failed: its time and the
/// error, from the agent log (the start's `agent starting` line, then an
/// `ERROR` line before any `listening`).
fn last_start_failure(log: &Path) -> Option<(String, String)> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 256 * 1024;
    let mut file = std::fs::File::open(log).ok()?;
    let len = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(TAIL))).ok()?;
    let mut bytes = Vec::new();
    file.take(TAIL).read_to_end(&mut bytes).ok()?;
    start_failure_in(&String::from_utf8_lossy(&bytes))
}

/// See [`last_start_failure`]; log lines read `<time>  <LEVEL> <message>`.
fn start_failure_in(log: &str) -> Option<(String, String)> {
    let mut starting = false;
    let mut failure = None;
    for line in log.lines() {
        let mut words = line.split_whitespace();
        let (Some(time), Some(level)) = (words.next(), words.next()) else {
            continue;
        };
        let after_time = &line[line.find(time).unwrap_or(0) + time.len()..];
        let rest = after_time.trim_start()[level.len()..].trim();
        match level {
            "INFO" if rest.starts_with("agent starting") => {
                starting = true;
                failure = None;
            }
            "INFO" if rest.starts_with("listening") => starting = false,
            "ERROR" if starting && failure.is_none() => {
                failure = Some((time.to_owned(), rest.to_owned()));
            }
            _ => {}
        }
    }
    failure.filter(|_| starting)
}

fn print_status(info: &StatusInfo) {
    outln!(
        "agent:        running (pid {}, version {}, protocol {})",
        info.pid,
        info.version,
        info.proto
    );
    outln!("uptime:       {}", human_duration(info.uptime_secs));
    outln!("socket:       {}", info.socket);
    outln!("store:        {}", info.store);
    outln!("              {}", info.store_reason);
    if let Some(location) = &info.store_location {
        outln!("location:     {location}");
        if let Some(detail) = &info.store_detail {
            outln!("              {detail}");
        }
    }
    outln!("credentials:  {}", info.credentials);
    if let Some(config) = &info.config {
        let note = if info.config_present {
            ""
        } else {
            " (not present)"
        };
        outln!("config:       {config}{note}");
    }
    if let Some(log) = &info.log {
        outln!("log:          {log}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_start_is_found_in_the_log() {
        let started = "2026-01-01T00:00:00Z  INFO agent starting pid=1\n\
                       2026-01-01T00:00:01Z  INFO listening socket=/s\n\
                       2026-01-01T00:00:02Z ERROR a runtime error\n";
        assert_eq!(start_failure_in(started), None);
        let failed = format!(
            "{started}2026-01-01T00:00:03Z  INFO agent starting pid=2\n\
             2026-01-01T00:00:04Z ERROR the keyring store is not usable: no bus\n"
        );
        assert_eq!(
            start_failure_in(&failed),
            Some((
                "2026-01-01T00:00:04Z".to_owned(),
                "the keyring store is not usable: no bus".to_owned()
            ))
        );
        let again = format!("{failed}2026-01-01T00:00:05Z  INFO agent starting pid=3\n");
        assert_eq!(start_failure_in(&again), None, "a start under way");
    }
}
