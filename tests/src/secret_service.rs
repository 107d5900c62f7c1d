//! A private Secret Service for one test: a D-Bus session bus with an
//! unlocked throw-away gnome-keyring (scripts/with-secret-service), so that
//! killing, freezing or locking it touches nothing else.
//!
//! Dropping a [`SecretService`] kills all of it, also when the test panics
//! half-way through starting it: the script's process group (dbus-run-session,
//! its bus, the placeholder command) and every process whose environment names
//! the bus (the keyring daemon, which daemonizes out of the group, and any
//! service the bus activated later).

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{kill, skip, which};

/// A private session bus with an unlocked gnome-keyring, until dropped.
pub struct SecretService {
    child: Child,
    /// `DBUS_SESSION_BUS_ADDRESS` of the bus.
    pub address: String,
    daemon: Option<u32>,
}

impl SecretService {
    /// Brings one up, or reports a [`skip`] of `test` and returns `None`
    /// when the tools are missing or it does not come up.
    pub fn start(test: &str) -> Option<SecretService> {
        for tool in ["dbus-run-session", "gnome-keyring-daemon", "dbus-send"] {
            if which(tool).is_none() {
                skip(
                    test,
                    &format!(
                        "{tool} is not installed (Debian packages gnome-keyring dbus-daemon dbus-bin)"
                    ),
                );
                return None;
            }
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/with-secret-service");
        let mut child = Command::new(script)
            .args([
                "sh",
                "-c",
                "echo \"$DBUS_SESSION_BUS_ADDRESS\"; exec sleep 600",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .expect("run scripts/with-secret-service");
        let stdout = child.stdout.take().expect("piped stdout");
        // From here on, a panic drops this and so kills what was started.
        let mut ss = SecretService {
            child,
            address: String::new(),
            daemon: None,
        };
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        ss.address = line.trim().to_owned();
        if ss.address.is_empty() {
            skip(
                test,
                "scripts/with-secret-service did not bring up a Secret Service (see its stderr)",
            );
            return None;
        }
        let daemon = ss.find_keyring_daemon().unwrap_or_else(|| {
            panic!(
                "no gnome-keyring-daemon of the bus {} within 10 s",
                ss.address
            )
        });
        ss.daemon = Some(daemon);
        Some(ss)
    }

    /// The pid of the bus's gnome-keyring-daemon.
    pub fn daemon(&self) -> u32 {
        self.daemon.expect("started")
    }

    /// The gnome-keyring-daemon whose environment names the bus.
    fn find_keyring_daemon(&self) -> Option<u32> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(pid) = self.processes_on_bus().into_iter().find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim().starts_with("gnome-keyring"))
            }) {
                return Some(pid);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Every live process (but this one) whose environment names the bus.
    fn processes_on_bus(&self) -> Vec<u32> {
        let wanted = format!("DBUS_SESSION_BUS_ADDRESS={}", self.address).into_bytes();
        let me = std::process::id();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| *pid != me && crate::is_alive(*pid))
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .unwrap_or_default()
                    .split(|b| *b == 0)
                    .any(|var| var == wanted.as_slice())
            })
            .collect()
    }
}

impl Drop for SecretService {
    fn drop(&mut self) {
        if let Some(daemon) = self.daemon {
            // A frozen daemon cannot die of SIGKILL until it is continued.
            kill(daemon, libc::SIGCONT);
            kill(daemon, libc::SIGKILL);
        }
        // The whole group: dbus-run-session, its bus, sleep.
        // SAFETY: kill(2) on the process group this struct started.
        unsafe {
            libc::kill(-(self.child.id() as i32), libc::SIGKILL);
        }
        let _ = self.child.wait();
        if !self.address.is_empty() {
            for pid in self.processes_on_bus() {
                kill(pid, libc::SIGCONT);
                kill(pid, libc::SIGKILL);
            }
        }
    }
}
