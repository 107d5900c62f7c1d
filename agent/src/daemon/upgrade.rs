//! The agent follows its binary: when the `regent` it was started from is
//! replaced (a package upgrade, `scripts/install`, a new build), the running
//! agent hands over to the new program in place, without a lost credential
//! or a refused connection.
//!
//! - **Noticing.** Every [`CHECK_EVERY`] the agent compares the file at the
//!   path it was executed from with the program it is running (device and
//!   inode). A new file must stay the same over two checks (a package
//!   manager renames a complete file into place, but `install(1)` writes one
//!   where the old was unlinked), and `<new> --version` must run and name
//!   regent within [`PROBE_TIMEOUT`]; a file that fails is left alone until
//!   it changes again, and the agent keeps serving as it is.
//! - **Quiescing.** The agent stops accepting connections but keeps the
//!   socket open, so a client that connects now waits in the listen queue
//!   for the new program rather than failing; sessions in progress get up
//!   to [`DRAIN_TIMEOUT`](super::server::DRAIN_TIMEOUT) to finish (a store
//!   is answered only once written).
//! - **Handing over.** The agent `exec`s the new program with the same pid,
//!   argv and environment, plus `REGENT_HANDOVER_FD`: an anonymous file
//!   (`memfd`, never on disk) holding one line of JSON (the listening
//!   socket's and the store lock's descriptors, which stay open across the
//!   exec; the socket file's identity; the store kind; when the agent
//!   started) and, for the memory store, its records. The master key given
//!   through `REGENT_MASTER_KEY_FD` is handed on the same way, through a new
//!   pipe. The new program adopts all of it: the same socket (systemd's, or
//!   the one the agent bound), the same store lock (never released, so no
//!   second agent can start in between), the same store, the same uptime.
//!   Logins in a persistent store are read back from it; tokens from
//!   sources are fetched again by the new program when next asked for.
//! - **Failing safe.** If the exec fails, the agent reopens its accept loop
//!   and serves on as the old version, and says so in its log.
//!
//! Only on Linux: elsewhere the agent could not tell the program it runs
//! (there is no `/proc/self/exe`), and does not follow its binary.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use regent_shared::Secret;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::listen::SocketId;
use super::state::AgentState;

/// The variable naming the handover descriptor.
pub const HANDOVER_FD_ENV: &str = "REGENT_HANDOVER_FD";
/// The handover format this program writes and reads.
const HANDOVER_VERSION: u32 = 1;
/// How often the binary is checked.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long `<new> --version` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds what is read from the handover descriptor.
const MAX_HANDOVER: u64 = 256 * 1024 * 1024;

/// The program file the agent runs: its path and identity.
#[derive(Debug, Clone)]
pub struct Binary {
    pub path: PathBuf,
    id: FileId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
}

/// A replacement seen once: it must look the same at the next check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Candidate {
    id: FileId,
    len: u64,
    modified: Option<SystemTime>,
}

impl Binary {
    /// The program this process runs, or `None` where that cannot be told
    /// (then the agent does not follow its binary).
    pub fn running() -> Option<Binary> {
        let path = fs::read_link("/proc/self/exe").ok()?;
        // Replaced before we looked: "<path> (deleted)" names nothing to follow.
        if !path.is_file() {
            return None;
        }
        let meta = fs::metadata("/proc/self/exe").ok()?;
        Some(Binary {
            path,
            id: FileId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
        })
    }

    /// What is at our path now, when it is another executable file.
    fn replacement(&self) -> Option<Candidate> {
        let meta = fs::metadata(&self.path).ok()?;
        let id = FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        };
        (id != self.id && meta.is_file() && meta.permissions().mode() & 0o111 != 0).then(|| {
            Candidate {
                id,
                len: meta.len(),
                modified: meta.modified().ok(),
            }
        })
    }
}

/// Watches the binary; once a replacement passes the checks of the module
/// docs, asks the server to stop accepting and hand over.
pub fn watch(state: Arc<AgentState>, binary: Binary) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen: Option<Candidate> = None;
        let mut refused: Option<Candidate> = None;
        loop {
            tick.tick().await;
            let now = binary.replacement();
            let stable = now.is_some() && now == seen;
            seen = now;
            let Some(candidate) = now.filter(|_| stable) else {
                continue;
            };
            if refused == Some(candidate) {
                continue;
            }
            match probe(&binary.path).await {
                Ok(version) => {
                    tracing::info!(
                        binary = %binary.path.display(),
                        from = env!("CARGO_PKG_VERSION"),
                        to = %version,
                        "the agent's program was replaced; handing over to the new one"
                    );
                    state.request_upgrade(binary.path.clone());
                    // Tried once: should the exec fail, only another file
                    // is tried again.
                    refused = Some(candidate);
                }
                Err(e) => {
                    tracing::warn!(
                        binary = %binary.path.display(),
                        "the agent's program was replaced by one that does not run ({e:#}); \
                         serving on as version {}",
                        env!("CARGO_PKG_VERSION")
                    );
                    refused = Some(candidate);
                }
            }
        }
    });
}

/// Runs `<path> --version`: the version it names, if it is regent's.
async fn probe(path: &Path) -> anyhow::Result<String> {
    let child = tokio::process::Command::new(path)
        .arg("--version")
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PROBE_TIMEOUT, child)
        .await
        .map_err(|_| anyhow!("`--version` did not finish within {PROBE_TIMEOUT:?}"))?
        .context("cannot run it")?;
    if !out.status.success() {
        bail!("`--version` exited with {}", out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or_default().trim();
    match line.strip_prefix("regent ") {
        Some(version) if !version.is_empty() => Ok(version.to_owned()),
        _ => bail!("`--version` printed {line:?}, not `regent <version>`"),
    }
}

/// What the old program hands to the new one.
pub struct Handover {
    /// The listening socket.
    pub listener: OwnedFd,
    /// The store lock, still held.
    pub lock: File,
    /// The socket file the agent bound (`None`: systemd's socket).
    pub socket_id: Option<SocketId>,
    /// The store kind's name (`regent status`'s `store`), and why it was
    /// chosen.
    pub store: String,
    pub store_reason: String,
    pub started_unix: i64,
    /// The version handing over.
    pub from_version: String,
    /// The memory store's records (key, record), empty for other stores.
    pub records: Vec<(String, Secret)>,
}

/// The JSON line at the head of the handover file.
#[derive(Serialize, Deserialize)]
struct Head {
    version: u32,
    listener_fd: RawFd,
    lock_fd: RawFd,
    socket_id: Option<(u64, u64)>,
    store: String,
    store_reason: String,
    started_unix: i64,
    from_version: String,
    records: usize,
}

/// What the running program hands over; the descriptors are borrowed.
pub struct Outgoing<'a> {
    pub listener: RawFd,
    pub lock: &'a File,
    pub socket_id: Option<SocketId>,
    pub store: String,
    pub store_reason: String,
    pub started_unix: i64,
    pub records: Vec<(String, Secret)>,
}

/// The handover from the program this one replaced, if it was given one
/// (`REGENT_HANDOVER_FD`); reads and closes the descriptor.
pub fn take() -> anyhow::Result<Option<Handover>> {
    let Some(fd) = std::env::var_os(HANDOVER_FD_ENV) else {
        return Ok(None);
    };
    let fd = parse_fd(&fd)?;
    // SAFETY: the descriptor was handed to this program for this purpose by
    // the one it replaced, and is used nowhere else; the File closes it.
    let file = unsafe { File::from_raw_fd(fd) };
    read(file).map(Some)
}

fn parse_fd(text: &std::ffi::OsStr) -> anyhow::Result<RawFd> {
    let fd: RawFd = text
        .to_str()
        .and_then(|s| s.parse().ok())
        .filter(|fd| *fd > 2)
        .ok_or_else(|| {
            anyhow!(
                "{HANDOVER_FD_ENV}={} is not a descriptor number above 2",
                text.to_string_lossy()
            )
        })?;
    // SAFETY: F_GETFD only inspects the descriptor table.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        bail!("{HANDOVER_FD_ENV}={fd}: descriptor {fd} is not open");
    }
    Ok(fd)
}

fn read(file: File) -> anyhow::Result<Handover> {
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_HANDOVER + 1)
        .read_to_end(&mut bytes)
        .context("cannot read the handover")?;
    if bytes.len() as u64 > MAX_HANDOVER {
        bail!("the handover is larger than {MAX_HANDOVER} bytes");
    }
    let end = bytes
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| anyhow!("the handover has no head line"))?;
    let head: Head = serde_json::from_slice(&bytes[..end]).context("the handover's head")?;
    if head.version != HANDOVER_VERSION {
        bail!(
            "the handover is of format {}, this program reads format {HANDOVER_VERSION}",
            head.version
        );
    }
    let mut rest = &bytes[end + 1..];
    let mut records = Vec::with_capacity(head.records.min(1 << 20));
    for _ in 0..head.records {
        let key = field(&mut rest)?;
        let value = field(&mut rest)?;
        let key = String::from_utf8(key.to_vec()).context("a handed-over key")?;
        let value = std::str::from_utf8(value).context("a handed-over record")?;
        records.push((key, Secret::from(value)));
    }
    if !rest.is_empty() {
        bail!("the handover has {} bytes after its records", rest.len());
    }
    let listener = adopt_fd(head.listener_fd, "listening socket")?;
    let lock = File::from(adopt_fd(head.lock_fd, "store lock")?);
    Ok(Handover {
        listener,
        lock,
        socket_id: head.socket_id.map(|(dev, ino)| SocketId::new(dev, ino)),
        store: head.store,
        store_reason: head.store_reason,
        started_unix: head.started_unix,
        from_version: head.from_version,
        records,
    })
}

/// A `u32` big-endian length and that many bytes, taken off the front.
fn field<'a>(rest: &mut &'a [u8]) -> anyhow::Result<&'a [u8]> {
    let (len, tail) = rest
        .split_first_chunk::<4>()
        .ok_or_else(|| anyhow!("the handover ends inside a record"))?;
    let len = u32::from_be_bytes(*len) as usize;
    if tail.len() < len {
        bail!("the handover ends inside a record");
    }
    let (value, tail) = tail.split_at(len);
    *rest = tail;
    Ok(value)
}

fn adopt_fd(fd: RawFd, what: &str) -> anyhow::Result<OwnedFd> {
    // SAFETY: F_GETFD only inspects the descriptor table.
    if fd <= 2 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        bail!("the handover names descriptor {fd} for the {what}, which is not open");
    }
    set_cloexec(fd, true).with_context(|| format!("the handed-over {what}"))?;
    // SAFETY: the descriptor is open and was handed over for this use only.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    let flag = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: F_SETFD only changes the descriptor's flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, flag) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Replaces this process with `program`, handing it `out`. Returns only
/// why that failed; the descriptors are then as they were.
pub fn exec(program: &Path, out: Outgoing<'_>) -> anyhow::Error {
    match prepare_exec(program, &out) {
        Ok(mut cmd) => {
            let err = cmd.exec();
            let _ = set_cloexec(out.listener, true);
            let _ = set_cloexec(out.lock.as_raw_fd(), true);
            anyhow!("cannot execute {}: {err}", program.display())
        }
        Err(e) => e,
    }
}

fn prepare_exec(program: &Path, out: &Outgoing<'_>) -> anyhow::Result<std::process::Command> {
    let file = write(out).context("cannot write the handover")?;
    let key = match crate::environ::master_key() {
        Some(key) => Some(crate::environ::key_pipe(&key)?),
        None => None,
    };
    let mut cmd = std::process::Command::new(program);
    let mut args = std::env::args_os();
    if let Some(arg0) = args.next() {
        cmd.arg0(arg0);
    }
    cmd.args(args).env_clear().envs(next_environment());
    cmd.env(HANDOVER_FD_ENV, file.as_raw_fd().to_string());
    if let Some(key) = &key {
        cmd.env(
            crate::environ::MASTER_KEY_FD_ENV,
            key.as_raw_fd().to_string(),
        );
    }
    // Inherited across the exec; everything else keeps its close-on-exec.
    for fd in [out.listener, out.lock.as_raw_fd(), file.as_raw_fd()]
        .into_iter()
        .chain(key.as_ref().map(AsRawFd::as_raw_fd))
    {
        set_cloexec(fd, false)?;
    }
    // The handover file and the key pipe live until the exec replaces us,
    // or are closed if it fails.
    std::mem::forget(file);
    std::mem::forget(key);
    Ok(cmd)
}

/// Our environment without what this handover replaces: systemd's
/// `LISTEN_*` (the socket comes in the handover) and the descriptors of
/// an earlier handover or key.
fn next_environment() -> Vec<(OsString, OsString)> {
    std::env::vars_os()
        .filter(|(name, _)| {
            let name = name.to_string_lossy();
            !(name.starts_with("LISTEN_")
                || name == HANDOVER_FD_ENV
                || name == crate::environ::MASTER_KEY_FD_ENV)
        })
        .collect()
}

/// The handover file: a memfd (anonymous memory, never on disk) holding the
/// head line and the records, rewound.
fn write(out: &Outgoing<'_>) -> anyhow::Result<File> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags.
    let fd = unsafe { libc::memfd_create(c"regent-handover".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("memfd_create");
    }
    // SAFETY: just created, owned only here.
    let mut file = unsafe { File::from_raw_fd(fd) };
    write_handover(&mut file, out)?;
    io::Seek::rewind(&mut file)?;
    Ok(file)
}

/// The head line, then each record's key and value as a `u32` big-endian
/// length and that many bytes.
fn write_handover(file: &mut impl Write, out: &Outgoing<'_>) -> anyhow::Result<()> {
    let head = Head {
        version: HANDOVER_VERSION,
        listener_fd: out.listener,
        lock_fd: out.lock.as_raw_fd(),
        socket_id: out.socket_id.map(SocketId::parts),
        store: out.store.clone(),
        store_reason: out.store_reason.clone(),
        started_unix: out.started_unix,
        from_version: env!("CARGO_PKG_VERSION").to_owned(),
        records: out.records.len(),
    };
    let mut line = serde_json::to_vec(&head)?;
    line.push(b'\n');
    file.write_all(&line)?;
    for (key, value) in &out.records {
        for bytes in [key.as_bytes(), value.expose().as_bytes()] {
            let len = u32::try_from(bytes.len()).context("a record longer than 4 GiB")?;
            file.write_all(&len.to_be_bytes())?;
            file.write_all(bytes)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Seek;

    use super::*;

    #[test]
    fn a_handover_reads_back_what_was_written() {
        use std::os::fd::IntoRawFd;
        let dir = tempfile::tempdir().unwrap();
        let listener = std::os::unix::net::UnixListener::bind(dir.path().join("s")).unwrap();
        // Duplicates, which `read` adopts (and closes), as the new program
        // adopts the inherited ones.
        let listener_fd = listener.try_clone().unwrap().into_raw_fd();
        let lock = tempfile::tempfile().unwrap();
        let lock_dup = lock.try_clone().unwrap();
        let out = Outgoing {
            listener: listener_fd,
            lock: &lock_dup,
            socket_id: Some(SocketId::new(7, 9)),
            store: "memory".into(),
            store_reason: "asked for".into(),
            started_unix: 1_700_000_000,
            records: vec![
                ("ghcr.io".into(), Secret::from("r\u{e9}cord\n1")),
                ("".into(), Secret::from("")),
            ],
        };
        let file = write(&out).unwrap();
        std::mem::forget(lock_dup);
        let back = read(file).unwrap();
        assert_eq!(back.listener.as_raw_fd(), listener_fd);
        assert_eq!(back.store, "memory");
        assert_eq!(back.started_unix, 1_700_000_000);
        assert_eq!(back.from_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(back.socket_id, Some(SocketId::new(7, 9)));
        let records: Vec<(String, String)> = back
            .records
            .iter()
            .map(|(k, v)| (k.clone(), v.expose().to_owned()))
            .collect();
        assert_eq!(
            records,
            vec![
                ("ghcr.io".to_owned(), "r\u{e9}cord\n1".to_owned()),
                (String::new(), String::new())
            ]
        );
    }

    #[test]
    fn only_a_program_that_names_itself_regent_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let script = |name: &str, body: &str| {
            let path = dir.path().join(name);
            fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            path
        };
        let good = script("good", "echo 'regent 9.9.9'");
        assert_eq!(rt.block_on(probe(&good)).unwrap(), "9.9.9");
        for (name, body, want) in [
            ("other", "echo 'other 1.0'", "not `regent <version>`"),
            ("fails", "exit 3", "exited"),
            ("empty", "true", "not `regent <version>`"),
        ] {
            let err = format!("{:#}", rt.block_on(probe(&script(name, body))).unwrap_err());
            assert!(err.contains(want), "{name}: {err}");
        }
        let err = format!(
            "{:#}",
            rt.block_on(probe(&dir.path().join("absent"))).unwrap_err()
        );
        assert!(err.contains("cannot run"), "{err}");
    }

    #[test]
    fn a_broken_handover_is_refused_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "no head line"),
            (b"{}\n", "head"),
            (
                b"{\"version\":99,\"listener_fd\":3,\"lock_fd\":4,\"socket_id\":null,\"store\":\"memory\",\"store_reason\":\"r\",\"started_unix\":0,\"from_version\":\"x\",\"records\":0}\n",
                "format 99",
            ),
            (
                b"{\"version\":1,\"listener_fd\":3,\"lock_fd\":4,\"socket_id\":null,\"store\":\"memory\",\"store_reason\":\"r\",\"started_unix\":0,\"from_version\":\"x\",\"records\":1}\n\0\0\0\x09ab",
                "ends inside a record",
            ),
            (
                b"{\"version\":1,\"listener_fd\":99999,\"lock_fd\":4,\"socket_id\":null,\"store\":\"memory\",\"store_reason\":\"r\",\"started_unix\":0,\"from_version\":\"x\",\"records\":0}\n",
                "not open",
            ),
        ];
        for (bytes, want) in cases {
            let mut f = tempfile::tempfile().unwrap();
            f.write_all(bytes).unwrap();
            f.rewind().unwrap();
            let err = format!("{:#}", read(f).err().expect("refused"));
            assert!(err.contains(want), "{err:?} should say {want:?}");
        }
        assert!(parse_fd(std::ffi::OsStr::new("2")).is_err());
        assert!(parse_fd(std::ffi::OsStr::new("x")).is_err());
    }

    #[test]
    fn a_replaced_binary_is_seen_and_an_unchanged_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("regent");
        fs::write(&path, b"#!/bin/sh\necho regent 9.9.9\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let meta = fs::metadata(&path).unwrap();
        let binary = Binary {
            path: path.clone(),
            id: FileId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
        };
        assert_eq!(binary.replacement(), None, "the same file");
        let new = dir.path().join("regent.new");
        fs::write(&new, b"#!/bin/sh\necho regent 9.9.10\n").unwrap();
        fs::set_permissions(&new, fs::Permissions::from_mode(0o644)).unwrap();
        fs::rename(&new, &path).unwrap();
        assert_eq!(binary.replacement(), None, "not executable");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(binary.replacement().is_some());
        fs::remove_file(&path).unwrap();
        assert_eq!(binary.replacement(), None, "gone");
    }
}
