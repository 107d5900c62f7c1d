//! One run of the benchmark, start to end: the agent whose credential is
//! timed, the kinds of process beside it (the ECR `get` joining them), the
//! timing, the load section, and the report on stdout.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::time::Duration;

use regent_shared::protocol::{Request, Response};
use regent_shared::secret::Secret;
use regent_tests::random_secret;
use serde_json::json;

use crate::agent::PrivateAgent;
use crate::args::Args;
use crate::ecr::EcrBench;
use crate::proc::{Proc, run_capture, shorten};
use crate::progress;
use crate::report::Report;
use crate::sources::SourcesBench;
use crate::system::{agent_memory, is_stripped, loadavg};
use crate::timing::{LIST_ENTRIES, Subject, exact_peaks, round_robin, verify};

/// The server URL of the credential an agent of regent-bench's own holds.
const OWN_SERVER: &str = "bench.regent.test";

/// The server the `store` kind stores (over and over: each run overwrites
/// the credential, a real store). Stored once at setup too, so that it is
/// one of the [`LIST_ENTRIES`] that `list-100` sees whatever the order.
const STORE_SERVER: &str = "bench-store.regent.test";

/// The server the `erase` kind erases; re-stored before each of its runs,
/// outside the timed region.
const ERASE_SERVER: &str = "bench-erase.regent.test";

/// A server the agent never holds, for `get-missing`.
const MISSING_SERVER: &str = "bench-missing.regent.test";

/// The agent whose credential is timed beside the floor.
enum Timed {
    /// The caller's (`--server`), found through the inherited environment.
    Callers(String),
    /// One of regent-bench's own, holding one made-up credential.
    Own(Box<PrivateAgent>),
}

impl Timed {
    fn start(args: &Args) -> Result<Timed, String> {
        if let Some(server) = &args.server {
            return Ok(Timed::Callers(server.clone()));
        }
        let agent = PrivateAgent::start(&args.regent, "main", &[])?;
        progress(&format!(
            "regent start (REGENT_STORE=memory, socket {})",
            agent.socket().display()
        ));
        progress(&format!(
            "docker-credential-regent store: one credential for {OWN_SERVER} (a random secret, never printed)"
        ));
        let store =
            json!({"ServerURL": OWN_SERVER, "Username": "bench", "Secret": random_secret(48)});
        let out = run_capture(
            &agent.proc(&args.helper, &["store"]),
            store.to_string().as_bytes(),
        )?;
        if !out.status.success() {
            return Err(format!(
                "`docker-credential-regent store` exited with {}: {} {}",
                out.status,
                shorten(&out.stdout),
                shorten(&out.stderr)
            ));
        }
        progress(&format!("agent pid {}", agent.pid));
        Ok(Timed::Own(Box::new(agent)))
    }

    fn server(&self) -> &str {
        match self {
            Timed::Callers(server) => server,
            Timed::Own(_) => OWN_SERVER,
        }
    }

    /// `program args` as a client of this agent.
    fn proc(&self, program: &Path, args: &[&str]) -> Proc {
        match self {
            Timed::Callers(_) => Proc::plain(program, args),
            Timed::Own(agent) => agent.proc(program, args),
        }
    }

    /// The helper's other operations, timed beside `get`: `get-missing`,
    /// `store`, `list-100` and `erase`. Only on an agent of regent-bench's
    /// own (`None` with `--server`: they would write to the caller's agent).
    ///
    /// They must not disturb each other in the round-robin, whatever the
    /// order of a round:
    /// - `store` stores [`STORE_SERVER`] with the same made-up secret every
    ///   run: each run overwrites it, the agent does the whole store;
    /// - `erase` erases [`ERASE_SERVER`], which an untimed setup step (a
    ///   `Store` over the protocol, see [`Subject::with_setup`]) puts back
    ///   before each run, so that every timed erase removes a credential
    ///   and the pair never shows up in the timings;
    /// - `list-100` lists the agent's logins: [`OWN_SERVER`],
    ///   [`STORE_SERVER`] and 98 fillers stored once here, 100 in all
    ///   ([`ERASE_SERVER`] is only there between its setup and its erase);
    /// - `get-missing` asks for [`MISSING_SERVER`], never stored: the
    ///   helper prints Docker's "not found" message and exits 1, which is
    ///   its success.
    ///
    /// Every secret is random and never printed.
    fn operations(&self, helper: &Path, runs: usize) -> Result<Option<Vec<Subject>>, String> {
        let Timed::Own(agent) = self else {
            return Ok(None);
        };
        let fillers = LIST_ENTRIES - 2;
        progress(&format!(
            "storing {STORE_SERVER} and {fillers} more credentials over the protocol for `list` of {LIST_ENTRIES} (random secrets, never printed)"
        ));
        let mut servers = vec![STORE_SERVER.to_owned()];
        servers.extend((0..fillers).map(|i| format!("bench-list-{i:02}.regent.test")));
        for server in servers {
            let req = Request::Store {
                server_url: server.clone(),
                username: "bench".into(),
                secret: Secret::new(random_secret(48)),
            };
            match agent.call(&req)? {
                Response::Done => {}
                other => {
                    return Err(format!(
                        "store {server}: the agent answered {}",
                        other.kind()
                    ));
                }
            }
        }

        let store =
            json!({"ServerURL": STORE_SERVER, "Username": "bench", "Secret": random_secret(48)});
        let socket = agent.socket().to_path_buf();
        let erase_secret = Secret::new(random_secret(48));
        let restore = move || restore_erased(&socket, &erase_secret);
        Ok(Some(vec![
            Subject::new(
                "get-missing",
                format!("docker-credential-regent get of {MISSING_SERVER} (not stored: exits 1)"),
                agent.proc(helper, &["get"]),
                MISSING_SERVER.as_bytes(),
                runs,
            )
            .expecting(1),
            Subject::new(
                "store",
                format!("docker-credential-regent store of {STORE_SERVER} (overwrites)"),
                agent.proc(helper, &["store"]),
                store.to_string().as_bytes(),
                runs,
            ),
            Subject::new(
                "list-100",
                format!("docker-credential-regent list, {LIST_ENTRIES} credentials stored"),
                agent.proc(helper, &["list"]),
                b"",
                runs,
            ),
            Subject::new(
                "erase",
                format!("docker-credential-regent erase of {ERASE_SERVER} (re-stored untimed before each run)"),
                agent.proc(helper, &["erase"]),
                ERASE_SERVER.as_bytes(),
                runs,
            )
            .with_setup(Box::new(restore)),
        ]))
    }

    /// The agent's pid, for its RSS: `given`, else ours, else asked in the
    /// `Hello` handshake on the caller's socket (never starts one).
    fn pid(&self, given: Option<u32>) -> Option<u32> {
        given.or_else(|| match self {
            Timed::Own(agent) => Some(agent.pid),
            Timed::Callers(_) => {
                let socket = regent_shared::paths::socket_path();
                regent_shared::client::connect(&socket, Duration::from_secs(2))
                    .ok()
                    .map(|conn| conn.agent.pid)
            }
        })
    }
}

/// Stores [`ERASE_SERVER`] again, over the protocol, for the next `erase`.
fn restore_erased(socket: &Path, secret: &Secret) -> Result<(), String> {
    let mut conn = regent_shared::client::connect(socket, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let req = Request::Store {
        server_url: ERASE_SERVER.into(),
        username: "bench".into(),
        secret: secret.clone(),
    };
    match conn
        .call(&req, Duration::from_secs(20))
        .map_err(|e| e.to_string())?
    {
        Response::Done => Ok(()),
        other => Err(format!(
            "store {ERASE_SERVER}: the agent answered {}",
            other.kind()
        )),
    }
}

pub fn run(args: &Args) -> Result<(), String> {
    args.check()?;
    let mut needed = vec![
        ("helper", &args.helper),
        ("floor", &args.floor),
        ("cat", &args.cat),
    ];
    if args.server.is_none() || args.with_ecr() || args.with_sources() || args.with_load() {
        needed.push(("regent", &args.regent));
    }
    for (what, path) in needed {
        if !path.is_file() {
            return Err(format!(
                "{what} binary {} not found; build with `cargo build --release --workspace --bins` or pass --{what}",
                path.display()
            ));
        }
    }

    let timed = Timed::start(args)?;
    let server = timed.server();
    let input = server.as_bytes();
    let mut subjects = vec![
        Subject::new(
            "floor",
            "empty Rust binary, URL on stdin".into(),
            timed.proc(&args.floor, &[]),
            input,
            args.runs,
        ),
        Subject::new(
            "cat",
            format!("{} reading the URL from stdin", args.cat.display()),
            timed.proc(&args.cat, &[]),
            input,
            args.runs,
        ),
        Subject::new(
            "helper",
            "docker-credential-regent get".into(),
            timed.proc(&args.helper, &["get"]),
            input,
            args.runs,
        ),
    ];
    if args.floor_static.is_file() {
        subjects.insert(
            1,
            Subject::new(
                "floor-static",
                "empty Rust binary, static (musl), URL on stdin".into(),
                timed.proc(&args.floor_static, &[]),
                input,
                args.runs,
            ),
        );
    } else {
        progress(&format!(
            "no static floor ({} not built: the musl target is not installed)",
            args.floor_static.display()
        ));
    }
    let mut operations_note = None;
    match timed.operations(&args.helper, args.runs)? {
        Some(kinds) => subjects.extend(kinds),
        None => {
            let note = "get-missing, store, list-100 and erase skipped with --server: \
                 store and erase would write to the caller's agent, and list-100 and \
                 get-missing need the credentials regent-bench sets up in its own"
                .to_owned();
            progress(&note);
            operations_note = Some(note);
        }
    }
    let agent_pid = timed.pid(args.agent_pid);
    verify(server, &mut subjects)?;

    // The ECR agent: its cached-token `get` joins the round-robin.
    let mut ecr = None;
    let mut ecr_note = None;
    if args.with_ecr() {
        let joined = EcrBench::start(&args.regent)
            .and_then(|mut e| e.subject(&args.helper, args.runs).map(|s| (e, s)));
        match joined {
            Ok((e, s)) => {
                subjects.push(s);
                ecr = Some(e);
            }
            Err(e) => {
                let note = format!("ECR section skipped: {e}");
                progress(&note);
                ecr_note = Some(note);
            }
        }
    }

    // The other sources' agent: its gets join the round-robin too.
    let mut sources = None;
    let mut sources_note = None;
    if args.with_sources() {
        match SourcesBench::start(&args.regent, &args.helper, args.runs) {
            Ok((bench, kinds)) => {
                subjects.extend(kinds);
                sources = Some(bench);
            }
            Err(e) => {
                let note = format!("sources section skipped: {e}");
                progress(&note);
                sources_note = Some(note);
            }
        }
    }

    let agent_before = agent_pid.and_then(agent_memory);
    let load_before = loadavg();
    let elapsed = round_robin(&mut subjects, args.warmup, args.runs)?;
    let rss_note = exact_peaks(&mut subjects, args.rss_runs);
    let load_after = loadavg();
    let agent_after = agent_pid.and_then(agent_memory);
    let helper_size = fs::metadata(&args.helper)
        .map_err(|e| format!("cannot stat {}: {e}", args.helper.display()))?
        .len();
    let helper_stripped = is_stripped(&args.helper);
    let ecr = ecr.map(|e| e.finish(&args.helper, &args.ecr));
    let sources = sources.map(SourcesBench::finish);

    let (load, load_note) = if args.with_load() {
        match crate::load::run(&args.load, &args.regent, &args.helper, &args.floor) {
            Ok(r) => (Some(r), None),
            Err(e) => (None, Some(format!("load section failed: {e}"))),
        }
    } else {
        (None, None)
    };
    if let Some(note) = &load_note {
        progress(note);
    }

    let report = Report {
        args,
        server,
        subjects: &subjects,
        elapsed,
        helper_size,
        helper_stripped,
        agent_pid,
        agent_before,
        agent_after,
        load_before,
        load_after,
        rss_note,
        operations_note,
        ecr,
        ecr_note,
        sources,
        sources_note,
        load,
        load_note,
    };
    let out = if args.json {
        let mut s = serde_json::to_string_pretty(&report.json()).map_err(|e| e.to_string())?;
        s.push('\n');
        s
    } else {
        report.text()
    };
    io::stdout()
        .write_all(out.as_bytes())
        .map_err(|e| format!("cannot write the report: {e}"))
}
