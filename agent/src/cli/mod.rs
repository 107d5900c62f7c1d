//! The `regent` command line: the agent itself and the commands that manage it.
//!
//! Output goes through [`outln!`]: a reader that goes away (`regent ls |
//! head -1`) silences the rest of the output, and the command still
//! finishes its work (an import is never cut short by a closed pipe) and
//! exits as it would have; any other failure to write stdout is reported at
//! the end. SIGPIPE stays ignored, so that a write to an agent that just
//! went away is an error the command reports, not a silent death.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use regent_shared::client::{self, AgentExe, ClientError, Options};
use regent_shared::paths;
use regent_shared::protocol::{EntryInfo, Request, Response, StatusInfo};

use crate::config::Settings;
use crate::credentials::now_unix;
use crate::{daemon, named_secrets};

mod clientconf;
mod import;
mod setup;

/// Exit status of `regent status` when no agent is running (as `systemctl status`).
const EXIT_NOT_RUNNING: u8 = 3;
/// Exit status of a command line clap (or regent) refuses, as clap's own.
const EXIT_USAGE: u8 = 2;

/// The first error writing stdout other than a closed pipe.
static OUT_ERROR: Mutex<Option<io::Error>> = Mutex::new(None);
/// True once a reader closed stdout: later output is dropped.
static OUT_CLOSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes to stdout; see the module docs for what a closed pipe does.
pub fn write_out(args: fmt::Arguments<'_>) {
    use std::sync::atomic::Ordering;
    if OUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        OUT_CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != io::ErrorKind::BrokenPipe {
            let mut first = OUT_ERROR.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert(e);
        }
    }
}

/// `print!` that survives a closed stdout (see the module docs).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!($($arg)*))
    };
}

/// `println!` that survives a closed stdout (see the module docs).
macro_rules! outln {
    () => {
        $crate::cli::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use {out, outln};

/// `--help`'s last part: the variables regent reads and the paths it uses
/// here (with this environment).
fn environment_help() -> String {
    let socket = paths::socket_path();
    format!(
        "Environment:\n  \
           REGENT_STORE            store: auto (default), keyring, file, keyutils or memory\n  \
           REGENT_LOG              agent log level: error, warn, info (default), debug, trace\n  \
           REGENT_SOCKET           the agent's socket (its directory must be private to you)\n  \
           REGENT_CONFIG           the config file\n  \
           REGENT_KEYRING_SERVICE  keyring service name of regent's entries (default \"regent\")\n  \
           REGENT_MASTER_KEY       file store master key: base64 of 32 bytes\n\n\
         Paths here:\n  \
           config   {}\n  \
           log      {}\n  \
           data     {}\n  \
           socket   {}\n",
        paths::config_file().display(),
        paths::log_file().display(),
        paths::data_dir().display(),
        socket.display(),
    )
}

#[derive(Parser)]
#[command(
    name = "regent",
    version,
    about = "A credential agent for docker, podman, buildah, skopeo and docker-py",
    long_about = "regent keeps registry credentials in the OS keyring (or an encrypted file, \
                  the kernel keyring or memory) and serves them from memory to \
                  docker-credential-regent, the credential helper clients execute."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (normally started on demand by the helper or `regent start`).
    Agent {
        /// Stay attached and log to stderr: for systemd, launchd and debugging.
        #[arg(long)]
        foreground: bool,
    },
    /// Start the agent in the background unless it is running.
    Start,
    /// Stop the running agent.
    Stop,
    /// Show the agent's pid, uptime, socket, store and number of credentials.
    Status {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// List the stored credentials (never their secrets).
    Ls {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Re-read the config file's token sources in the running agent.
    ///
    /// A file that does not parse is refused with its line and column, and the
    /// config in force stays. Without a running agent, only checks the file.
    Reload,
    /// Named secrets that config entries refer to: `env = { X = { secret = "NAME" } }`.
    Secret {
        #[command(subcommand)]
        command: SecretCommand,
    },
    /// Point docker and podman/buildah/skopeo at regent (all found, or those named).
    Setup {
        /// The clients to set up; none: every client found on this machine.
        #[arg(value_enum)]
        clients: Vec<setup::Client>,
        /// Use regent for this registry only (docker `credHelpers`); repeatable.
        #[arg(long, value_name = "HOST")]
        helper_for: Vec<String>,
        /// Print what would change, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Restore what `regent setup` changed.
        #[arg(long)]
        undo: bool,
    },
    /// Move plaintext credentials from docker's config.json and containers' auth.json into regent.
    Import {
        /// Files to import from; none: docker's config.json and every containers auth.json.
        files: Vec<std::path::PathBuf>,
        /// Leave the entries in the files.
        #[arg(long)]
        keep: bool,
        /// Show what would be imported, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Keep no backup of the files changed (a backup holds the plaintext
        /// credentials that were removed).
        #[arg(long)]
        no_backup: bool,
    },
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Store a named secret; the value is read from stdin (never from the command line).
    Set {
        name: String,
        /// Never the value: anything after NAME is refused without being
        /// shown (see `usage_error`).
        #[arg(hide = true, num_args = 0.., allow_hyphen_values = true, trailing_var_arg = true)]
        rest: Vec<OsString>,
    },
    /// Remove a named secret (succeeds when it is not there).
    Rm { name: String },
    /// List the names of the named secrets (never their values).
    Ls,
}

pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let command = Cli::command().after_help(environment_help());
    let cli = match command
        .try_get_matches_from(&args)
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => return usage_error(e, &args),
    };
    if let Command::Secret {
        command: SecretCommand::Set { rest, .. },
    } = &cli.command
        && !rest.is_empty()
    {
        return secret_on_command_line();
    }
    let code = run(cli);
    match OUT_ERROR.lock().unwrap_or_else(|p| p.into_inner()).take() {
        Some(e) => {
            let _ = writeln!(io::stderr(), "regent: cannot write the output: {e}");
            ExitCode::FAILURE
        }
        None => code,
    }
}

/// A command line that does not parse. clap quotes what it did not expect,
/// which under `regent secret set` may be the secret itself: that one gets a
/// message of its own.
fn usage_error(e: clap::Error, args: &[OsString]) -> ExitCode {
    use clap::error::ErrorKind;
    let quiet = matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    let words: Vec<&std::ffi::OsStr> = args.iter().skip(1).map(OsString::as_os_str).collect();
    // A missing NAME quotes nothing; anything else may quote a value.
    if !quiet
        && e.kind() != ErrorKind::MissingRequiredArgument
        && words.starts_with(&["secret".as_ref(), "set".as_ref()])
    {
        return secret_on_command_line();
    }
    // clap prints help and usage errors; a closed pipe is not a reason to
    // panic.
    let _ = e.print();
    ExitCode::from(e.exit_code().clamp(0, 255) as u8)
}

fn secret_on_command_line() -> ExitCode {
    let _ = writeln!(
        io::stderr(),
        "regent: `regent secret set` takes only the NAME; the value is read from stdin, never \
         from the command line (where other processes and your shell history see it): \
         `printf %s \"$TOKEN\" | regent secret set NAME`. Nothing was stored; if you typed \
         a real secret, it is in your shell history now."
    );
    ExitCode::from(EXIT_USAGE)
}

fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Agent { foreground } => return daemon::run(foreground),
        Command::Start => start(),
        Command::Stop => stop(),
        Command::Status { json } => status(json),
        Command::Ls { json } => ls(json),
        Command::Reload => reload(),
        Command::Secret { command } => secret(command),
        Command::Setup {
            clients,
            helper_for,
            dry_run,
            undo,
        } => setup::run(setup::Args {
            clients,
            helper_for,
            dry_run,
            undo,
        }),
        Command::Import {
            files,
            keep,
            dry_run,
            json,
            no_backup,
        } => import::run(
            import::Args {
                files,
                keep,
                dry_run,
                json,
                backup: !no_backup,
            },
            &starting_options(),
        ),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(io::stderr(), "regent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Options for commands that start the agent when it is not running.
fn starting_options() -> Options {
    let mut opts = Options::new("cli");
    opts.agent_exe = match std::env::current_exe() {
        Ok(exe) => AgentExe::Path(exe),
        Err(_) => AgentExe::NextToMe,
    };
    opts
}

fn start() -> anyhow::Result<ExitCode> {
    let (conn, resp) = client::call_with(&starting_options(), &Request::Status)?;
    let Response::Status(info) = resp else {
        bail!("unexpected answer from the agent: {}", resp.kind());
    };
    outln!(
        "regent agent running (pid {}, socket {}, store {})",
        conn.agent.pid,
        info.socket,
        info.store
    );
    Ok(ExitCode::SUCCESS)
}

fn stop() -> anyhow::Result<ExitCode> {
    let socket = paths::socket_path();
    let mut conn = match client::connect(&socket, Duration::from_secs(2)) {
        Ok(conn) => conn,
        Err(ClientError::NotRunning(_)) => {
            outln!("regent agent is not running");
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e.into()),
    };
    let pid = conn.agent.pid;
    conn.call(&Request::Quit, Duration::from_secs(5))?;
    drop(conn);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !process_alive(pid) {
            outln!("stopped regent agent (pid {pid})");
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("the agent (pid {pid}) did not exit within 10s; `kill {pid}` stops it")
}

fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn status(json: bool) -> anyhow::Result<ExitCode> {
    let socket = paths::socket_path();
    let mut conn = match client::connect(&socket, Duration::from_secs(2)) {
        Ok(conn) => conn,
        Err(ClientError::NotRunning(_)) => {
            // Would a start work? The config and the environment are
            // checked here as the agent checks them; what only the agent can
            // find out (the store) comes from its log's last start.
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
                    outln!(
                        "              (`regent start` or any docker-credential-regent call starts it)"
                    );
                }
                for w in &warnings {
                    outln!("warning:      {w}");
                }
            }
            return Ok(ExitCode::from(EXIT_NOT_RUNNING));
        }
        Err(e) => return Err(e.into()),
    };
    let resp = conn.call(&Request::Status, Duration::from_secs(5))?;
    let Response::Status(info) = resp else {
        bail!("unexpected answer from the agent: {}", resp.kind());
    };
    let warnings = setup_warnings();
    if json {
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
fn last_start_failure(log: &std::path::Path) -> Option<(String, String)> {
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

fn ls(json: bool) -> anyhow::Result<ExitCode> {
    let resp = client::call(&starting_options(), &Request::ListEntries)?;
    let entries = match resp {
        Response::Entries { entries } => entries,
        Response::Error { message, .. } => bail!("{message}"),
        other => bail!("unexpected answer from the agent: {}", other.kind()),
    };
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&entries).context("encoding the list")?
        );
    } else {
        print_entries(&entries);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_entries(entries: &[EntryInfo]) {
    if entries.is_empty() {
        outln!("no credentials stored (log in with `docker login` or `podman login`)");
        return;
    }
    let now = now_unix();
    let rows: Vec<[String; 5]> = entries
        .iter()
        .map(|e| {
            [
                e.server_url.clone(),
                if e.username.is_empty() {
                    "-".into()
                } else {
                    e.username.clone()
                },
                e.source.clone(),
                format!("{} ago", human_duration((now - e.updated).max(0) as u64)),
                match e.expires {
                    None => "-".into(),
                    Some(t) if t > now => format!("in {}", human_duration((t - now) as u64)),
                    Some(t) => format!("expired {} ago", human_duration((now - t) as u64)),
                },
            ]
        })
        .collect();
    let header = ["REGISTRY", "USERNAME", "SOURCE", "UPDATED", "EXPIRES"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        outln!("{}", out.trim_end());
    };
    line(header);
    for (row, e) in rows.iter().zip(entries) {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
        if let Some(err) = &e.last_error {
            outln!("    last error: {err}");
        }
    }
}

fn reload() -> anyhow::Result<ExitCode> {
    let socket = paths::socket_path();
    let mut conn = match client::connect(&socket, Duration::from_secs(2)) {
        Ok(conn) => conn,
        Err(ClientError::NotRunning(_)) => {
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
        }
        Err(e) => return Err(e.into()),
    };
    match conn.call(&Request::Reload, Duration::from_secs(10))? {
        Response::Reloaded { config, rules } => {
            outln!("reloaded {config}: {rules} registry entries in force");
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message, .. } => bail!("{message}"),
        other => bail!("unexpected answer from the agent: {}", other.kind()),
    }
}

fn secret(command: SecretCommand) -> anyhow::Result<ExitCode> {
    let req = match command {
        SecretCommand::Set { name, .. } => {
            named_secrets::check_name(&name).map_err(anyhow::Error::msg)?;
            let value = read_secret(&name)?;
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
        SecretCommand::Rm { name } => Request::SecretRm { name },
        SecretCommand::Ls => Request::SecretLs,
    };
    match client::call(&starting_options(), &req)? {
        Response::Done => Ok(ExitCode::SUCCESS),
        Response::Secrets { names } => {
            for name in names {
                outln!("{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message, .. } => bail!("{message}"),
        other => bail!("unexpected answer from the agent: {}", other.kind()),
    }
}

/// The secret from stdin, bounded; one trailing newline is dropped. On a
/// terminal, asks for it with echo off.
fn read_secret(name: &str) -> anyhow::Result<zeroize::Zeroizing<String>> {
    use std::io::{IsTerminal, Read};
    let stdin = std::io::stdin();
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(named_secrets::MAX_VALUE + 1));
    if stdin.is_terminal() {
        eprint!("secret {name} (input hidden): ");
        let _echo = EchoOff::new();
        let mut line = zeroize::Zeroizing::new(String::with_capacity(1024));
        stdin.read_line(&mut line).context("reading the secret")?;
        eprintln!();
        buf.extend_from_slice(line.as_bytes());
    } else {
        stdin
            .lock()
            .take(named_secrets::MAX_VALUE as u64 + 1)
            .read_to_end(&mut buf)
            .context("reading the secret from stdin")?;
    }
    if buf.len() > named_secrets::MAX_VALUE {
        bail!(
            "the secret on stdin is larger than {} bytes",
            named_secrets::MAX_VALUE
        );
    }
    if buf.ends_with(b"\n") {
        buf.pop();
        if buf.ends_with(b"\r") {
            buf.pop();
        }
    }
    let text = std::str::from_utf8(&buf).context("the secret is not UTF-8")?;
    Ok(zeroize::Zeroizing::new(text.to_owned()))
}

/// Terminal echo off for as long as it lives.
struct EchoOff(Option<libc::termios>);

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: termios calls on stdin with a zeroed, then filled, struct.
        unsafe {
            let mut term: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut term) != 0 {
                return EchoOff(None);
            }
            let old = term;
            term.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(0, libc::TCSANOW, &term) != 0 {
                return EchoOff(None);
            }
            EchoOff(Some(old))
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            // SAFETY: restores the settings read in `new`.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, old);
            }
        }
    }
}

/// `3d 4h`, `2h 5m`, `4m 10s`, `12s`.
fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(59), "59s");
        assert_eq!(human_duration(61), "1m 1s");
        assert_eq!(human_duration(3 * 3600 + 120), "3h 2m");
        assert_eq!(human_duration(2 * 86400 + 3600), "2d 1h");
    }

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

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
