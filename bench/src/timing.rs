//! The kinds of process timed side by side, the check that each does what
//! it is timed for, and the timing itself: round-robin with the order
//! rotating every round, then the traced runs for the exact peak RSS.

use serde_json::Value;

use std::time::{Duration, Instant};

use crate::proc::{Proc, Sample, exact_peak_rss, run_capture, run_status, shorten};
use crate::progress;

/// An untimed step run before every run of a subject (the timed, warm-up,
/// verify and traced runs alike), outside the timed region.
pub type Setup = Box<dyn FnMut() -> Result<(), String>>;

/// One kind of process that gets timed.
pub struct Subject {
    pub name: &'static str,
    pub what: String,
    pub proc: Proc,
    /// What it reads on stdin.
    pub input: Vec<u8>,
    /// The exit status a run must have to count as a success (0 but for
    /// `get` of a missing server, which exits 1 by design).
    pub expect_status: i32,
    /// Run before each run, untimed: what `erase` needs to have something
    /// to erase every time.
    pub setup: Option<Setup>,
    pub samples: Vec<Sample>,
    pub failures: usize,
    /// The exact peak RSS of the program's own image (max of the traced runs), bytes.
    pub exact_peak: Option<u64>,
}

/// Checks, before timing anything, that each subject does what it is
/// timed for: above all that the helper's `get` returns the stored
/// credential and not "not found". Prints no secret.
pub fn verify(server: &str, subjects: &mut [Subject]) -> Result<(), String> {
    for s in subjects {
        s.prepare()?;
        let out = run_capture(&s.proc, &s.input)?;
        let problem = match s.name {
            "helper" => check_helper_answer(&out).map(|p| {
                format!(
                    "{p}. Is an agent running with a credential stored for {server:?}? \
                     (without --server, regent-bench sets that up)"
                )
            }),
            "cat" if out.stdout != server.as_bytes() => {
                Some("it did not echo its stdin".to_owned())
            }
            "get-missing" => check_missing_answer(&out),
            "list-100" => check_list_answer(&out, LIST_ENTRIES),
            _ if !out.status.success() => Some(format!(
                "it exited with {}; stdout: {:?}; stderr: {:?}",
                out.status,
                shorten(&out.stdout),
                shorten(&out.stderr)
            )),
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

/// "`what` exited with STATUS; stdout: ...; stderr: ...", both streams
/// shortened: only for an answer that holds no secret (a failure's one
/// error line, a `list`'s usernames).
fn exited(what: &str, out: &std::process::Output) -> String {
    format!(
        "`{what}` exited with {}; stdout: {:?}; stderr: {:?}",
        out.status,
        shorten(&out.stdout),
        shorten(&out.stderr),
    )
}

/// What is wrong with a helper `get`'s answer, if anything. Prints no secret.
pub fn check_helper_answer(out: &std::process::Output) -> Option<String> {
    if !out.status.success() {
        // A failing helper prints one error line on stdout and never a
        // secret; show both streams, shortened.
        return Some(exited("get", out));
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

/// The credentials the agent holds while `list-100` is timed.
pub const LIST_ENTRIES: usize = 100;

/// What is wrong with a helper `get` of a server the agent does not hold:
/// it must print Docker's "not found" message and exit 1.
fn check_missing_answer(out: &std::process::Output) -> Option<String> {
    let said = String::from_utf8_lossy(&out.stdout);
    if out.status.code() == Some(1) && said.trim() == regent_tests::NOT_FOUND {
        return None;
    }
    Some(format!(
        "`get` of a missing server exited with {} (expected 1 and {:?}); stdout: {:?}; stderr: {:?}",
        out.status,
        regent_tests::NOT_FOUND,
        shorten(&out.stdout),
        shorten(&out.stderr),
    ))
}

/// What is wrong with a helper `list`'s answer: it must be a JSON object of
/// `entries` server URLs. Holds no secret (usernames only), printed shortened.
fn check_list_answer(out: &std::process::Output, entries: usize) -> Option<String> {
    if !out.status.success() {
        return Some(exited("list", out));
    }
    match serde_json::from_slice::<serde_json::Map<String, Value>>(&out.stdout) {
        Ok(m) if m.len() == entries => None,
        Ok(m) => Some(format!(
            "`list` printed {} entries, expected {entries}",
            m.len()
        )),
        Err(_) => Some("`list` succeeded but did not print a JSON object".into()),
    }
}

impl Subject {
    /// `name` (described by `what`): `proc` with `input` on stdin, room for
    /// `runs` samples.
    pub fn new(name: &'static str, what: String, proc: Proc, input: &[u8], runs: usize) -> Subject {
        Subject {
            name,
            what,
            proc,
            input: input.to_vec(),
            expect_status: 0,
            setup: None,
            samples: Vec::with_capacity(runs),
            failures: 0,
            exact_peak: None,
        }
    }

    /// Expects exit status `status` instead of 0.
    pub fn expecting(mut self, status: i32) -> Subject {
        self.expect_status = status;
        self
    }

    /// Runs `setup` (untimed) before every run.
    pub fn with_setup(mut self, setup: Setup) -> Subject {
        self.setup = Some(setup);
        self
    }

    /// The untimed step before a run, if there is one.
    fn prepare(&mut self) -> Result<(), String> {
        match &mut self.setup {
            Some(setup) => setup().map_err(|e| format!("the setup of {}: {e}", self.name)),
            None => Ok(()),
        }
    }
}

/// `warmup` untimed then `runs` timed rounds; in each every subject runs
/// once, the order rotating every round so that machine noise hits them
/// alike. The wall time of it all.
pub fn round_robin(
    subjects: &mut [Subject],
    warmup: usize,
    runs: usize,
) -> Result<Duration, String> {
    progress(&format!(
        "{runs} timed runs per kind ({}) after {warmup} warm-up runs, round-robin",
        subjects
            .iter()
            .map(|s| s.name)
            .collect::<Vec<_>>()
            .join(", "),
    ));
    let n = subjects.len();
    let started = Instant::now();
    for round in 0..warmup + runs {
        for i in 0..n {
            let s = &mut subjects[(round + i) % n];
            s.prepare()?;
            let (sample, status) = run_status(&s.proc, &s.input)
                .map_err(|e| format!("cannot run {}: {e}", s.proc.program.display()))?;
            if round >= warmup {
                s.samples.push(sample);
                if status != Some(s.expect_status) {
                    s.failures += 1;
                }
            }
        }
    }
    Ok(started.elapsed())
}

/// `rss_runs` traced runs of every subject for its exact peak RSS; why there
/// is none, when tracing is not possible here.
pub fn exact_peaks(subjects: &mut [Subject], rss_runs: usize) -> Option<String> {
    for _ in 0..rss_runs {
        for s in subjects.iter_mut() {
            if let Err(e) = s.prepare() {
                return Some(e);
            }
            match exact_peak_rss(&s.proc, &s.input) {
                Ok(Some(peak)) => s.exact_peak = Some(s.exact_peak.unwrap_or(0).max(peak)),
                Ok(None) => {}
                Err(e) => {
                    for s in subjects.iter_mut() {
                        s.exact_peak = None;
                    }
                    return Some(e);
                }
            }
        }
    }
    None
}
