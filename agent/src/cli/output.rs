//! The commands' stdout, and how durations read on it.
//!
//! Output goes through [`outln!`]: a reader that goes away (`regent ls |
//! head -1`) silences the rest of the output, and the command still
//! finishes its work (an import is never cut short by a closed pipe) and
//! exits as it would have; any other failure to write stdout is reported at
//! the end. SIGPIPE stays ignored, so that a write to an agent that just
//! went away is an error the command reports, not a silent death.

use std::fmt;
use std::io::{self, Write};
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The first error writing stdout other than a closed pipe.
static OUT_ERROR: Mutex<Option<io::Error>> = Mutex::new(None);
/// True once a reader closed stdout: later output is dropped.
static OUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes to stdout; see the module docs for what a closed pipe does.
pub fn write_out(args: fmt::Arguments<'_>) {
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

/// A finished command's exit status: `code`, unless writing stdout failed
/// (other than by a closed pipe), which is reported, and the command fails.
pub fn finish(code: ExitCode) -> ExitCode {
    match OUT_ERROR.lock().unwrap_or_else(|p| p.into_inner()).take() {
        Some(e) => {
            let _ = writeln!(io::stderr(), "regent: cannot write the output: {e}");
            ExitCode::FAILURE
        }
        None => code,
    }
}

/// `print!` that survives a closed stdout (see the module docs).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write_out(format_args!($($arg)*))
    };
}

/// `println!` that survives a closed stdout (see the module docs).
macro_rules! outln {
    () => {
        $crate::cli::output::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use {out, outln};

/// `3d 4h`, `2h 5m`, `4m 10s`, `12s`.
pub fn human_duration(secs: u64) -> String {
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
}
