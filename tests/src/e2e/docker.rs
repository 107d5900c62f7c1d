//! A private dockerd for one test (one at a time per test binary), the
//! docker CLI against it, and `$DOCKER_CONFIG/config.json`.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use super::registry::parse_http;
use super::{DOCKER, DOCKERD, DOCKERD_START, E2e, Registry, USER, program, require, skip, tail};
use crate::{Outcome, is_alive, kill, wait_until};

impl E2e {
    /// `$DOCKER_CONFIG/config.json`.
    pub fn docker_config_json(&self) -> serde_json::Value {
        let path = self.docker_config.join("config.json");
        let text = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_slice(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e})", path.display()))
    }

    /// Starts a private dockerd that trusts `reg` over HTTP (one at a time in
    /// this test binary). Skips (returns `None`) when it cannot start.
    pub fn dockerd(&self, reg: &Registry) -> Option<Dockerd> {
        if let Err(why) = require(&[DOCKERD, DOCKER]) {
            skip(self.name, &why);
            return None;
        }
        match Dockerd::start(&self.dir.join("dockerd"), &reg.addr) {
            Ok(d) => Some(d),
            Err(why) => {
                skip(self.name, &format!("dockerd did not start: {why}"));
                None
            }
        }
    }

    /// The docker CLI: `REGENT_E2E_DOCKER` when set (e.g. a newer client in
    /// /usr/local/bin), else Debian's /usr/bin/docker (the daemon's own
    /// version) when installed, else `docker` on PATH.
    pub fn docker_cli() -> PathBuf {
        if let Some(cli) = std::env::var_os("REGENT_E2E_DOCKER").filter(|c| !c.is_empty()) {
            return PathBuf::from(cli);
        }
        program(&["/usr/bin/docker"], "docker").unwrap_or_else(|| PathBuf::from("docker"))
    }

    /// `docker login -u USER --password-stdin <addr>` against `daemon`.
    pub fn docker_login(&self, daemon: &Dockerd, addr: &str, password: &str) -> Outcome {
        let stdin = format!("{password}\n");
        self.docker(
            daemon,
            &["login", "-u", USER, "--password-stdin", addr],
            Some(stdin.as_bytes()),
        )
    }

    /// `docker <args>` against `daemon`.
    pub fn docker(&self, daemon: &Dockerd, args: &[&str], input: Option<&[u8]>) -> Outcome {
        self.run(
            self.cmd(Self::docker_cli())
                .env("DOCKER_HOST", &daemon.host)
                .args(args),
            input,
        )
    }
}

/// Where dockerd 20.10 puts plugin sockets whatever its exec root (hard-coded
/// because of the unix socket path length limit).
const RUN_DOCKER: &str = "/run/docker";

/// One private dockerd at a time per test binary: several would share the
/// machine's 2 cores and memory for no gain.
static DOCKERD_LOCK: Mutex<()> = Mutex::new(());

/// A private Docker engine (`dockerd`) with its own unix socket, data root,
/// exec root and pid file, no iptables, no bridge, the vfs driver. Stopped by
/// pid on drop (SIGTERM, then SIGKILL for it and its containerd).
pub struct Dockerd {
    /// `unix:///...`: the `DOCKER_HOST` for the CLI.
    pub host: String,
    pub socket: PathBuf,
    pub log: PathBuf,
    pub dir: PathBuf,
    exec_root: PathBuf,
    run_docker_existed: bool,
    child: Child,
    _serial: MutexGuard<'static, ()>,
}

impl Dockerd {
    pub fn start(dir: &Path, insecure_registry: &str) -> Result<Dockerd, String> {
        let serial = DOCKERD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let socket = dir.join("docker.sock");
        let exec_root = dir.join("x");
        // dockerd 20.10 writes its libtrust key to /etc/docker/key.json unless
        // told otherwise, and only in the config file.
        let config = dir.join("daemon.json");
        let daemon_json = serde_json::json!({"deprecated-key-path": dir.join("key.json")});
        fs::write(&config, daemon_json.to_string()).map_err(|e| e.to_string())?;
        let run_docker_existed = Path::new(RUN_DOCKER).exists();
        let log = dir.join("dockerd.log");
        let logf = fs::File::create(&log).map_err(|e| e.to_string())?;
        let dockerd = program(&["/usr/sbin/dockerd", "/usr/bin/dockerd"], "dockerd")
            .ok_or("dockerd not found")?;
        let mut cmd = Command::new(&dockerd);
        cmd.arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("--config-file")
            .arg(&config)
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-forward=false",
                "--ip-masq=false",
                "--bridge=none",
                "--userland-proxy=false",
                "--storage-driver=vfs",
                "--log-level=info",
                "--insecure-registry",
                insecure_registry,
            ])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", dir)
            .env("TMPDIR", dir)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().map_err(|e| e.to_string())?)
            .stderr(logf);
        let child = cmd
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", dockerd.display()))?;
        let mut d = Dockerd {
            host: format!("unix://{}", socket.display()),
            socket,
            log,
            dir: dir.to_path_buf(),
            exec_root,
            run_docker_existed,
            child,
            _serial: serial,
        };
        let deadline = Instant::now() + DOCKERD_START;
        loop {
            if let Ok(Some(status)) = d.child.try_wait() {
                return Err(format!(
                    "dockerd exited with {status}; the tail of its log:\n{}",
                    tail(&d.log, 4000)
                ));
            }
            if d.ping() {
                return Ok(d);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "dockerd did not answer /_ping on {} within {DOCKERD_START:?}; the tail of its log:\n{}",
                    d.socket.display(),
                    tail(&d.log, 4000)
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// True when the engine answers `GET /_ping` with 200.
    pub fn ping(&self) -> bool {
        let Ok(mut s) = UnixStream::connect(&self.socket) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        if s.write_all(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        matches!(parse_http(&resp), Ok((200, _)))
    }

    fn containerd_pid(&self) -> Option<u32> {
        fs::read_to_string(self.exec_root.join("containerd").join("containerd.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let containerd = self.containerd_pid();
        kill(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        if !exited {
            eprintln!(
                "dockerd (pid {}) ignored SIGTERM for 20 s: SIGKILL",
                self.child.id()
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(pid) = containerd
            && is_alive(pid)
            && !wait_until(Duration::from_secs(10), || !is_alive(pid))
        {
            kill(pid, libc::SIGKILL);
            wait_until(Duration::from_secs(5), || !is_alive(pid));
        }
        unmount_under(&self.dir);
        if !self.run_docker_existed {
            // Only if empty: remove_dir refuses anything else.
            let _ = fs::remove_dir(Path::new(RUN_DOCKER).join("plugins"));
            let _ = fs::remove_dir(RUN_DOCKER);
        }
    }
}

/// Lazily unmounts whatever is still mounted under `dir` (a killed dockerd
/// leaves its data root bind mount behind), deepest first.
pub fn unmount_under(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.to_string_lossy().into_owned();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p == &prefix || p.starts_with(&format!("{prefix}/")))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let Ok(c) = std::ffi::CString::new(p) else {
            continue;
        };
        // SAFETY: a valid NUL-terminated path; umount2 has no other preconditions.
        unsafe {
            libc::umount2(c.as_ptr(), libc::MNT_DETACH);
        }
    }
}
