//! The agents of a [`TestEnv`]: waiting for one, killing and stopping it,
//! starting one in the foreground, and finding every process the env started
//! by its marker.

use std::fs;
use std::process::Stdio;
use std::thread;
use std::time::Duration;

use crate::{MARKER_ENV, REGENT, TestEnv, is_alive, is_root, kill, spawn_retrying, wait_until};

impl TestEnv {
    /// Waits up to `timeout` for an agent to answer; its pid.
    pub fn wait_agent_pid(&self, timeout: Duration) -> Option<u32> {
        let mut pid = None;
        wait_until(timeout, || {
            pid = self.agent_pid();
            pid.is_some()
        });
        pid
    }

    /// Processes (other than this test) that carry this env's marker.
    pub fn marked_processes(&self) -> Vec<u32> {
        let needle = format!("{MARKER_ENV}={}\0", self.id).into_bytes();
        let me = std::process::id();
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir("/proc") else {
            return out;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == me || !is_alive(pid) {
                continue;
            }
            let Ok(environ) = fs::read(e.path().join("environ")) else {
                continue;
            };
            if environ
                .windows(needle.len())
                .any(|w| w == needle.as_slice())
            {
                out.push(pid);
            }
        }
        out
    }

    /// Live `regent agent` processes started for this env. Needs permission
    /// to read their environment (root, or agents that stay dumpable);
    /// `None` when that cannot be known.
    pub fn agent_processes(&self) -> Option<Vec<u32>> {
        if !can_read_foreign_environ() {
            return None;
        }
        Some(
            self.marked_processes()
                .into_iter()
                .filter(|pid| {
                    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                    args.len() >= 2 && args[0].ends_with(REGENT.as_bytes()) && args[1] == b"agent"
                })
                .collect(),
        )
    }

    /// SIGKILLs the running agent and waits until it is gone; its pid.
    pub fn kill_agent(&self) -> u32 {
        let pid = self
            .agent_pid()
            .unwrap_or_else(|| panic!("no agent to kill\n{}", self.diagnostics()));
        kill(pid, libc::SIGKILL);
        assert!(
            wait_until(Duration::from_secs(10), || !is_alive(pid)),
            "agent {pid} survived SIGKILL"
        );
        pid
    }

    /// `regent stop`, then waits until the agent is gone.
    pub fn stop_agent(&self) {
        let pid = self.agent_pid();
        let out = self.regent(&["stop"]);
        assert!(
            out.success(),
            "`regent stop` failed\n{out}\n{}",
            self.diagnostics()
        );
        if let Some(pid) = pid {
            assert!(
                wait_until(Duration::from_secs(10), || !is_alive(pid)),
                "agent {pid} still runs 10 s after `regent stop`\n{out}\n{}",
                self.diagnostics()
            );
        }
        assert!(
            wait_until(Duration::from_secs(10), || self.agent_pid().is_none()),
            "an agent still answers 10 s after `regent stop`\n{}",
            self.diagnostics()
        );
    }

    /// Starts `regent agent --foreground` with stderr captured to a file, and
    /// waits until it answers. Its pid.
    pub fn start_foreground_agent(&self) -> u32 {
        let mut fg = self.foreground.lock().unwrap();
        let n = fg.len();
        let stderr = fs::File::create(self.foreground_stderr_path(n)).expect("stderr file");
        let stdout = fs::File::create(self.root.join(format!("foreground-{n}.stdout")))
            .expect("stdout file");
        let child = spawn_retrying(
            self.command(&self.bins.regent)
                .args(["agent", "--foreground"])
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr),
        )
        .expect("spawn regent agent --foreground");
        let pid = child.id();
        fg.push(pid);
        drop(fg);
        let mut child = child;
        thread::spawn(move || {
            let _ = child.wait();
        });
        let answered = self.wait_agent_pid(Duration::from_secs(15));
        assert_eq!(
            answered,
            Some(pid),
            "`regent agent --foreground` (pid {pid}) did not answer on {} within 15 s\n{}",
            self.socket.display(),
            self.diagnostics()
        );
        pid
    }

    pub(crate) fn marked_agents(&self) -> Vec<u32> {
        self.agent_processes().unwrap_or_default()
    }
}

fn can_read_foreign_environ() -> bool {
    // Non-dumpable processes hide /proc/<pid>/environ from everyone but root.
    is_root()
}
