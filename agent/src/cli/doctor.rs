//! `regent doctor [--json]`: every part a `docker pull` goes through,
//! checked in order, each `ok`, `warning` or `FAILED` with the fix; exit 0
//! only when nothing failed. Bounded: the network checks have short
//! timeouts, so it finishes in seconds with the network down.
//!
//! The checks: the helper (on `PATH`, same version), docker's config
//! (`credsStore`/`credHelpers`, plaintext `auths` left), the podman
//! drop-in, the socket directory, the agent (started when it is not
//! running, as any `get` would), the store, the config file, each
//! configured source for an exact host (a token fetched now), the clock
//! against a registry's `Date`, and the systemd user units.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use regent_shared::client;
use regent_shared::paths;
use regent_shared::protocol::{EntryInfo, Request, Response, StatusInfo};
use serde_json::{Value, json};

use super::clientconf::{self, JsonFile};
use super::output::{human_duration, outln};
use super::{call, setup};
use crate::config::{Pattern, Settings};

/// The helper's name on `PATH`.
const HELPER: &str = "docker-credential-regent";
/// How long one source may take to produce a token here.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the clock check may take, all registries together.
const CLOCK_TIMEOUT: Duration = Duration::from_secs(4);
/// Skew past which tokens go wrong (warning), and badly (failure).
const SKEW_WARN: i64 = 30;
const SKEW_FAIL: i64 = 300;

#[derive(clap::Args)]
pub struct Args {
    /// Print the checks as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Status {
    Ok,
    Warning,
    Failed,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Failed => "failed",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Failed => "FAILED",
        }
    }
}

struct Check {
    name: &'static str,
    status: Status,
    detail: String,
    fix: Option<String>,
}

fn ok(name: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Ok,
        detail: detail.into(),
        fix: None,
    }
}

fn warn(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Warning,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check {
        name,
        status: Status::Failed,
        detail: detail.into(),
        fix: Some(fix.into()),
    }
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut checks = Vec::new();
    let step = |what: &str| eprintln!("regent doctor: {what}");
    step("the helper, docker, podman, the socket");
    checks.push(helper());
    checks.push(docker());
    checks.push(podman());
    checks.push(socket());
    step("the agent and its store");
    let settings = Settings::load();
    let agent = agent(settings.is_ok());
    let status = agent.1.clone();
    checks.push(agent.0);
    checks.push(store(status.as_ref()));
    checks.push(config(&settings));
    // The agent's entries, listed once after the sources were fetched.
    let mut rows = None;
    if let (Ok(settings), Some(_)) = (&settings, &status) {
        let hosts: Vec<String> = settings
            .rules
            .iter()
            .filter_map(|r| match &r.pattern {
                Pattern::Exact(key) => Some(key.to_string()),
                Pattern::Subdomains(_) => None,
            })
            .collect();
        if !hosts.is_empty() {
            step(&format!(
                "a token from each configured source ({})",
                hosts.len()
            ));
        }
        let (source_checks, listed) = sources(&hosts);
        checks.extend(source_checks);
        rows = Some(listed);
    }
    step("the clock against the registries in use");
    let rows = match rows {
        Some(rows) => rows,
        None if status.is_some() => entries(),
        None => Vec::new(),
    };
    checks.push(clock(&rows));
    checks.push(service());
    let failed = checks.iter().any(|c| c.status == Status::Failed);
    if args.json {
        let rows: Vec<Value> = checks
            .iter()
            .map(|c| {
                json!({
                    "check": c.name,
                    "status": c.status.name(),
                    "detail": c.detail,
                    "fix": c.fix,
                })
            })
            .collect();
        outln!(
            "{}",
            serde_json::to_string_pretty(&json!({ "ok": !failed, "checks": rows }))?
        );
    } else {
        for c in &checks {
            outln!("{:<8} {:<8} {}", c.status.label(), c.name, c.detail);
            if let Some(fix) = &c.fix {
                outln!("{:<17} fix: {fix}", "");
            }
        }
        let worst = checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok);
        outln!(
            "{}",
            match worst {
                Status::Ok => "everything checked is in order",
                Status::Warning => "no failure; see the warnings",
                Status::Failed => "something failed: see the fixes above",
            }
        );
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The first `program` on `PATH` (`program.exe` on Windows).
fn on_path(program: &str) -> Option<PathBuf> {
    paths::find_on_path(&format!("{program}{}", std::env::consts::EXE_SUFFIX))
}

/// Runs `program args` with a deadline; its stdout, or why not.
fn run_bounded(program: &Path, args: &[&str], limit: Duration) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer within {}s", limit.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn helper() -> Check {
    let ours = env!("CARGO_PKG_VERSION");
    let Some(path) = on_path(HELPER) else {
        return fail(
            "helper",
            format!("{HELPER} is not on PATH: docker and podman cannot ask regent"),
            "run scripts/install, or put the directory holding it on PATH (~/.local/bin)",
        );
    };
    match run_bounded(&path, &["version"], Duration::from_secs(5)) {
        Ok(out) if out.ends_with(ours) => {
            ok("helper", format!("{} (regent {ours})", path.display()))
        }
        Ok(out) => warn(
            "helper",
            format!("{} says {out:?}, this regent is {ours}", path.display()),
            "install both from the same build (scripts/install)",
        ),
        Err(e) => fail(
            "helper",
            format!("{} does not run: {e}", path.display()),
            "reinstall it (scripts/install)",
        ),
    }
}

fn docker() -> Check {
    let path = clientconf::docker_config_path();
    let file = match JsonFile::load(&path) {
        Ok(file) => file,
        Err(e) => {
            return fail(
                "docker",
                format!("{e:#}"),
                format!("fix or remove {}", path.display()),
            );
        }
    };
    let plaintext = setup::plaintext_count(&file);
    if plaintext > 0 {
        return fail(
            "docker",
            format!(
                "{} holds {plaintext} plaintext login(s) in `auths`",
                path.display()
            ),
            "`regent import` moves them into regent and removes them from the file",
        );
    }
    let store = file.value.get("credsStore").and_then(Value::as_str);
    let helpers: Vec<&str> = file
        .value
        .get("credHelpers")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_str() == Some("regent"))
                .map(|(k, _)| k.as_str())
                .collect()
        })
        .unwrap_or_default();
    let docker_here = on_path("docker").is_some();
    match store {
        Some("regent") => ok("docker", format!("{}: credsStore = regent", path.display())),
        _ if !helpers.is_empty() => ok(
            "docker",
            format!(
                "{}: credHelpers send {} to regent",
                path.display(),
                helpers.join(", ")
            ),
        ),
        Some(other) => warn(
            "docker",
            format!("{}: credsStore = {other:?}, not regent", path.display()),
            "`regent setup docker`",
        ),
        None if docker_here => warn(
            "docker",
            format!(
                "{}: docker does not ask regent (no credsStore)",
                path.display()
            ),
            "`regent setup docker`",
        ),
        None => ok("docker", "docker is not installed"),
    }
}

fn podman() -> Check {
    let dropins: Vec<PathBuf> = clientconf::dropin_paths()
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    let stale = setup::dropins_with_plaintext_fallback();
    if let Some(path) = stale.first() {
        return warn(
            "podman",
            format!(
                "{} lets podman, buildah and skopeo fall back to a plaintext auth.json",
                path.display()
            ),
            "`regent setup podman` rewrites it",
        );
    }
    if let Some(path) = dropins.first() {
        return ok(
            "podman",
            format!("{} sends logins to regent", path.display()),
        );
    }
    let installed: Vec<&str> = ["podman", "buildah", "skopeo"]
        .into_iter()
        .filter(|p| on_path(p).is_some())
        .collect();
    if installed.is_empty() {
        ok("podman", "podman, buildah and skopeo are not installed")
    } else {
        warn(
            "podman",
            format!(
                "{} do not ask regent (no registries.conf.d drop-in)",
                installed.join(", ")
            ),
            "`regent setup podman`",
        )
    }
}

/// The socket's directory: there, a directory, ours, and closed to others.
#[cfg(unix)]
fn socket() -> Check {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let socket = paths::socket_path();
    let Some(dir) = socket.parent() else {
        return fail(
            "socket",
            format!("{} has no directory", socket.display()),
            "set REGENT_SOCKET to an absolute path",
        );
    };
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return ok(
                "socket",
                format!(
                    "{} (its directory is made at the first start)",
                    socket.display()
                ),
            );
        }
        Err(e) => {
            return fail(
                "socket",
                format!("{}: {e}", dir.display()),
                "check the directory's permissions",
            );
        }
    };
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let mode = meta.permissions().mode() & 0o777;
    if !meta.is_dir() {
        fail(
            "socket",
            format!("{} is not a directory", dir.display()),
            format!("remove it: `rm {}`", dir.display()),
        )
    } else if meta.uid() != uid {
        fail(
            "socket",
            format!(
                "{} belongs to uid {}, not to you ({uid})",
                dir.display(),
                meta.uid()
            ),
            "set REGENT_SOCKET to a path in a directory of yours",
        )
    } else if mode & 0o077 != 0 {
        fail(
            "socket",
            format!(
                "{} is mode {mode:03o}: others may reach the agent's socket",
                dir.display()
            ),
            format!("`chmod 700 {}`", dir.display()),
        )
    } else {
        ok(
            "socket",
            format!("{} (directory mode {mode:03o}, yours)", socket.display()),
        )
    }
}

/// The named pipe: no directory to check, and the agent serves only
/// programs of our user (`sys::peer`).
#[cfg(windows)]
fn socket() -> Check {
    ok(
        "socket",
        format!(
            "{} (a named pipe, served to programs of yours only)",
            paths::socket_path().display()
        ),
    )
}

/// The agent, started when it is not running (as any `get` would); its
/// status when it answers.
fn agent(config_ok: bool) -> (Check, Option<StatusInfo>) {
    let was_running = matches!(call::running_agent(), Ok(Some(_)));
    if !was_running && !config_ok {
        return (
            fail(
                "agent",
                "not running, and it cannot start until the config is fixed",
                "see the config line below",
            ),
            None,
        );
    }
    match call::call_agent(&Request::Status) {
        Ok(Response::Status(info)) => {
            let ours = env!("CARGO_PKG_VERSION");
            let how = if was_running {
                "running"
            } else {
                "was not running; started it"
            };
            let detail = format!(
                "{how}: pid {}, version {}, up {}",
                info.pid,
                info.version,
                human_duration(info.uptime_secs)
            );
            let check = if info.version != ours {
                warn(
                    "agent",
                    format!("{detail}; this regent is {ours}"),
                    "`regent stop`: the next call starts the installed one",
                )
            } else {
                ok("agent", detail)
            };
            (check, Some(*info))
        }
        Ok(other) => (
            fail(
                "agent",
                format!("unexpected answer: {}", other.kind()),
                "`regent stop`, then try again",
            ),
            None,
        ),
        Err(e) => (
            fail(
                "agent",
                format!("cannot start or reach it: {e:#}"),
                format!("see {} for why it stopped", paths::log_file().display()),
            ),
            None,
        ),
    }
}

fn store(status: Option<&StatusInfo>) -> Check {
    let Some(info) = status else {
        return fail("store", "unknown: no agent answered", "fix the agent first");
    };
    let mut detail = format!("{} ({})", info.store, info.store_reason);
    if let Some(location) = &info.store_location {
        detail.push_str(&format!(", at {location}"));
    }
    if let Some(extra) = &info.store_detail {
        detail.push_str(&format!("; {extra}"));
    }
    // Writable (and, for a keyring, unlocked): a named secret of doctor's
    // own is stored and removed again. The memory store is only ever
    // chosen by name (a CI runner's): no warning for it.
    let probe = Request::SecretSet {
        name: PROBE_SECRET.to_owned(),
        secret: regent_shared::Secret::new(format!("probe-{}", std::process::id())),
    };
    match call::call_agent(&probe) {
        Ok(_) => {
            let _ = call::call_agent(&Request::SecretRm {
                name: PROBE_SECRET.to_owned(),
            });
            ok("store", format!("{detail}; writable"))
        }
        Err(e) => fail(
            "store",
            format!("{detail}; a write was refused: {e:#}"),
            "unlock the keyring (or choose another store: REGENT_STORE=file)",
        ),
    }
}

/// The named secret the store check writes and removes.
const PROBE_SECRET: &str = "regent-doctor-probe";

fn config(settings: &Result<Settings, crate::config::ConfigError>) -> Check {
    match settings {
        Ok(s) if !s.file_present => ok(
            "config",
            format!("{} (none: zero configuration)", s.path.display()),
        ),
        Ok(s) => ok(
            "config",
            format!(
                "{}: {} [[registry]] {}, each source builds",
                s.path.display(),
                s.rules.len(),
                if s.rules.len() == 1 {
                    "entry"
                } else {
                    "entries"
                }
            ),
        ),
        Err(e) => fail(
            "config",
            e.to_string(),
            "fix the file, then `regent reload`",
        ),
    }
}

/// A token from each configured exact host's source, fetched now through
/// the agent with this shell's variables.
/// A check per configured host, fetched now, and per other source in use;
/// with the agent's entries as they are after the fetches.
fn sources(hosts: &[String]) -> (Vec<Check>, Vec<EntryInfo>) {
    let fetched: Vec<_> = hosts.iter().map(|host| (host, fetch(host))).collect();
    let rows = entries();
    let mut checks = Vec::new();
    for (host, answer) in fetched {
        match answer {
            Ok(Response::Credentials { username, .. }) => {
                let row = rows.iter().find(|r| &r.key == host);
                let expiry = row
                    .as_ref()
                    .and_then(|r| r.expires)
                    .map(|t| {
                        let left = t - unix(SystemTime::now());
                        format!(", expires in {}", human_duration(left.max(0) as u64))
                    })
                    .unwrap_or_default();
                let source = row.map_or("?", |r| r.source.as_str());
                checks.push(ok(
                    "source",
                    format!("{host}: {source} gave a token for {username}{expiry}"),
                ));
            }
            Ok(Response::NotFound) => checks.push(warn(
                "source",
                format!(
                    "{host}: no credential (the entry does not apply here, and nothing is stored)"
                ),
                "check the entry's variables in this shell, or `regent login`",
            )),
            Ok(Response::Error { message, .. }) => checks.push(fail(
                "source",
                message,
                format!("`regent ls` shows {host}'s last error; fix the source's settings"),
            )),
            Ok(other) => checks.push(fail(
                "source",
                format!("{host}: unexpected answer {}", other.kind()),
                "`regent stop`, then try again",
            )),
            Err(e) => checks.push(fail("source", format!("{host}: {e}"), "check the agent")),
        }
    }
    // The other sources in use (detected hosts, wildcard entries): what
    // their last fetch said, without fetching again.
    for row in &rows {
        if row.source == "static" || hosts.contains(&row.key) {
            continue;
        }
        match &row.last_error {
            Some(error) => checks.push(warn(
                "source",
                format!(
                    "{} ({}): the last fetch failed: {error}",
                    row.key, row.source
                ),
                format!("`regent verify {}` tries it now", row.key),
            )),
            None => checks.push(ok(
                "source",
                format!("{} ({}): the last fetch gave a token", row.key, row.source),
            )),
        }
    }
    (checks, rows)
}

fn fetch(host: &str) -> Result<Response, client::ClientError> {
    let mut opts = call::starting_options();
    opts.reply_timeout = SOURCE_TIMEOUT;
    client::get(&opts, host)
}

fn entries() -> Vec<EntryInfo> {
    match call::call_agent(&Request::ListEntries) {
        Ok(Response::Entries { entries }) => entries,
        _ => Vec::new(),
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The clock against the `Date` of the registries regent holds logins or
/// tokens for (at most three, [`CLOCK_TIMEOUT`] in all).
/// `rows`: the agent's entries (none without an agent).
fn clock(rows: &[EntryInfo]) -> Check {
    // Registries that answered before: a stored login, or a source that
    // gave a token (not one that only ever failed).
    let mut hosts: Vec<String> = rows
        .iter()
        .filter(|r| r.source == "static" || (r.last_error.is_none() && r.expires.is_some()))
        .map(|r| r.key.clone())
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts.truncate(3);
    if hosts.is_empty() {
        return ok("clock", "not compared: no registry in use to ask");
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return warn("clock", "not compared: no runtime", "try again");
    };
    let http = crate::sources::http::Http::new();
    let found = runtime.block_on(async {
        let mut asking = tokio::task::JoinSet::new();
        for host in hosts {
            asking.spawn(date_of(http.clone(), host));
        }
        let first = async {
            while let Some(done) = asking.join_next().await {
                if let Ok(Some(found)) = done {
                    return Some(found);
                }
            }
            None
        };
        tokio::time::timeout(CLOCK_TIMEOUT, first)
            .await
            .ok()
            .flatten()
    });
    match found {
        None => ok(
            "clock",
            "not compared: no registry in use answered with a Date",
        ),
        Some((host, skew)) if skew.abs() >= SKEW_FAIL => fail(
            "clock",
            format!("{skew:+}s off {host}'s clock: tokens will look expired or not yet valid"),
            "fix the system clock (timedatectl set-ntp true)",
        ),
        Some((host, skew)) if skew.abs() >= SKEW_WARN => warn(
            "clock",
            format!("{skew:+}s off {host}'s clock"),
            "fix the system clock (timedatectl set-ntp true)",
        ),
        Some((host, skew)) => ok(
            "clock",
            format!("within {}s of {host}'s", skew.abs().max(1)),
        ),
    }
}

/// How far `host`'s clock (the `Date` of its `/v2/`) is ahead of ours,
/// in seconds; HTTPS, and plain HTTP too for a loopback host.
async fn date_of(http: crate::sources::http::Http, host: String) -> Option<(String, i64)> {
    let loopback =
        crate::reference::parse(&host).is_ok_and(|t| crate::sources::http::is_loopback(t.host()));
    let mut bases = vec![format!("https://{host}")];
    if loopback {
        bases.push(format!("http://{host}"));
    }
    for base in bases {
        let Ok(req) =
            hyper::Request::get(format!("{base}/v2/")).body(crate::sources::http::Body::default())
        else {
            continue;
        };
        let sent = SystemTime::now();
        if let Ok(reply) = http.send(req, CLOCK_TIMEOUT, 64 << 10).await
            && let Some(date) = reply
                .headers
                .get(hyper::header::DATE)
                .and_then(|d| d.to_str().ok())
                .and_then(crate::sources::text::http_date)
        {
            return Some((host, unix(date) - unix(sent)));
        }
    }
    None
}

fn service() -> Check {
    let dir = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_default()
        .join("systemd/user");
    let socket = dir.join("regent.socket");
    if !socket.exists() {
        return ok(
            "service",
            "no systemd user units (the helper starts the agent on demand)",
        );
    }
    let Some(systemctl) = on_path("systemctl") else {
        return ok(
            "service",
            format!("{} installed; no systemctl here", socket.display()),
        );
    };
    match run_bounded(
        &systemctl,
        &["--user", "is-active", "regent.socket"],
        Duration::from_secs(3),
    ) {
        Ok(state) if state == "active" => ok("service", "regent.socket is active"),
        Ok(state) => warn(
            "service",
            format!(
                "{} is installed, and {}",
                socket.display(),
                if state.is_empty() {
                    "no user session answers".to_owned()
                } else {
                    format!("regent.socket is {state}")
                }
            ),
            "`systemctl --user enable --now regent.socket` in a login session",
        ),
        Err(e) => warn(
            "service",
            format!("systemctl: {e}"),
            "check the user session",
        ),
    }
}
