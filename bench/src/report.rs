//! The report: the statistics of the timed runs, the targets with PASS or
//! MISS, as a table or as JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use crate::args::Args;
use crate::ecr::EcrReport;
use crate::load::LoadReport;
use crate::proc::Sample;
use crate::sources::{self, SourcesReport};
use crate::system::AgentMemory;
use crate::timing::{LIST_ENTRIES, Subject};

/// The helper operations reported beside the floors (no target but `get`'s):
/// the subject's name and the key under `operations` in the JSON.
const OPERATIONS: [(&str, &str); 5] = [
    ("helper", "get"),
    ("get-missing", "get_missing"),
    ("store", "store"),
    ("list-100", "list_100"),
    ("erase", "erase"),
];

/// The helper's median may be at most this multiple of the dynamic floor's
/// (an empty dynamically linked Rust binary): the static helper skips what
/// any dynamic program pays at start.
const TARGET_RATIO: f64 = 0.6;

/// ... and at most this multiple of the static floor's (an empty static
/// musl binary: the cost of exec itself).
const TARGET_STATIC_RATIO: f64 = 2.5;

/// The helper's p99 may be at most this multiple of its median.
const TARGET_TAIL: f64 = 2.0;

/// Stripped helper size, bytes (700 kB: the static helper carries musl).
const TARGET_HELPER_SIZE: u64 = 700_000;

/// Helper peak RSS, bytes (1 MB).
const TARGET_HELPER_RSS: u64 = 1_000_000;

/// Agent RSS after the run, bytes (15 MB).
const TARGET_AGENT_RSS: u64 = 15_000_000;

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
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1e6
}

pub fn mark(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

/// Everything the report shows.
pub struct Report<'a> {
    pub args: &'a Args,
    /// The server URL of the timed credential.
    pub server: &'a str,
    pub subjects: &'a [Subject],
    pub elapsed: Duration,
    pub helper_size: u64,
    pub helper_stripped: Option<bool>,
    pub agent_pid: Option<u32>,
    pub agent_before: Option<AgentMemory>,
    pub agent_after: Option<AgentMemory>,
    pub load_before: Option<String>,
    pub load_after: Option<String>,
    /// Why there is no exact peak RSS, when there is none.
    pub rss_note: Option<String>,
    /// Why `get-missing`, `store`, `list-100` and `erase` were not timed.
    pub operations_note: Option<String>,
    pub ecr: Option<EcrReport>,
    pub ecr_note: Option<String>,
    pub sources: Option<SourcesReport>,
    pub sources_note: Option<String>,
    pub load: Option<LoadReport>,
    pub load_note: Option<String>,
}

impl Report<'_> {
    fn stats_of(&self, name: &str) -> Stats {
        stats(&self.subject(name).samples)
    }

    /// The medians of the sources section's kinds that were measured.
    fn source_medians(&self) -> Vec<(&'static str, f64)> {
        sources::KINDS
            .iter()
            .filter(|k| self.subjects.iter().any(|s| s.name == **k))
            .map(|k| (*k, ms(self.stats_of(k).median)))
            .collect()
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
        self.ratio_of("helper", floor)
    }

    /// `name`'s median over `floor`'s.
    fn ratio_of(&self, name: &str, floor: &str) -> f64 {
        let median = self.stats_of(name).median.as_secs_f64();
        let floor = self.stats_of(floor).median.as_secs_f64();
        if floor > 0.0 {
            median / floor
        } else {
            f64::NAN
        }
    }

    fn has(&self, name: &str) -> bool {
        self.subjects.iter().any(|s| s.name == name)
    }

    /// The helper operations that were timed: (subject, JSON key).
    fn operations(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        OPERATIONS.into_iter().filter(|(name, _)| self.has(name))
    }

    /// The table of the helper operations against both floors.
    fn operations_text(&self, o: &mut String) {
        let _ = writeln!(
            o,
            "helper operations (median, p99, median / floor, median / static floor; targets on get only):"
        );
        let has_static = self.has("floor-static");
        for (name, key) in self.operations() {
            let st = self.stats_of(name);
            let vs_static = if has_static {
                format!("{:>6.3}x", self.ratio_of(name, "floor-static"))
            } else {
                format!("{:>7}", "-")
            };
            let _ = writeln!(
                o,
                "  {:<12} {:>6.3} ms {:>6.3} ms   {:>6.3}x floor   {vs_static} static floor   {} fails",
                key.replace('_', "-"),
                ms(st.median),
                ms(st.p99),
                self.ratio_of(name, "floor"),
                self.subject(name).failures,
            );
        }
        if let Some(note) = &self.operations_note {
            let _ = writeln!(o, "  ({note})");
        }
    }

    fn operations_json(&self) -> Value {
        let has_static = self.has("floor-static");
        let ops: serde_json::Map<String, Value> = self
            .operations()
            .map(|(name, key)| {
                let st = self.stats_of(name);
                let mut v = json!({
                    "kind": name,
                    "median_ms": ms(st.median),
                    "p99_ms": ms(st.p99),
                    "failures": self.subject(name).failures,
                    "ratio_to_floor": self.ratio_of(name, "floor"),
                    "ratio_to_floor_static": has_static.then(|| self.ratio_of(name, "floor-static")),
                });
                if name == "list-100" {
                    v["entries"] = json!(LIST_ENTRIES);
                }
                (key.to_owned(), v)
            })
            .collect();
        Value::Object(ops)
    }

    pub fn text(&self) -> String {
        let mut o = String::new();
        let cfg = self.args;
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
        let _ = writeln!(o, "server URL on stdin: {}", self.server);
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>6}  what",
            "kind", "median", "p95", "p99", "min", "max", "peak RSS", "maxrss", "fails"
        );
        for s in self.subjects {
            let st = stats(&s.samples);
            let peak = s
                .exact_peak
                .map_or_else(|| "?".to_owned(), |p| format!("{:.2} MB", mb(p)));
            let _ = writeln!(
                o,
                "{:<12} {:>6.3} ms {:>6.3} ms {:>6.3} ms {:>6.3} ms {:>6.3} ms {:>9} {:>6.2} MB {:>6}  {}",
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
        if self.subjects.iter().any(|s| s.name == "floor-static") {
            let ratio = self.ratio("floor-static");
            let _ = writeln!(
                o,
                "helper median / static floor median:              {ratio:.3}x   target <= {TARGET_STATIC_RATIO}x   {}",
                mark(ratio <= TARGET_STATIC_RATIO)
            );
        }
        let helper = self.stats_of("helper");
        let tail = helper.p99.as_secs_f64() / helper.median.as_secs_f64();
        let _ = writeln!(
            o,
            "helper p99 / helper median:                       {tail:.3}x   target <= {TARGET_TAIL}x   {}",
            mark(tail <= TARGET_TAIL)
        );
        let _ = writeln!(
            o,
            "helper median / cat median:                       {:.3}x   (for reference)",
            self.ratio("cat")
        );
        let _ = writeln!(o);
        self.operations_text(&mut o);
        let _ = writeln!(o);
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
        if let Some(report) = &self.sources {
            report.text(
                &mut o,
                &self.source_medians(),
                ms(self.stats_of("helper").median),
            );
        }
        if let Some(note) = &self.sources_note {
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

    pub fn json(&self) -> Value {
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
        let static_ratio = self
            .subjects
            .iter()
            .any(|s| s.name == "floor-static")
            .then(|| {
                let r = self.ratio("floor-static");
                json!({"limit": TARGET_STATIC_RATIO, "value": r, "pass": r <= TARGET_STATIC_RATIO})
            });
        let helper = self.stats_of("helper");
        let tail = helper.p99.as_secs_f64() / helper.median.as_secs_f64();
        json!({
            "runs": self.args.runs,
            "warmup": self.args.warmup,
            "server": self.server,
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
            "rss_runs": self.args.rss_runs,
            "rss_note": self.rss_note,
            "operations": self.operations_json(),
            "operations_note": self.operations_note,
            "agent_pid": self.agent_pid,
            "agent_rss_before_bytes": self.agent_before.map(|m| m.rss),
            "agent_rss_after_bytes": agent_rss,
            "agent_peak_rss_bytes": self.agent_after.map(|m| m.peak),
            "ecr": self.ecr.as_ref().map(|e| e.json(
                ms(self.stats_of("ecr").median),
                ms(self.stats_of("helper").median),
            )),
            "ecr_note": self.ecr_note,
            "sources": self.sources.as_ref().map(|r| r.json(
                &self.source_medians(),
                ms(self.stats_of("helper").median),
            )),
            "sources_note": self.sources_note,
            "load": self.load.as_ref().map(LoadReport::json),
            "load_note": self.load_note,
            "targets": {
                "median_ratio": {"limit": TARGET_RATIO, "value": ratio, "pass": ratio <= TARGET_RATIO},
                "median_ratio_static": static_ratio,
                "p99_over_median": {"limit": TARGET_TAIL, "value": tail, "pass": tail <= TARGET_TAIL},
                "helper_size_bytes": {"limit": TARGET_HELPER_SIZE, "value": self.helper_size, "pass": self.helper_size < TARGET_HELPER_SIZE},
                "helper_peak_rss_bytes": {"limit": TARGET_HELPER_RSS, "value": helper_rss, "pass": helper_rss < TARGET_HELPER_RSS},
                "agent_rss_bytes": {"limit": TARGET_AGENT_RSS, "value": agent_rss, "pass": agent_rss.map(|r| r < TARGET_AGENT_RSS)},
            },
        })
    }
}
