//! Skips that are counted: a test that cannot run here says so loudly, is
//! listed by scripts/test, and fails in strict mode (CI).

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::thread;

/// True when a skip must fail the test: `REGENT_TEST_STRICT=1`, or, when
/// that is not set, `CI=true` (or the older `REGENT_E2E_STRICT=1`).
/// `REGENT_TEST_STRICT=0` turns it off. scripts/test sets it explicitly.
pub fn strict() -> bool {
    let var = |name: &str| std::env::var(name).map(|v| v.trim().to_ascii_lowercase());
    match var("REGENT_TEST_STRICT").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => {
            matches!(var("CI").as_deref(), Ok("true" | "1"))
                || var("REGENT_E2E_STRICT").as_deref() == Ok("1")
        }
    }
}

/// The name of the running test: libtest runs each test on a thread named
/// after it.
pub fn current_test() -> String {
    thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_owned()
}

/// Reports that `test` (or one check of it) did not run here, and why.
///
/// Every skip is counted: the line `SKIP: <test>: <why>` goes straight to
/// fd 2 (past libtest's capture, so a normal run shows it), to stdout, and
/// is appended to the file named by `REGENT_TEST_SKIP_LOG` (or the older
/// `REGENT_E2E_SKIP_LOG`), from which scripts/test lists the skips of each
/// phase. In [`strict`] mode the skip then fails the test.
///
/// The caller returns (or leaves out the check) after a non-strict skip.
/// Something that does not apply at all (a crash test on the memory store)
/// is not a skip: see [`not_applicable`].
pub fn skip(test: &str, why: &str) {
    let line = format!("SKIP: {test}: {why}");
    let first = line.lines().next().unwrap_or_default().to_owned();
    let _ = io::stderr().write_all(format!("\n{line}\n\n").as_bytes());
    println!("{line}");
    let log = ["REGENT_TEST_SKIP_LOG", "REGENT_E2E_SKIP_LOG"]
        .into_iter()
        .find_map(|v| std::env::var_os(v).filter(|p| !p.is_empty()));
    if let Some(path) = log {
        // One write of one line with O_APPEND: parallel tests do not interleave.
        match fs::OpenOptions::new().create(true).append(true).open(&path) {
            Ok(mut f) => {
                let _ = f.write_all(format!("{first}\n").as_bytes());
            }
            Err(e) => panic!(
                "cannot append to the skip log {}: {e}; the skip of {test} would go uncounted",
                Path::new(&path).display()
            ),
        }
    }
    if strict() {
        panic!(
            "strict mode (REGENT_TEST_STRICT=1 or CI=true): a skip is a failure: {line}\n\
             (REGENT_TEST_STRICT=0 allows skips)"
        );
    }
}

/// Notes that `test` checks nothing on this configuration by design (it is
/// about a store other than the one under test, which runs in its own
/// scripts/test phase). Not counted as a skip.
pub fn not_applicable(test: &str, why: &str) {
    eprintln!("not applicable here: {test}: {why}");
}
