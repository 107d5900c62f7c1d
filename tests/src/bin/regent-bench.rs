//! regent-bench: times `docker-credential-regent get` of a stored credential as
//! a whole process, side by side in one run with an exec floor, and reports the
//! helper's size and memory and the agent's memory.
//!
//! Run it through `scripts/bench`, which builds the release binaries, starts an
//! agent on a memory store in a temporary directory, stores one credential and
//! then calls this program. Alone:
//!
//! ```text
//! regent-bench --server URL [--runs N] [--warmup N] [--helper PATH]
//!              [--floor PATH] [--cat PATH] [--agent-pid PID] [--json] [--quick]
//!              [ECR and load options: --help lists them]
//! ```
//!
//! Three kinds of process are spawned `--runs` times each (default 2000),
//! round-robin with the order rotating every round, so that machine noise hits
//! all of them alike:
//!
//! - `floor`: `regent-bench-floor`, an empty Rust binary, with the URL on stdin;
//! - `cat`: `/bin/cat`, reading the URL from stdin;
//! - `helper`: `docker-credential-regent get`, with the URL on stdin;
//! - `ecr` (a fourth kind, unless `--quick` or `--no-ecr`): the helper's `get`
//!   of an ECR host whose token a second agent of this program's own holds
//!   (see regent_bench/ecr.rs); that section then counts token-endpoint
//!   calls over `--ecr-gets` gets with short token lifetimes.
//!
//! Then, unless `--quick` or `--no-load`, the load section
//! (regent_bench/load.rs): per-operation latency beside the floor and the
//! other Debian helpers, parallel helpers, and an agent with many credentials.
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

#[cfg(unix)]
#[path = "regent_bench/agent.rs"]
mod agent;
#[cfg(unix)]
#[path = "regent_bench/ecr.rs"]
mod ecr;
#[cfg(unix)]
#[path = "regent_bench/load.rs"]
mod load;

#[cfg(unix)]
fn main() {
    if let Err(e) = bench::main() {
        eprintln!("regent-bench: {e}");
        std::process::exit(1);
    }
}

#[cfg(not(unix))]
fn main() {
    eprintln!("regent-bench: only Unix is supported (it uses wait4 for the children's rusage)");
    std::process::exit(1);
}

#[cfg(unix)]
mod bench {
    use std::ffi::OsString;
    use std::fmt::Write as _;
    use std::fs;
    use std::io::{self, Write};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use serde_json::{Value, json};

    /// The helper's median may be at most this multiple of the floor's.
    const TARGET_RATIO: f64 = 1.25;
    /// Stripped helper size, bytes (600 kB).
    const TARGET_HELPER_SIZE: u64 = 600_000;
    /// Helper peak RSS, bytes (3 MB).
    const TARGET_HELPER_RSS: u64 = 3_000_000;
    /// Agent RSS after the run, bytes (15 MB).
    const TARGET_AGENT_RSS: u64 = 15_000_000;

    const USAGE: &str = "\
usage: regent-bench --server URL [options]

Times `docker-credential-regent get` against an exec floor; see scripts/bench.

options:
  --server URL      the server URL of a credential the agent holds (required)
  --runs N          timed runs per kind (default 2000)
  --warmup N        untimed runs per kind first (default 50)
  --helper PATH     docker-credential-regent (default: next to this program)
  --floor PATH      the empty Rust binary (default: regent-bench-floor next to this program)
  --cat PATH        the cat floor (default /bin/cat)
  --rss-runs N      traced runs per kind for the exact peak RSS (default 20; 0: skip)
  --agent-pid PID   the agent, for its RSS (default: asked over the socket)
  --json            print one JSON object instead of the table
  --quick           only the above (no ECR, no load section)

ECR section (a fake GetAuthorizationToken on 127.0.0.1 and a second agent):
  --no-ecr          skip it
  --regent PATH     the agent executable (default: regent next to this program)
  --ecr-gets N      gets in the short-lifetime run (default 10000; 0: skip that run)
  --ecr-lifetime S  token lifetime of that run, seconds (default 6)

Load section (a third agent):
  --no-load         skip it
  --load-runs N     rounds of store/get/list/erase per tool (default 100)
  --parallel LIST   parallel helper counts (default 8,64,256)
  --parallel-gets N gets per parallel level (default 2000)
  --bulk N          credentials stored for the agent's RSS (default 10000; 0: skip)
  --list-entries N  entries for the list latency (default 1000)
  --list-runs N     helper list runs with that many entries (default 100)
  --private-secret-service
                    the session bus is a throw-away one (scripts/with-secret-service):
                    time docker-credential-secretservice on it
";

    struct Config {
        server: String,
        runs: usize,
        warmup: usize,
        rss_runs: usize,
        helper: PathBuf,
        floor: PathBuf,
        cat: PathBuf,
        agent_pid: Option<u32>,
        json: bool,
        regent: PathBuf,
        ecr: bool,
        ecr_gets: usize,
        ecr_lifetime: u64,
        load: bool,
        load_opts: crate::load::LoadOptions,
    }

    fn parse_args() -> Result<Config, String> {
        let own_dir = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .unwrap_or_else(|| PathBuf::from("."));
        let mut cfg = Config {
            server: String::new(),
            runs: 2000,
            warmup: 50,
            rss_runs: 20,
            helper: own_dir.join("docker-credential-regent"),
            floor: own_dir.join("regent-bench-floor"),
            cat: PathBuf::from("/bin/cat"),
            agent_pid: None,
            json: false,
            regent: own_dir.join("regent"),
            ecr: true,
            ecr_gets: 10_000,
            ecr_lifetime: 6,
            load: true,
            load_opts: crate::load::LoadOptions {
                runs: 100,
                warmup: 5,
                parallel: vec![8, 64, 256],
                parallel_gets: 2000,
                bulk: 10_000,
                list_entries: 1000,
                list_runs: 100,
                private_secret_service: false,
            },
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .ok_or_else(|| format!("{name} needs a value\n\n{USAGE}"))
            };
            match arg.as_str() {
                "--server" => cfg.server = value("--server")?,
                "--runs" => cfg.runs = number(&value("--runs")?, "--runs")?,
                "--warmup" => cfg.warmup = number(&value("--warmup")?, "--warmup")?,
                "--rss-runs" => cfg.rss_runs = number(&value("--rss-runs")?, "--rss-runs")?,
                "--helper" => cfg.helper = value("--helper")?.into(),
                "--floor" => cfg.floor = value("--floor")?.into(),
                "--cat" => cfg.cat = value("--cat")?.into(),
                "--agent-pid" => {
                    cfg.agent_pid = Some(number(&value("--agent-pid")?, "--agent-pid")?)
                }
                "--json" => cfg.json = true,
                "--quick" => {
                    cfg.ecr = false;
                    cfg.load = false;
                }
                "--no-ecr" => cfg.ecr = false,
                "--no-load" => cfg.load = false,
                "--regent" => cfg.regent = value("--regent")?.into(),
                "--ecr-gets" => cfg.ecr_gets = number(&value("--ecr-gets")?, "--ecr-gets")?,
                "--ecr-lifetime" => {
                    cfg.ecr_lifetime = number(&value("--ecr-lifetime")?, "--ecr-lifetime")?
                }
                "--load-runs" => {
                    cfg.load_opts.runs = number(&value("--load-runs")?, "--load-runs")?
                }
                "--parallel" => {
                    cfg.load_opts.parallel = value("--parallel")?
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(|s| number(s, "--parallel"))
                        .collect::<Result<_, _>>()?
                }
                "--parallel-gets" => {
                    cfg.load_opts.parallel_gets =
                        number(&value("--parallel-gets")?, "--parallel-gets")?
                }
                "--bulk" => cfg.load_opts.bulk = number(&value("--bulk")?, "--bulk")?,
                "--list-entries" => {
                    cfg.load_opts.list_entries =
                        number(&value("--list-entries")?, "--list-entries")?
                }
                "--list-runs" => {
                    cfg.load_opts.list_runs = number(&value("--list-runs")?, "--list-runs")?
                }
                "--private-secret-service" => cfg.load_opts.private_secret_service = true,
                "-h" | "--help" => {
                    print!("{USAGE}");
                    std::process::exit(0);
                }
                other => return Err(format!("unknown argument {other:?}\n\n{USAGE}")),
            }
        }
        if cfg.server.is_empty() {
            return Err(format!("--server is required\n\n{USAGE}"));
        }
        if cfg.runs == 0 {
            return Err("--runs must be at least 1".into());
        }
        if cfg.ecr_lifetime < 2 {
            return Err("--ecr-lifetime must be at least 2 (seconds)".into());
        }
        if cfg.load_opts.runs == 0 {
            return Err("--load-runs must be at least 1".into());
        }
        if cfg.load_opts.parallel.contains(&0) {
            return Err("--parallel: every count must be at least 1".into());
        }
        Ok(cfg)
    }

    fn number<T: std::str::FromStr>(s: &str, name: &str) -> Result<T, String> {
        s.parse()
            .map_err(|_| format!("{name}: {s:?} is not a non-negative integer"))
    }

    /// A program to spawn: its arguments and the changes to this process's
    /// environment (`None`: removed).
    #[derive(Clone)]
    pub(crate) struct Proc {
        pub program: PathBuf,
        pub args: Vec<String>,
        pub env: Vec<(OsString, Option<OsString>)>,
    }

    impl Proc {
        fn plain(program: &Path, args: &[&str]) -> Proc {
            Proc {
                program: program.to_path_buf(),
                args: args.iter().map(|a| (*a).to_owned()).collect(),
                env: Vec::new(),
            }
        }

        /// The command with its arguments and environment; stdio is the caller's.
        pub fn command(&self) -> Command {
            let mut cmd = Command::new(&self.program);
            cmd.args(&self.args);
            crate::agent::apply_env(&mut cmd, &self.env);
            cmd
        }
    }

    /// Progress, on stderr.
    pub(crate) fn progress(msg: &str) {
        eprintln!("==> {msg}");
    }

    /// One kind of process that gets timed.
    struct Subject {
        name: &'static str,
        what: String,
        proc: Proc,
        /// What it reads on stdin.
        input: Vec<u8>,
        samples: Vec<Sample>,
        failures: usize,
        /// The exact peak RSS of the program's own image (max of the traced runs), bytes.
        exact_peak: Option<u64>,
    }

    #[derive(Clone, Copy)]
    pub(crate) struct Sample {
        pub wall: Duration,
        /// Peak resident set size of the child, bytes.
        max_rss: u64,
    }

    pub fn main() -> Result<(), String> {
        let cfg = parse_args()?;
        let mut needed = vec![
            ("helper", &cfg.helper),
            ("floor", &cfg.floor),
            ("cat", &cfg.cat),
        ];
        if cfg.ecr || cfg.load {
            needed.push(("regent", &cfg.regent));
        }
        for (what, path) in needed {
            if !path.is_file() {
                return Err(format!(
                    "{what} binary {} not found; build with `cargo build --release --workspace --bins` or pass --{what}",
                    path.display()
                ));
            }
        }

        let input = cfg.server.as_bytes().to_vec();
        let mut subjects = vec![
            Subject {
                name: "floor",
                what: "empty Rust binary, URL on stdin".into(),
                proc: Proc::plain(&cfg.floor, &[]),
                input: input.clone(),
                samples: Vec::with_capacity(cfg.runs),
                failures: 0,
                exact_peak: None,
            },
            Subject {
                name: "cat",
                what: format!("{} reading the URL from stdin", cfg.cat.display()),
                proc: Proc::plain(&cfg.cat, &[]),
                input: input.clone(),
                samples: Vec::with_capacity(cfg.runs),
                failures: 0,
                exact_peak: None,
            },
            Subject {
                name: "helper",
                what: "docker-credential-regent get".into(),
                proc: Proc::plain(&cfg.helper, &["get"]),
                input: input.clone(),
                samples: Vec::with_capacity(cfg.runs),
                failures: 0,
                exact_peak: None,
            },
        ];

        let agent_pid = match cfg.agent_pid {
            Some(pid) => Some(pid),
            None => agent_pid_from_socket(),
        };
        verify(&cfg, &subjects)?;

        // The ECR agent: its cached-token `get` joins the round-robin.
        let mut ecr = None;
        let mut ecr_note = None;
        if cfg.ecr {
            match crate::ecr::EcrBench::start(&cfg.regent) {
                Ok(mut e) => {
                    let s = Subject {
                        name: "ecr",
                        what: format!(
                            "docker-credential-regent get {} (ECR token cached by the second agent)",
                            crate::ecr::HOST
                        ),
                        proc: e.subject_proc(&cfg.helper),
                        input: crate::ecr::HOST.as_bytes().to_vec(),
                        samples: Vec::with_capacity(cfg.runs),
                        failures: 0,
                        exact_peak: None,
                    };
                    // The cold fetch happens here, before any timing.
                    let out = run_capture(&s.proc, &s.input)?;
                    match check_helper_answer(&out) {
                        None => {
                            e.mark_timing_start();
                            subjects.push(s);
                            ecr = Some(e);
                        }
                        Some(problem) => {
                            ecr_note = Some(format!(
                                "ECR section skipped: the ECR `get` is not fit to be timed: {problem}"
                            ));
                            e.stop();
                        }
                    }
                }
                Err(e) => ecr_note = Some(format!("ECR section skipped: {e}")),
            }
        }
        if let Some(note) = &ecr_note {
            progress(note);
        }

        let agent_before = agent_pid.and_then(agent_memory);
        let load_before = loadavg();

        progress(&format!(
            "{} timed runs per kind ({}) after {} warm-up runs, round-robin",
            cfg.runs,
            subjects
                .iter()
                .map(|s| s.name)
                .collect::<Vec<_>>()
                .join(", "),
            cfg.warmup
        ));
        let n = subjects.len();
        let started = Instant::now();
        for round in 0..cfg.warmup + cfg.runs {
            for i in 0..n {
                let s = &mut subjects[(round + i) % n];
                let (sample, ok) = run_once(&s.proc, &s.input)
                    .map_err(|e| format!("cannot run {}: {e}", s.proc.program.display()))?;
                if round >= cfg.warmup {
                    s.samples.push(sample);
                    if !ok {
                        s.failures += 1;
                    }
                }
            }
        }
        let elapsed = started.elapsed();

        let mut rss_note = None;
        'rss: for _ in 0..cfg.rss_runs {
            for s in subjects.iter_mut() {
                match exact_peak_rss(&s.proc, &s.input) {
                    Ok(Some(peak)) => s.exact_peak = Some(s.exact_peak.unwrap_or(0).max(peak)),
                    Ok(None) => {}
                    Err(e) => {
                        rss_note = Some(e);
                        for s in subjects.iter_mut() {
                            s.exact_peak = None;
                        }
                        break 'rss;
                    }
                }
            }
        }

        let load_after = loadavg();
        let agent_after = agent_pid.and_then(agent_memory);
        let helper_size = fs::metadata(&cfg.helper)
            .map_err(|e| format!("cannot stat {}: {e}", cfg.helper.display()))?
            .len();
        let helper_stripped = is_stripped(&cfg.helper);

        let ecr_report = ecr.map(|e| {
            let calls_during_timing = e.calls_during_timing();
            let (short, note) = if cfg.ecr_gets == 0 {
                (
                    None,
                    Some("short-lifetime run skipped (--ecr-gets 0)".to_owned()),
                )
            } else {
                match e.short_run(
                    &cfg.helper,
                    Duration::from_secs(cfg.ecr_lifetime),
                    cfg.ecr_gets,
                ) {
                    Ok(r) => (Some(r), None),
                    Err(err) => (None, Some(format!("short-lifetime run failed: {err}"))),
                }
            };
            let report = crate::ecr::EcrReport {
                agent_pid: e.agent_pid(),
                calls_during_timing,
                total_calls: e.total_calls(),
                short,
                note,
            };
            e.stop();
            report
        });

        let (load, load_note) = if cfg.load {
            match crate::load::run(&cfg.load_opts, &cfg.regent, &cfg.helper, &cfg.floor) {
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
            cfg: &cfg,
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
            ecr: ecr_report,
            ecr_note,
            load,
            load_note,
        };
        let out = if cfg.json {
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

    /// Runs `proc` with `input` on stdin; its output (stdout and stderr piped).
    pub(crate) fn run_capture(proc: &Proc, input: &[u8]) -> Result<std::process::Output, String> {
        let (reader, mut writer) = io::pipe().map_err(|e| e.to_string())?;
        writer.write_all(input).map_err(|e| e.to_string())?;
        drop(writer);
        proc.command()
            .stdin(reader)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", proc.program.display()))
    }

    /// Spawns `program args` once with `input` on stdin and stdout/stderr on
    /// /dev/null; returns its wall time and peak RSS, and whether it exited 0.
    pub(crate) fn run_once(proc: &Proc, input: &[u8]) -> io::Result<(Sample, bool)> {
        // Fill the pipe before the spawn: the input is far below the pipe's
        // capacity, so the write cannot block and is not part of the timing.
        let (reader, mut writer) = io::pipe()?;
        writer.write_all(input)?;
        drop(writer);

        let start = Instant::now();
        let child = proc
            .command()
            .stdin(reader)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let (status, usage) = wait4(child.id())?;
        let wall = start.elapsed();
        // `child` was reaped by wait4; dropping a std Child never waits.
        drop(child);

        let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        Ok((
            Sample {
                wall,
                max_rss: max_rss_bytes(&usage),
            },
            ok,
        ))
    }

    fn wait4(pid: u32) -> io::Result<(libc::c_int, libc::rusage)> {
        let pid = libc::pid_t::try_from(pid).map_err(io::Error::other)?;
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain old data; all-zero bytes are a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        loop {
            // SAFETY: both pointers point to live, writable locals of the right types.
            let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
            if r == pid {
                return Ok((status, usage));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    fn max_rss_bytes(usage: &libc::rusage) -> u64 {
        let v = u64::try_from(usage.ru_maxrss).unwrap_or(0);
        // Linux and the BSDs report KiB, macOS bytes.
        if cfg!(target_os = "macos") {
            v
        } else {
            v * 1024
        }
    }

    /// Runs `program args` once under ptrace and returns the peak RSS of its
    /// own image: `VmHWM` read at the `PTRACE_EVENT_EXIT` stop, when the
    /// process is exiting but still has its memory. `Ok(None)` when the
    /// process ended without that stop; `Err` (with the reason) when tracing
    /// is not possible here at all.
    #[cfg(target_os = "linux")]
    fn exact_peak_rss(proc: &Proc, input: &[u8]) -> Result<Option<u64>, String> {
        use std::os::unix::process::CommandExt;
        use std::ptr;

        let (reader, mut writer) = io::pipe().map_err(|e| e.to_string())?;
        writer.write_all(input).map_err(|e| e.to_string())?;
        drop(writer);
        let mut cmd = proc.command();
        cmd.stdin(reader)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: the hook runs in the child between fork and exec and makes
        // one system call, which is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                let null = ptr::null_mut::<libc::c_void>();
                if libc::ptrace(libc::PTRACE_TRACEME, 0, null, null) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| {
            format!(
                "cannot trace a child with ptrace ({e}); only the wait4 upper bound is reported"
            )
        })?;
        let pid = libc::pid_t::try_from(child.id()).map_err(|e| e.to_string())?;
        let exit_event = libc::SIGTRAP | (libc::PTRACE_EVENT_EXIT << 8);
        let mut peak = None;
        let mut traced = false;
        loop {
            let mut status: libc::c_int = 0;
            // SAFETY: status is a live, writable local.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == -1 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("waitpid: {err}"));
            }
            if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
                break;
            }
            if !libc::WIFSTOPPED(status) {
                continue;
            }
            let null = ptr::null_mut::<libc::c_void>();
            let mut deliver = 0;
            if status >> 8 == exit_event {
                peak = process_status_bytes(u32::try_from(pid).unwrap_or(0), "VmHWM:");
            } else if libc::WSTOPSIG(status) == libc::SIGTRAP && !traced {
                // The stop after a traced execve: ask for the exit stop, and
                // for the child's death should this program die first.
                traced = true;
                let options = (libc::PTRACE_O_TRACEEXIT | libc::PTRACE_O_EXITKILL) as usize;
                // SAFETY: pid is our stopped tracee; data is an option mask.
                unsafe {
                    libc::ptrace(
                        libc::PTRACE_SETOPTIONS,
                        pid,
                        null,
                        ptr::without_provenance_mut::<libc::c_void>(options),
                    );
                }
            } else if libc::WSTOPSIG(status) != libc::SIGTRAP {
                deliver = libc::WSTOPSIG(status);
            }
            let data = usize::try_from(deliver).unwrap_or(0);
            // SAFETY: pid is our stopped tracee; data is a signal number or 0.
            unsafe {
                libc::ptrace(
                    libc::PTRACE_CONT,
                    pid,
                    null,
                    ptr::without_provenance_mut::<libc::c_void>(data),
                );
            }
        }
        // Reaped above; dropping a std Child never waits.
        drop(child);
        Ok(peak)
    }

    #[cfg(not(target_os = "linux"))]
    fn exact_peak_rss(_: &Proc, _: &[u8]) -> Result<Option<u64>, String> {
        Err("the exact peak RSS needs Linux (ptrace + /proc); only the wait4 upper bound is reported".into())
    }

    /// Checks, before timing anything, that each subject does what it is
    /// timed for: above all that the helper's `get` returns the stored
    /// credential and not "not found". Prints no secret.
    fn verify(cfg: &Config, subjects: &[Subject]) -> Result<(), String> {
        for s in subjects {
            let out = run_capture(&s.proc, &s.input)?;
            let problem = match s.name {
                "helper" => check_helper_answer(&out).map(|p| {
                    format!(
                        "{p}. Is an agent running with a credential stored for {:?}? (scripts/bench sets that up)",
                        cfg.server
                    )
                }),
                "cat" if out.stdout != cfg.server.as_bytes() => {
                    Some("it did not echo its stdin".to_owned())
                }
                _ if !out.status.success() => Some(format!("it exited with {}", out.status)),
                _ => None,
            };
            if let Some(problem) = problem {
                return Err(format!(
                    "{} ({}) is not fit to be timed: {problem}",
                    s.name, s.what
                ));
            }
        }
        Ok(())
    }

    /// What is wrong with a helper `get`'s answer, if anything. Prints no secret.
    fn check_helper_answer(out: &std::process::Output) -> Option<String> {
        if !out.status.success() {
            // A failing helper prints one error line on stdout and never a
            // secret; show both streams, shortened.
            return Some(format!(
                "`get` exited with {}; stdout: {:?}; stderr: {:?}",
                out.status,
                shorten(&out.stdout),
                shorten(&out.stderr),
            ));
        }
        // Success: stdout holds the secret. Look at it, never print it.
        let answer: Value = match serde_json::from_slice(&out.stdout) {
            Ok(v) => v,
            Err(_) => return Some("`get` succeeded but did not print a JSON object".into()),
        };
        let field = |k: &str| answer.get(k).and_then(Value::as_str);
        match (field("ServerURL"), field("Username"), field("Secret")) {
            (Some(_), Some(user), Some(_)) if !user.is_empty() => None,
            _ => Some("`get` printed JSON without ServerURL, Username and Secret strings".into()),
        }
    }

    pub(crate) fn shorten(bytes: &[u8]) -> String {
        let s = String::from_utf8_lossy(bytes);
        let s = s.trim();
        match s.char_indices().nth(200) {
            Some((i, _)) => format!("{}...", &s[..i]),
            None => s.to_owned(),
        }
    }

    /// Asks the agent for its pid in the `Hello` handshake (never starts one).
    fn agent_pid_from_socket() -> Option<u32> {
        let socket = regent_shared::paths::socket_path();
        regent_shared::client::connect(&socket, Duration::from_secs(2))
            .ok()
            .map(|conn| conn.agent.pid)
    }

    #[derive(Clone, Copy)]
    pub(crate) struct AgentMemory {
        pub rss: u64,
        pub peak: u64,
    }

    /// VmRSS and VmHWM of a process, bytes (Linux /proc only).
    pub(crate) fn agent_memory(pid: u32) -> Option<AgentMemory> {
        Some(AgentMemory {
            rss: process_status_bytes(pid, "VmRSS:")?,
            peak: process_status_bytes(pid, "VmHWM:")?,
        })
    }

    /// A `kB` field of `/proc/<pid>/status`, in bytes.
    fn process_status_bytes(pid: u32, field: &str) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|kb| kb.trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    }

    fn loadavg() -> Option<String> {
        let s = fs::read_to_string("/proc/loadavg").ok()?;
        Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
    }

    /// For an ELF file: whether it has no `.symtab` section left. `None` when
    /// it is not ELF or cannot be read.
    fn is_stripped(path: &Path) -> Option<bool> {
        let bytes = fs::read(path).ok()?;
        if !bytes.starts_with(b"\x7fELF") {
            return None;
        }
        Some(!bytes.windows(8).any(|w| w == b".symtab\0"))
    }

    struct Stats {
        median: Duration,
        p95: Duration,
        p99: Duration,
        min: Duration,
        max: Duration,
        max_rss: u64,
    }

    fn stats(samples: &[Sample]) -> Stats {
        let mut walls: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
        walls.sort_unstable();
        Stats {
            median: percentile(&walls, 50.0),
            p95: percentile(&walls, 95.0),
            p99: percentile(&walls, 99.0),
            min: walls.first().copied().unwrap_or_default(),
            max: walls.last().copied().unwrap_or_default(),
            max_rss: samples.iter().map(|s| s.max_rss).max().unwrap_or(0),
        }
    }

    /// Nearest-rank percentile of sorted values.
    pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    pub(crate) fn ms(d: Duration) -> f64 {
        d.as_secs_f64() * 1e3
    }

    pub(crate) fn mb(bytes: u64) -> f64 {
        bytes as f64 / 1e6
    }

    pub(crate) fn mark(pass: bool) -> &'static str {
        if pass { "PASS" } else { "MISS" }
    }

    struct Report<'a> {
        cfg: &'a Config,
        subjects: &'a [Subject],
        elapsed: Duration,
        helper_size: u64,
        helper_stripped: Option<bool>,
        agent_pid: Option<u32>,
        agent_before: Option<AgentMemory>,
        agent_after: Option<AgentMemory>,
        load_before: Option<String>,
        load_after: Option<String>,
        /// Why there is no exact peak RSS, when there is none.
        rss_note: Option<String>,
        ecr: Option<crate::ecr::EcrReport>,
        ecr_note: Option<String>,
        load: Option<crate::load::LoadReport>,
        load_note: Option<String>,
    }

    impl Report<'_> {
        fn stats_of(&self, name: &str) -> Stats {
            stats(&self.subject(name).samples)
        }

        fn subject(&self, name: &str) -> &Subject {
            self.subjects
                .iter()
                .find(|s| s.name == name)
                .expect("every subject is measured")
        }

        /// The helper's peak RSS the target is judged on: the exact figure
        /// when there is one, else the wait4 upper bound.
        fn helper_rss(&self) -> (u64, &'static str) {
            match self.subject("helper").exact_peak {
                Some(peak) => (peak, "VmHWM at exit, max of the traced runs"),
                None => (
                    self.stats_of("helper").max_rss,
                    "wait4 ru_maxrss, an upper bound that includes this benchmark's own image",
                ),
            }
        }

        fn ratio(&self, floor: &str) -> f64 {
            let helper = self.stats_of("helper").median.as_secs_f64();
            let floor = self.stats_of(floor).median.as_secs_f64();
            if floor > 0.0 {
                helper / floor
            } else {
                f64::NAN
            }
        }

        fn text(&self) -> String {
            let mut o = String::new();
            let cfg = self.cfg;
            let _ = writeln!(
                o,
                "regent-bench: {} timed runs per kind after {} warm-up runs, interleaved round-robin ({:.1} s, {} CPUs, load {} -> {})",
                cfg.runs,
                cfg.warmup,
                self.elapsed.as_secs_f64(),
                std::thread::available_parallelism().map_or(0, |n| n.get()),
                self.load_before.as_deref().unwrap_or("?"),
                self.load_after.as_deref().unwrap_or("?"),
            );
            let _ = writeln!(o, "server URL on stdin: {}", cfg.server);
            let _ = writeln!(o);
            let _ = writeln!(
                o,
                "{:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}  what",
                "kind", "median", "p95", "p99", "min", "max", "peak RSS", "maxrss", "fails"
            );
            for s in self.subjects {
                let st = stats(&s.samples);
                let peak = s
                    .exact_peak
                    .map_or_else(|| "?".to_owned(), |p| format!("{:.2} MB", mb(p)));
                let _ = writeln!(
                    o,
                    "{:<8} {:>6.3} ms {:>6.3} ms {:>6.3} ms {:>6.3} ms {:>6.3} ms {:>9} {:>6.2} MB {:>6}  {}",
                    s.name,
                    ms(st.median),
                    ms(st.p95),
                    ms(st.p99),
                    ms(st.min),
                    ms(st.max),
                    peak,
                    mb(st.max_rss),
                    s.failures,
                    s.what
                );
            }
            let _ = writeln!(
                o,
                "(peak RSS: VmHWM at exit over {} traced runs per kind; maxrss: wait4 ru_maxrss over the timed runs, which includes the spawning image)",
                cfg.rss_runs
            );
            if let Some(note) = &self.rss_note {
                let _ = writeln!(o, "(no exact peak RSS: {note})");
            }
            let _ = writeln!(o);

            let ratio = self.ratio("floor");
            let _ = writeln!(
                o,
                "helper median / floor median (empty Rust binary): {ratio:.3}x   target <= {TARGET_RATIO}x   {}",
                mark(ratio <= TARGET_RATIO)
            );
            let _ = writeln!(
                o,
                "helper median / cat median:                       {:.3}x   (for reference)",
                self.ratio("cat")
            );
            let helper_fails = self.subject("helper").failures;
            if helper_fails > 0 {
                let _ = writeln!(
                    o,
                    "warning: {helper_fails} helper runs exited non-zero; their times are in the table but they did not all find the credential"
                );
            }
            let stripped = match self.helper_stripped {
                Some(true) => "stripped",
                Some(false) => "NOT stripped: .symtab present",
                None => "stripped: unknown",
            };
            let _ = writeln!(
                o,
                "helper file size: {} bytes ({stripped})   target < {} bytes   {}",
                self.helper_size,
                TARGET_HELPER_SIZE,
                mark(self.helper_size < TARGET_HELPER_SIZE)
            );
            let (helper_rss, how) = self.helper_rss();
            let _ = writeln!(
                o,
                "helper peak RSS ({how}): {:.2} MB   target < {:.0} MB   {}",
                mb(helper_rss),
                mb(TARGET_HELPER_RSS),
                mark(helper_rss < TARGET_HELPER_RSS)
            );
            match (self.agent_pid, self.agent_after) {
                (Some(pid), Some(after)) => {
                    let before = self
                        .agent_before
                        .map_or_else(|| "?".to_owned(), |m| format!("{:.2} MB", mb(m.rss)));
                    let _ = writeln!(
                        o,
                        "agent RSS after the run (pid {pid}): {:.2} MB (before: {before}, peak: {:.2} MB)   target < {:.0} MB   {}",
                        mb(after.rss),
                        mb(after.peak),
                        mb(TARGET_AGENT_RSS),
                        mark(after.rss < TARGET_AGENT_RSS)
                    );
                }
                (Some(pid), None) => {
                    let _ = writeln!(o, "agent RSS: unknown (cannot read /proc/{pid}/status)");
                }
                (None, _) => {
                    let _ = writeln!(o, "agent RSS: unknown (no agent pid: pass --agent-pid)");
                }
            }
            if let Some(ecr) = &self.ecr {
                ecr.text(
                    &mut o,
                    ms(self.stats_of("ecr").median),
                    ms(self.stats_of("helper").median),
                    ms(self.stats_of("floor").median),
                );
            }
            if let Some(note) = &self.ecr_note {
                let _ = writeln!(o, "\n{note}");
            }
            if let Some(load) = &self.load {
                load.text(&mut o);
            }
            if let Some(note) = &self.load_note {
                let _ = writeln!(o, "\n{note}");
            }
            o
        }

        fn json(&self) -> Value {
            let kinds: Vec<Value> = self
                .subjects
                .iter()
                .map(|s| {
                    let st = stats(&s.samples);
                    json!({
                        "kind": s.name,
                        "what": s.what,
                        "runs": s.samples.len(),
                        "failures": s.failures,
                        "median_ms": ms(st.median),
                        "p95_ms": ms(st.p95),
                        "p99_ms": ms(st.p99),
                        "min_ms": ms(st.min),
                        "max_ms": ms(st.max),
                        "peak_rss_bytes": s.exact_peak,
                        "rusage_maxrss_bytes": st.max_rss,
                    })
                })
                .collect();
            let ratio = self.ratio("floor");
            let (helper_rss, how) = self.helper_rss();
            let agent_rss = self.agent_after.map(|m| m.rss);
            json!({
                "runs": self.cfg.runs,
                "warmup": self.cfg.warmup,
                "server": self.cfg.server,
                "elapsed_s": self.elapsed.as_secs_f64(),
                "loadavg_before": self.load_before,
                "loadavg_after": self.load_after,
                "kinds": kinds,
                "ratio_helper_to_floor": ratio,
                "ratio_helper_to_cat": self.ratio("cat"),
                "helper_size_bytes": self.helper_size,
                "helper_stripped": self.helper_stripped,
                "helper_peak_rss_bytes": helper_rss,
                "helper_peak_rss_source": how,
                "rss_runs": self.cfg.rss_runs,
                "rss_note": self.rss_note,
                "agent_pid": self.agent_pid,
                "agent_rss_before_bytes": self.agent_before.map(|m| m.rss),
                "agent_rss_after_bytes": agent_rss,
                "agent_peak_rss_bytes": self.agent_after.map(|m| m.peak),
                "ecr": self.ecr.as_ref().map(|e| e.json(
                    ms(self.stats_of("ecr").median),
                    ms(self.stats_of("helper").median),
                )),
                "ecr_note": self.ecr_note,
                "load": self.load.as_ref().map(crate::load::LoadReport::json),
                "load_note": self.load_note,
                "targets": {
                    "median_ratio": {"limit": TARGET_RATIO, "value": ratio, "pass": ratio <= TARGET_RATIO},
                    "helper_size_bytes": {"limit": TARGET_HELPER_SIZE, "value": self.helper_size, "pass": self.helper_size < TARGET_HELPER_SIZE},
                    "helper_peak_rss_bytes": {"limit": TARGET_HELPER_RSS, "value": helper_rss, "pass": helper_rss < TARGET_HELPER_RSS},
                    "agent_rss_bytes": {"limit": TARGET_AGENT_RSS, "value": agent_rss, "pass": agent_rss.map(|r| r < TARGET_AGENT_RSS)},
                },
            })
        }
    }
}
