//! Spawning what is timed: a program with its arguments and environment,
//! run once with its stdin filled before the spawn, timed to the return of
//! `wait4`, or traced for its exact peak RSS.

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use regent_tests::world::apply_env;

#[cfg(target_os = "linux")]
use crate::system::process_status_bytes;

/// A program to spawn: its arguments and the changes to this process's
/// environment (`None`: removed).
#[derive(Clone)]
pub struct Proc {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(OsString, Option<OsString>)>,
}

impl Proc {
    pub fn plain(program: &Path, args: &[&str]) -> Proc {
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
        apply_env(&mut cmd, &self.env);
        cmd
    }
}

#[derive(Clone, Copy)]
pub struct Sample {
    pub wall: Duration,
    /// Peak resident set size of the child, bytes.
    pub max_rss: u64,
}

/// Runs `proc` with `input` on stdin; its output (stdout and stderr piped).
pub fn run_capture(proc: &Proc, input: &[u8]) -> Result<std::process::Output, String> {
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
pub fn run_once(proc: &Proc, input: &[u8]) -> io::Result<(Sample, bool)> {
    let (sample, status) = run_status(proc, input)?;
    Ok((sample, status == Some(0)))
}

/// As [`run_once`], with the exit status (`None`: killed by a signal).
pub fn run_status(proc: &Proc, input: &[u8]) -> io::Result<(Sample, Option<i32>)> {
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

    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Ok((
        Sample {
            wall,
            max_rss: max_rss_bytes(&usage),
        },
        code,
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
pub fn exact_peak_rss(proc: &Proc, input: &[u8]) -> Result<Option<u64>, String> {
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
        format!("cannot trace a child with ptrace ({e}); only the wait4 upper bound is reported")
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
pub fn exact_peak_rss(_: &Proc, _: &[u8]) -> Result<Option<u64>, String> {
    Err(
        "the exact peak RSS needs Linux (ptrace + /proc); only the wait4 upper bound is reported"
            .into(),
    )
}

pub fn shorten(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let s = s.trim();
    match s.char_indices().nth(200) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}
