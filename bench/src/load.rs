//! Load: regent beside the exec floor and Debian's other credential helpers,
//! parallel helpers, and an agent holding many credentials.
//!
//! - Latency of `store`, `get`, `list` and `erase` as whole processes, for
//!   the floor (`regent-bench-floor` with the same stdin), regent (against a
//!   private agent on the memory store), `docker-credential-secretservice`
//!   (only on a throw-away Secret Service: scripts/bench runs this program
//!   inside scripts/with-secret-service and says so with
//!   `--private-secret-service`) and `docker-credential-pass` (with a
//!   throw-away gpg key and password store in a temporary directory). The
//!   tools take turns round by round, each doing store, get, list, erase.
//! - Throughput: N workers each running helper `get`s back to back.
//! - The agent's RSS after storing many credentials (over the protocol, one
//!   connection), and helper `list` latency with 1,000 entries.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use regent_shared::Secret;
use regent_shared::protocol::{Request, Response};
use serde_json::{Value, json};

use regent_tests::which;
use regent_tests::world::apply_env;

use crate::agent::PrivateAgent;
use crate::proc::{Proc, run_capture, run_once, shorten};
use crate::progress;
use crate::report::{mark, mb, ms, percentile};
use crate::system::{AgentMemory, agent_memory};

const OPS: [&str; 4] = ["store", "get", "list", "erase"];
const LOAD_URL: &str = "https://load.regent.test";
const TPUT_HOST: &str = "tput.regent.test";
/// Length of the made-up secrets of the bulk stores.
const BULK_SECRET_LEN: usize = 64;

/// Untimed rounds per tool first.
const WARMUP: usize = 5;

/// The load section's options.
#[derive(clap::Args)]
#[command(next_help_heading = "Load section (a third agent)")]
pub struct LoadOptions {
    /// Skip it
    #[arg(long)]
    pub no_load: bool,
    /// Rounds of store/get/list/erase per tool
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub load_runs: usize,
    /// Parallel helper counts
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "8,64,256"
    )]
    pub parallel: Vec<usize>,
    /// Gets per parallel level
    #[arg(long, value_name = "N", default_value_t = 2000)]
    pub parallel_gets: usize,
    /// Credentials stored for the agent's RSS (0: skip)
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub bulk: usize,
    /// Entries for the list latency
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub list_entries: usize,
    /// Helper list runs with that many entries
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub list_runs: usize,
    /// The session bus is a throw-away one (scripts/with-secret-service):
    /// time docker-credential-secretservice on it
    #[arg(long)]
    pub private_secret_service: bool,
}

struct Tool {
    name: &'static str,
    what: String,
    /// The program with its environment; `args` is set per operation.
    base: Proc,
    /// false for the floor, which takes no operation argument.
    takes_op: bool,
    samples: [Vec<Duration>; 4],
    failures: [usize; 4],
}

impl Tool {
    fn proc(&self, op: &str) -> Proc {
        let mut p = self.base.clone();
        if self.takes_op {
            p.args = vec![op.to_owned()];
        }
        p
    }
}

/// A tool that is not measured, and why.
struct Missing {
    name: &'static str,
    why: String,
}

struct Throughput {
    workers: usize,
    gets: usize,
    failures: usize,
    first_failure: Option<String>,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

struct Bulk {
    entries: usize,
    /// Time to store the first `list_entries`, and the rest.
    store_first: Duration,
    store_rest: Duration,
    rss_empty: Option<AgentMemory>,
    rss_list: Option<AgentMemory>,
    rss_full: Option<AgentMemory>,
    list_entries: usize,
    list_seen: usize,
    list_samples: Vec<Duration>,
    list_failures: usize,
}

pub struct LoadReport {
    runs: usize,
    warmup: usize,
    tools: Vec<Tool>,
    missing: Vec<Missing>,
    throughput: Vec<Throughput>,
    bulk: Option<Bulk>,
    bulk_note: Option<String>,
    agent_pid: u32,
    elapsed: Duration,
}

/// A throw-away `pass` world: gpg key without passphrase and password store
/// in a temporary directory; the gpg-agent it starts is stopped on drop.
struct PassWorld {
    _dir: tempfile::TempDir,
    env: Vec<(OsString, Option<OsString>)>,
}

impl PassWorld {
    fn set_up() -> Result<PassWorld, String> {
        let dir = tempfile::Builder::new()
            .prefix("regent-bench-pass.")
            .tempdir()
            .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
        let gnupg = dir.path().join("gnupg");
        let home = dir.path().join("home");
        for d in [&gnupg, &home] {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        let set = |k: &str, v: PathBuf| (OsString::from(k), Some(v.into_os_string()));
        let env = vec![
            set("HOME", home),
            set("GNUPGHOME", gnupg),
            set("PASSWORD_STORE_DIR", dir.path().join("store")),
            (OsString::from("PASSWORD_STORE_GPG_OPTS"), None),
            (OsString::from("PASSWORD_STORE_KEY"), None),
        ];
        let world = PassWorld { _dir: dir, env };
        let run = |args: &[&str]| -> Result<Vec<u8>, String> {
            let mut cmd = Command::new(args[0]);
            cmd.args(&args[1..]).stdin(Stdio::null());
            apply_env(&mut cmd, &world.env);
            let out = cmd
                .output()
                .map_err(|e| format!("cannot run {}: {e}", args[0]))?;
            if !out.status.success() {
                return Err(format!(
                    "`{}` exited with {}: {}",
                    args.join(" "),
                    out.status,
                    shorten(&out.stderr)
                ));
            }
            Ok(out.stdout)
        };
        let uid = "regent-bench <bench@regent.test>";
        run(&[
            "gpg",
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-gen-key",
            uid,
            "default",
            "default",
            "never",
        ])?;
        let keys = run(&["gpg", "--batch", "--with-colons", "--list-keys", uid])?;
        let fpr = String::from_utf8_lossy(&keys)
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.split(':').find(|f| f.len() == 40))
            .map(str::to_owned)
            .ok_or("no fingerprint for the throw-away gpg key")?;
        run(&["pass", "init", &fpr])?;
        Ok(world)
    }
}

impl Drop for PassWorld {
    fn drop(&mut self) {
        let mut cmd = Command::new("gpgconf");
        cmd.args(["--kill", "gpg-agent"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        apply_env(&mut cmd, &self.env);
        let _ = cmd.status();
    }
}

fn input_for(op: &str, secret: &str) -> Vec<u8> {
    match op {
        "store" => json!({"ServerURL": LOAD_URL, "Username": "bench", "Secret": secret})
            .to_string()
            .into_bytes(),
        "get" | "erase" => LOAD_URL.as_bytes().to_vec(),
        _ => Vec::new(),
    }
}

/// store, get (same secret back), list (holds the URL), erase, get (gone):
/// whether the tool works here. Prints no secret.
fn check_tool(tool: &Tool, secret: &str) -> Result<(), String> {
    let fail = |op: &str, out: &std::process::Output| {
        format!(
            "`{op}` exited with {}: {} {}",
            out.status,
            shorten(&out.stdout),
            shorten(&out.stderr)
        )
    };
    let out = run_capture(&tool.proc("store"), &input_for("store", secret))?;
    if !out.status.success() {
        return Err(fail("store", &out));
    }
    let out = run_capture(&tool.proc("get"), &input_for("get", secret))?;
    if !out.status.success() {
        return Err(fail("get", &out));
    }
    let got: Value =
        serde_json::from_slice(&out.stdout).map_err(|_| "`get` did not print JSON".to_owned())?;
    if got.get("Secret").and_then(Value::as_str) != Some(secret) {
        return Err("`get` did not return the secret just stored".into());
    }
    let out = run_capture(&tool.proc("list"), b"")?;
    if !out.status.success() {
        return Err(fail("list", &out));
    }
    let listed: Value = serde_json::from_slice(&out.stdout)
        .map_err(|_| format!("`list` did not print JSON: {}", shorten(&out.stdout)))?;
    if listed.as_object().is_none_or(|o| o.is_empty()) {
        return Err(format!(
            "`list` did not show the credential: {}",
            shorten(&out.stdout)
        ));
    }
    let out = run_capture(&tool.proc("erase"), &input_for("erase", secret))?;
    if !out.status.success() {
        return Err(fail("erase", &out));
    }
    // docker-credential-pass 0.6.4 answers a missing credential with empty
    // strings and exit 0: gone is a failure or an empty secret.
    let out = run_capture(&tool.proc("get"), &input_for("get", secret))?;
    let still_there = out.status.success()
        && serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .and_then(|v| v.get("Secret").and_then(Value::as_str).map(str::to_owned))
            .is_some_and(|s| !s.is_empty());
    if still_there {
        return Err("`get` still found the credential after `erase`".into());
    }
    Ok(())
}

pub fn run(
    opts: &LoadOptions,
    regent: &Path,
    helper: &Path,
    floor: &Path,
) -> Result<LoadReport, String> {
    let started = Instant::now();
    progress("load: a third agent (memory store) for the load section");
    let agent = PrivateAgent::start(regent, "load", &[])?;
    let secret = regent_tests::random_secret(40);

    let mut tools = vec![
        Tool {
            name: "floor",
            what: "regent-bench-floor, the same stdin".into(),
            base: Proc {
                program: floor.to_path_buf(),
                args: vec![],
                env: vec![],
            },
            takes_op: false,
            samples: Default::default(),
            failures: [0; 4],
        },
        Tool {
            name: "regent",
            what: "docker-credential-regent, private agent on the memory store".into(),
            base: agent.proc(helper, &[]),
            takes_op: true,
            samples: Default::default(),
            failures: [0; 4],
        },
    ];
    let mut missing = Vec::new();

    // docker-credential-secretservice: only on a private bus.
    match which("docker-credential-secretservice") {
        None => missing.push(Missing {
            name: "secretservice",
            why: "not installed (Debian: golang-docker-credential-helpers)".into(),
        }),
        Some(_) if !opts.private_secret_service => missing.push(Missing {
            name: "secretservice",
            why: "skipped: needs a throw-away Secret Service; scripts/bench runs this inside \
                  scripts/with-secret-service (needs gnome-keyring, dbus-daemon, dbus-bin)"
                .into(),
        }),
        Some(path) => {
            let tool = Tool {
                name: "secretservice",
                what: "docker-credential-secretservice, gnome-keyring on a private D-Bus session"
                    .into(),
                base: Proc {
                    program: path,
                    args: vec![],
                    env: vec![],
                },
                takes_op: true,
                samples: Default::default(),
                failures: [0; 4],
            };
            match check_tool(&tool, &secret) {
                Ok(()) => tools.push(tool),
                Err(e) => missing.push(Missing {
                    name: "secretservice",
                    why: format!("unavailable: {e}"),
                }),
            }
        }
    }

    // docker-credential-pass: a throw-away key and store.
    let mut pass_world = None;
    match (which("docker-credential-pass"), which("pass"), which("gpg")) {
        (None, _, _) => missing.push(Missing {
            name: "pass",
            why: "not installed (Debian: golang-docker-credential-helpers)".into(),
        }),
        (Some(_), None, _) | (Some(_), _, None) => missing.push(Missing {
            name: "pass",
            why: "not installed: docker-credential-pass is, but `pass` or `gpg` is not on PATH \
                  (Debian: pass)"
                .into(),
        }),
        (Some(path), Some(_), Some(_)) => {
            progress("load: throw-away gpg key and password store for docker-credential-pass");
            match PassWorld::set_up() {
                Err(e) => missing.push(Missing {
                    name: "pass",
                    why: format!("skipped: cannot set up a throw-away pass store: {e}"),
                }),
                Ok(world) => {
                    let tool = Tool {
                        name: "pass",
                        what: "docker-credential-pass, throw-away gpg key (no passphrase)".into(),
                        base: Proc {
                            program: path,
                            args: vec![],
                            env: world.env.clone(),
                        },
                        takes_op: true,
                        samples: Default::default(),
                        failures: [0; 4],
                    };
                    match check_tool(&tool, &secret) {
                        Ok(()) => tools.push(tool),
                        Err(e) => missing.push(Missing {
                            name: "pass",
                            why: format!("unavailable: {e}"),
                        }),
                    }
                    pass_world = Some(world);
                }
            }
        }
    }
    // regent itself must work, or there is nothing to compare.
    check_tool(&tools[1], &secret).map_err(|e| format!("regent is not fit to be timed: {e}"))?;

    progress(&format!(
        "load: {} rounds of store/get/list/erase for {}",
        opts.load_runs,
        tools.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
    ));
    let inputs: Vec<Vec<u8>> = OPS.iter().map(|op| input_for(op, &secret)).collect();
    let n = tools.len();
    for round in 0..WARMUP + opts.load_runs {
        for i in 0..n {
            let tool = &mut tools[(round + i) % n];
            for (k, op) in OPS.iter().enumerate() {
                let proc = tool.proc(op);
                let (sample, ok) = run_once(&proc, &inputs[k])
                    .map_err(|e| format!("cannot run {}: {e}", proc.program.display()))?;
                if round >= WARMUP {
                    tool.samples[k].push(sample.wall);
                    if !ok {
                        tool.failures[k] += 1;
                    }
                }
            }
        }
    }
    drop(pass_world);

    // Throughput against the same agent, one static credential.
    let store = agent.call(&Request::Store {
        server_url: TPUT_HOST.into(),
        username: "bench".into(),
        secret: Secret::new(secret.clone()),
    })?;
    if !matches!(store, Response::Done) {
        return Err(format!(
            "storing {TPUT_HOST}: the agent answered {}",
            store.kind()
        ));
    }
    let get = agent.proc(helper, &["get"]);
    let mut throughput = Vec::new();
    for &workers in &opts.parallel {
        progress(&format!(
            "load: {workers} parallel helpers, {} gets in all",
            opts.parallel_gets.max(workers)
        ));
        throughput.push(parallel_gets(
            &get,
            workers,
            opts.parallel_gets.max(workers),
        ));
    }
    let _ = agent.call(&Request::Erase {
        server_url: TPUT_HOST.into(),
    });

    let (bulk, bulk_note) = if opts.bulk == 0 {
        (None, Some("bulk stores skipped (--bulk 0)".to_owned()))
    } else {
        progress(&format!(
            "load: {} credentials stored over the protocol; helper list with {}",
            opts.bulk,
            opts.list_entries.min(opts.bulk)
        ));
        match bulk(&agent, helper, opts) {
            Ok(b) => (Some(b), None),
            Err(e) => (None, Some(format!("bulk stores failed: {e}"))),
        }
    };
    let agent_pid = agent.pid;
    drop(agent);
    Ok(LoadReport {
        runs: opts.load_runs,
        warmup: WARMUP,
        tools,
        missing,
        throughput,
        bulk,
        bulk_note,
        agent_pid,
        elapsed: started.elapsed(),
    })
}

fn parallel_gets(proc: &Proc, workers: usize, total: usize) -> Throughput {
    let per_worker = total.div_ceil(workers);
    let barrier = Barrier::new(workers + 1);
    let first_failure = Mutex::new(None);
    let input = TPUT_HOST.as_bytes();
    let (elapsed, results) = thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (barrier, first_failure) = (&barrier, &first_failure);
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(per_worker);
                    let mut failures = 0;
                    barrier.wait();
                    for _ in 0..per_worker {
                        match run_once(proc, input) {
                            Ok((sample, true)) => lat.push(sample.wall),
                            Ok((sample, false)) => {
                                lat.push(sample.wall);
                                failures += 1;
                                let mut f = first_failure.lock().expect("failure slot");
                                f.get_or_insert_with(|| "a helper exited non-zero".to_owned());
                            }
                            Err(e) => {
                                failures += 1;
                                let mut f = first_failure.lock().expect("failure slot");
                                f.get_or_insert_with(|| format!("spawn: {e}"));
                            }
                        }
                    }
                    (lat, failures)
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect();
        (start.elapsed(), results)
    });
    let mut latencies = Vec::with_capacity(per_worker * workers);
    let mut failures = 0;
    for (lat, f) in results {
        latencies.extend(lat);
        failures += f;
    }
    latencies.sort_unstable();
    Throughput {
        workers,
        gets: per_worker * workers,
        failures,
        first_failure: first_failure.into_inner().unwrap_or(None),
        elapsed,
        latencies,
    }
}

fn bulk(agent: &PrivateAgent, helper: &Path, opts: &LoadOptions) -> Result<Bulk, String> {
    let base = regent_tests::random_secret(BULK_SECRET_LEN);
    let rss_empty = agent_memory(agent.pid);
    let mut conn = agent.connect()?;
    let list_at = opts.list_entries.min(opts.bulk);
    let store_range = |conn: &mut regent_shared::client::Connection,
                       range: std::ops::Range<usize>|
     -> Result<Duration, String> {
        let t = Instant::now();
        for i in range {
            let mut s = base.clone();
            let tag = format!("{i:06}");
            s.replace_range(..tag.len(), &tag);
            let resp = conn
                .call(
                    &Request::Store {
                        server_url: format!("bulk-{i:06}.regent.test"),
                        username: format!("user{i}"),
                        secret: Secret::new(s),
                    },
                    Duration::from_secs(30),
                )
                .map_err(|e| e.to_string())?;
            if !matches!(resp, Response::Done) {
                return Err(format!("store {i}: the agent answered {}", resp.kind()));
            }
        }
        Ok(t.elapsed())
    };
    let store_first = store_range(&mut conn, 0..list_at)?;
    let rss_list = agent_memory(agent.pid);

    let list = agent.proc(helper, &["list"]);
    let out = run_capture(&list, b"")?;
    let list_seen = if out.status.success() {
        serde_json::from_slice::<BTreeMap<String, String>>(&out.stdout)
            .map(|m| m.len())
            .unwrap_or(0)
    } else {
        0
    };
    let mut list_samples = Vec::with_capacity(opts.list_runs);
    let mut list_failures = 0;
    for _ in 0..opts.list_runs {
        let (sample, ok) = run_once(&list, b"").map_err(|e| e.to_string())?;
        list_samples.push(sample.wall);
        if !ok {
            list_failures += 1;
        }
    }
    let store_rest = store_range(&mut conn, list_at..opts.bulk)?;
    drop(conn);
    // Let the agent settle (nothing is in flight; this is for the allocator).
    thread::sleep(Duration::from_millis(200));
    let rss_full = agent_memory(agent.pid);
    list_samples.sort_unstable();
    Ok(Bulk {
        entries: opts.bulk,
        store_first,
        store_rest,
        rss_empty,
        rss_list,
        rss_full,
        list_entries: list_at,
        list_seen,
        list_samples,
        list_failures,
    })
}

fn sorted(v: &[Duration]) -> Vec<Duration> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v
}

fn median_of(v: &[Duration]) -> Duration {
    percentile(&sorted(v), 50.0)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    if b.is_zero() {
        f64::NAN
    } else {
        a.as_secs_f64() / b.as_secs_f64()
    }
}

fn rate(t: &Throughput) -> f64 {
    if t.elapsed.is_zero() {
        0.0
    } else {
        t.gets as f64 / t.elapsed.as_secs_f64()
    }
}

/// Stores per second of `n` stores in `d`.
fn per_s(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

fn mem_text(m: Option<AgentMemory>) -> String {
    m.map_or_else(|| "?".into(), |m| format!("{:.2} MB", mb(m.rss)))
}

impl LoadReport {
    fn tool(&self, name: &str) -> Option<&Tool> {
        self.tools.iter().find(|t| t.name == name)
    }

    fn op_median(&self, name: &str, k: usize) -> Option<Duration> {
        self.tool(name).map(|t| median_of(&t.samples[k]))
    }

    pub fn text(&self, o: &mut String) {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "Load ({:.1} s; third agent pid {}, memory store)",
            self.elapsed.as_secs_f64(),
            self.agent_pid
        );
        let _ = writeln!(
            o,
            "  helper latency per operation: {} rounds after {} warm-up rounds, tools taking turns, each doing store, get, list, erase",
            self.runs, self.warmup
        );
        let _ = writeln!(
            o,
            "  {:<6} {:<14} {:>9} {:>9} {:>9} {:>6} {:>9} {:>10}",
            "op", "tool", "median", "p95", "p99", "fails", "x floor", "x regent"
        );
        for (k, op) in OPS.iter().enumerate() {
            let floor = self.op_median("floor", k).unwrap_or_default();
            let regent = self.op_median("regent", k).unwrap_or_default();
            for t in &self.tools {
                let s = sorted(&t.samples[k]);
                let med = percentile(&s, 50.0);
                let _ = writeln!(
                    o,
                    "  {:<6} {:<14} {:>6.3} ms {:>6.3} ms {:>6.3} ms {:>6} {:>8.2}x {:>9.2}x",
                    op,
                    t.name,
                    ms(med),
                    ms(percentile(&s, 95.0)),
                    ms(percentile(&s, 99.0)),
                    t.failures[k],
                    ratio(med, floor),
                    ratio(med, regent),
                );
            }
        }
        for t in &self.tools {
            let _ = writeln!(o, "  {}: {}", t.name, t.what);
        }
        for m in &self.missing {
            let _ = writeln!(o, "  {}: {}", m.name, m.why);
        }
        let _ = writeln!(
            o,
            "  (x floor: tool median / floor median; x regent: tool median / regent median)"
        );

        if !self.throughput.is_empty() {
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "  parallel helpers, `get` of one static credential, back to back:"
            );
            let _ = writeln!(
                o,
                "  {:>7} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "workers", "gets", "elapsed", "req/s", "median", "p99", "failures"
            );
            for t in &self.throughput {
                let _ = writeln!(
                    o,
                    "  {:>7} {:>7} {:>7.2} s {:>9.0} {:>6.3} ms {:>6.3} ms {:>9}  {}{}",
                    t.workers,
                    t.gets,
                    t.elapsed.as_secs_f64(),
                    rate(t),
                    ms(percentile(&t.latencies, 50.0)),
                    ms(percentile(&t.latencies, 99.0)),
                    t.failures,
                    mark(t.failures == 0),
                    t.first_failure
                        .as_deref()
                        .map_or_else(String::new, |f| format!(" (first: {f})"))
                );
            }
            let _ = writeln!(o, "  (target: zero failures)");
        }

        let _ = writeln!(o);
        if let Some(b) = &self.bulk {
            let _ = writeln!(
                o,
                "  agent RSS: empty {}; {} credentials {}; {} credentials {} (peak {}; {BULK_SECRET_LEN}-byte secrets)",
                mem_text(b.rss_empty),
                b.list_entries,
                mem_text(b.rss_list),
                b.entries,
                mem_text(b.rss_full),
                b.rss_full
                    .map_or_else(|| "?".into(), |m| format!("{:.2} MB", mb(m.peak))),
            );
            let _ = writeln!(
                o,
                "  stores over one protocol connection: the first {} at {:.0}/s, the next {} at {:.0}/s",
                b.list_entries,
                per_s(b.list_entries, b.store_first),
                b.entries - b.list_entries,
                per_s(b.entries - b.list_entries, b.store_rest),
            );
            let one = self
                .op_median("regent", 2)
                .map_or_else(|| "?".into(), |d| format!("{:.3} ms", ms(d)));
            let _ = writeln!(
                o,
                "  helper list with {} entries ({} returned): median {:.3} ms, p95 {:.3} ms, p99 {:.3} ms over {} runs, {} failures (1 entry: {one})",
                b.list_entries,
                b.list_seen,
                ms(percentile(&b.list_samples, 50.0)),
                ms(percentile(&b.list_samples, 95.0)),
                ms(percentile(&b.list_samples, 99.0)),
                b.list_samples.len(),
                b.list_failures,
            );
        }
        if let Some(note) = &self.bulk_note {
            let _ = writeln!(o, "  {note}");
        }
    }

    pub fn json(&self) -> Value {
        let mut latency = serde_json::Map::new();
        for (k, op) in OPS.iter().enumerate() {
            let floor = self.op_median("floor", k).unwrap_or_default();
            let regent = self.op_median("regent", k).unwrap_or_default();
            let mut per_tool = serde_json::Map::new();
            for t in &self.tools {
                let s = sorted(&t.samples[k]);
                let med = percentile(&s, 50.0);
                per_tool.insert(
                    t.name.into(),
                    json!({
                        "runs": s.len(),
                        "failures": t.failures[k],
                        "median_ms": ms(med),
                        "p95_ms": ms(percentile(&s, 95.0)),
                        "p99_ms": ms(percentile(&s, 99.0)),
                        "ratio_to_floor": ratio(med, floor),
                        "ratio_to_regent": ratio(med, regent),
                    }),
                );
            }
            latency.insert((*op).into(), Value::Object(per_tool));
        }
        let tools: serde_json::Map<String, Value> = self
            .tools
            .iter()
            .map(|t| (t.name.to_owned(), json!({"measured": true, "what": t.what})))
            .chain(
                self.missing
                    .iter()
                    .map(|m| (m.name.to_owned(), json!({"measured": false, "why": m.why}))),
            )
            .collect();
        let throughput: Vec<Value> = self
            .throughput
            .iter()
            .map(|t| {
                json!({
                    "workers": t.workers,
                    "gets": t.gets,
                    "failures": t.failures,
                    "first_failure": t.first_failure,
                    "elapsed_s": t.elapsed.as_secs_f64(),
                    "requests_per_s": rate(t),
                    "median_ms": ms(percentile(&t.latencies, 50.0)),
                    "p99_ms": ms(percentile(&t.latencies, 99.0)),
                    "pass": t.failures == 0,
                })
            })
            .collect();
        let bulk = self.bulk.as_ref().map(|b| {
            json!({
                "entries": b.entries,
                "secret_bytes": BULK_SECRET_LEN,
                "stores_per_s_first": per_s(b.list_entries, b.store_first),
                "stores_per_s_rest": per_s(b.entries - b.list_entries, b.store_rest),
                "agent_rss_empty_bytes": b.rss_empty.map(|m| m.rss),
                "agent_rss_at_list_entries_bytes": b.rss_list.map(|m| m.rss),
                "agent_rss_full_bytes": b.rss_full.map(|m| m.rss),
                "agent_peak_rss_full_bytes": b.rss_full.map(|m| m.peak),
                "list": {
                    "entries": b.list_entries,
                    "returned": b.list_seen,
                    "runs": b.list_samples.len(),
                    "failures": b.list_failures,
                    "median_ms": ms(percentile(&b.list_samples, 50.0)),
                    "p95_ms": ms(percentile(&b.list_samples, 95.0)),
                    "p99_ms": ms(percentile(&b.list_samples, 99.0)),
                },
            })
        });
        json!({
            "elapsed_s": self.elapsed.as_secs_f64(),
            "agent_pid": self.agent_pid,
            "runs": self.runs,
            "warmup": self.warmup,
            "tools": tools,
            "latency": latency,
            "throughput": throughput,
            "bulk": bulk,
            "bulk_note": self.bulk_note,
            "targets": {
                "parallel_zero_failures": {
                    "value": self.throughput.iter().map(|t| t.failures).sum::<usize>(),
                    "pass": self.throughput.iter().all(|t| t.failures == 0),
                },
            },
        })
    }
}
