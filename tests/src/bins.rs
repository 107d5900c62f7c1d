//! The binaries under test: where they are (next to the test executable, in
//! `REGENT_BIN_DIR`, or the helper as shipped with
//! `REGENT_TEST_HELPER_PROFILE=helper`), and a check that they are not older
//! than their sources.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::is_alive;

/// The helper's file name.
pub const HELPER: &str = "docker-credential-regent";
/// The agent / CLI file name.
pub const REGENT: &str = "regent";

/// The binaries under test.
#[derive(Debug, Clone)]
pub struct Bins {
    pub helper: PathBuf,
    pub regent: PathBuf,
}

/// Chooses the build of the helper the tests run when `REGENT_BIN_DIR` is
/// not set: `helper` is the helper as shipped (scripts/build-helper: static
/// for musl on Linux, fat LTO, abort on panic), which scripts/test runs;
/// `debug` (the default of a plain `cargo test`) the one next to the test
/// executable.
pub const HELPER_PROFILE_ENV: &str = "REGENT_TEST_HELPER_PROFILE";

impl Bins {
    /// `REGENT_BIN_DIR`, else the cargo target dir of this test executable,
    /// with the helper of the profile [`HELPER_PROFILE_ENV`] chooses.
    pub fn locate() -> Bins {
        let (dir, explicit) = match std::env::var_os("REGENT_BIN_DIR").filter(|d| !d.is_empty()) {
            Some(d) => (PathBuf::from(d), true),
            None => (default_bin_dir(), false),
        };
        let mut bins = Bins {
            helper: dir.join(HELPER),
            regent: dir.join(REGENT),
        };
        if !explicit {
            match std::env::var(HELPER_PROFILE_ENV).as_deref().map(str::trim) {
                Err(_) | Ok("" | "debug") => {}
                Ok("helper") => bins.helper = shipped_helper(&dir, &bins.regent),
                Ok(other) => panic!("{HELPER_PROFILE_ENV}={other:?}: expected helper or debug"),
            }
        }
        for b in [&bins.helper, &bins.regent] {
            if !b.is_file() {
                panic!(
                    "{} does not exist: run `cargo build --workspace --bins` first \
                     (or point REGENT_BIN_DIR at the directory holding {HELPER} and {REGENT})",
                    b.display()
                );
            }
        }
        if !explicit && std::env::var_os("REGENT_TEST_ALLOW_STALE").is_none() {
            let build = "cargo build --workspace --bins";
            check_fresh(&bins.helper, &["helper", "shared"], build);
            check_fresh(&bins.regent, &["agent", "shared"], build);
        }
        bins
    }
}

/// The shipped helper (target/shipped/docker-credential-regent, which
/// scripts/build-helper builds: static for musl on Linux), copied once
/// per test process into a directory of its own next to a hard link of the
/// agent at `regent`: the helper starts the `regent` next to its own
/// executable, as in an installation, and must not find another one on PATH.
fn shipped_helper(bin_dir: &Path, regent: &Path) -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let target = bin_dir.parent().expect("target/<profile> has a parent");
        let built = target.join("shipped").join(HELPER);
        if !built.is_file() {
            panic!(
                "{} does not exist: run `scripts/build-helper` \
                 (or unset {HELPER_PROFILE_ENV} to test the debug helper)",
                built.display()
            );
        }
        if std::env::var_os("REGENT_TEST_ALLOW_STALE").is_none() {
            check_fresh(&built, &["helper", "shared"], "scripts/build-helper");
        }
        let base = target.join("tmp");
        // Directories of test processes that are gone.
        if let Ok(rd) = fs::read_dir(&base) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name
                    .strip_prefix("shipped-bins-")
                    .and_then(|p| p.parse::<u32>().ok())
                    && !is_alive(pid)
                {
                    let _ = fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = base.join(format!("shipped-bins-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the shipped-bins directory");
        fs::copy(&built, dir.join(HELPER)).expect("copy the shipped helper");
        if fs::hard_link(regent, dir.join(REGENT)).is_err() {
            fs::copy(regent, dir.join(REGENT)).expect("copy regent next to the shipped helper");
        }
        dir
    });
    dir.join(HELPER)
}

fn default_bin_dir() -> PathBuf {
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe
        .parent()
        .expect("test executable has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Fails when a binary is older than the sources it is built from: a run
/// against stale binaries tests yesterday's code.
fn check_fresh(bin: &Path, crates: &[&str], build: &str) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let Ok(built) = fs::metadata(bin).and_then(|m| m.modified()) else {
        return;
    };
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    for c in crates {
        newest_mtime(&root.join(c).join("src"), &mut newest);
        newest_mtime(&root.join(c).join("Cargo.toml"), &mut newest);
    }
    if let Some((t, path)) = newest
        && t > built
    {
        panic!(
            "{} is older than {}: run `{build}` first \
             (set REGENT_TEST_ALLOW_STALE=1 to test it anyway)",
            bin.display(),
            path.display()
        );
    }
}

fn newest_mtime(path: &Path, newest: &mut Option<(SystemTime, PathBuf)>) {
    // Another OS's side of a platform seam (`sys/windows.rs` here) is not
    // built on this one, so cargo never rebuilds for it.
    let foreign = if cfg!(windows) {
        "unix.rs"
    } else {
        "windows.rs"
    };
    if path.file_name().is_some_and(|n| n == foreign) {
        return;
    }
    let Ok(meta) = fs::metadata(path) else {
        return;
    };
    if meta.is_dir() {
        if let Ok(rd) = fs::read_dir(path) {
            for e in rd.flatten() {
                newest_mtime(&e.path(), newest);
            }
        }
    } else if let Ok(t) = meta.modified()
        && newest.as_ref().is_none_or(|(n, _)| t > *n)
    {
        *newest = Some((t, path.to_path_buf()));
    }
}
