//! Where the agent logs: stderr when attached to a terminal or a supervisor,
//! else the log file (rotated once past 4 MiB), with stderr sent to
//! the null device.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::PathBuf;

use anyhow::{Context, anyhow};
use regent_shared::paths;

use crate::sys::{self, StdStream};

/// Logs to stderr when attached, else to the log file (returned).
pub fn init(to_stderr: bool, level: &str) -> anyhow::Result<Option<PathBuf>> {
    let level: tracing::Level = level.parse().map_err(|_| {
        anyhow!("unknown log level {level:?}: use error, warn, info, debug or trace")
    })?;
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false);
    if to_stderr {
        builder.with_writer(io::stderr).init();
        return Ok(None);
    }
    let path = paths::log_file();
    if let Some(dir) = path.parent() {
        sys::private_dir(fs::DirBuilder::new().recursive(true))
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if fs::metadata(&path)
        .map(|m| m.len() > 4 << 20)
        .unwrap_or(false)
    {
        let _ = fs::rename(&path, path.with_extension("log.old"));
    }
    let file = sys::private_file(OpenOptions::new().create(true).append(true))
        .open(&path)
        .with_context(|| format!("cannot open the log file {}", path.display()))?;
    builder.with_writer(std::sync::Mutex::new(file)).init();
    sys::redirect_to_null(StdStream::Err);
    Ok(Some(path))
}
