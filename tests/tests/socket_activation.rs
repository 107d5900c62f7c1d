//! Socket activation for real: `systemd-socket-activate` (systemd's own
//! tool for running a socket-activated service by hand) binds the agent's
//! socket and starts `regent agent --foreground` on the first connection,
//! handing it the socket through `LISTEN_FDS`, as `regent.socket` does under
//! the systemd user manager. The agent says `READY=1` on `NOTIFY_SOCKET`,
//! serves the helper, stops on `regent stop`, and a later `get` starts an
//! agent of its own on the same path.

use std::fs::File;
use std::os::unix::net::UnixDatagram;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use regent_tests::{TestEnv, random_secret, skip, wait_until, which};

/// A hang bound for the activated agent to say ready.
const READY_BOUND: Duration = Duration::from_secs(20);

/// `systemd-socket-activate -l <socket> regent agent --foreground`, with the
/// env's variables (it passes on only those named with `-E`) and
/// `NOTIFY_SOCKET`.
fn activate(env: &TestEnv, tool: &std::path::Path, notify: &std::path::Path) -> Child {
    let mut cmd = env.command(tool);
    cmd.arg("-l").arg(&env.socket);
    for (name, value) in env.env() {
        if value.is_some() {
            cmd.arg("-E").arg(name);
        }
    }
    // What the agent inherits from the caller rather than from the env:
    // the keyring store's session bus is the caller's.
    for name in ["PATH", "HOME", "DBUS_SESSION_BUS_ADDRESS"] {
        if std::env::var_os(name).is_some() {
            cmd.arg("-E").arg(name);
        }
    }
    let mut notify_var = std::ffi::OsString::from("NOTIFY_SOCKET=");
    notify_var.push(notify);
    cmd.arg("-E").arg(notify_var);
    cmd.arg(&env.bins.regent).args(["agent", "--foreground"]);
    let stderr = File::create(env.root.join("activated.stderr")).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("run systemd-socket-activate")
}

/// The activator (then the agent it became), reaped by a thread of its own
/// as soon as it exits, so `regent stop`, which waits for the pid to
/// vanish, sees no zombie; killed on drop if still running.
struct Reaped {
    pid: u32,
    exited: mpsc::Receiver<std::process::ExitStatus>,
}

impl Reaped {
    fn new(mut child: Child) -> Reaped {
        let pid = child.id();
        let (tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait() {
                let _ = tx.send(status);
            }
        });
        Reaped { pid, exited }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if regent_tests::is_alive(self.pid) {
            regent_tests::kill(self.pid, libc::SIGKILL);
        }
    }
}

#[test]
fn the_agent_takes_the_socket_systemd_hands_it() {
    let Some(tool) = which("systemd-socket-activate") else {
        skip(
            "the_agent_takes_the_socket_systemd_hands_it",
            "systemd-socket-activate is not installed (Debian package systemd)",
        );
        return;
    };
    let env = TestEnv::new();
    let notify_path = env.root.join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let activator = Reaped::new(activate(&env, &tool, &notify_path));
    let pid = activator.pid;
    assert!(
        wait_until(Duration::from_secs(10), || env.socket.exists()),
        "systemd-socket-activate did not bind {}",
        env.socket.display()
    );
    let mut buf = [0u8; 512];
    assert!(
        notify.recv(&mut buf).is_err(),
        "nothing runs before the first connection"
    );

    // The first connection starts the agent, which execs in place of the
    // activator: the same pid.
    let secret = random_secret(24);
    env.store_ok("activated.example.test", "ci", &secret);
    let mut ready = String::new();
    wait_until(READY_BOUND, || {
        if let Ok(n) = notify.recv(&mut buf) {
            ready.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        ready.contains("READY=1")
    });
    let stderr = || std::fs::read_to_string(env.root.join("activated.stderr")).unwrap_or_default();
    assert!(
        ready.lines().any(|l| l == "READY=1"),
        "no READY=1 on NOTIFY_SOCKET (got {ready:?})\n{}",
        stderr()
    );
    assert_eq!(
        env.agent_pid(),
        Some(pid),
        "the activated agent serves\n{}",
        stderr()
    );
    assert!(
        stderr().contains("activated=true"),
        "the agent should say it was handed its socket\n{}",
        stderr()
    );
    assert_eq!(env.get_ok("activated.example.test").secret, secret);
    assert_eq!(env.status_json().socket, env.socket.display().to_string());

    // `regent stop` ends it; a new `get` starts an agent of its own on the
    // path systemd bound (the file stays: nobody listens on it any more).
    let out = env.run(
        env.command(&env.bins.regent).arg("stop"),
        regent_tests::Input::Bytes(b""),
        regent_tests::DEFAULT_TIMEOUT,
    );
    assert!(out.success(), "regent stop\n{out}");
    let status = activator
        .exited
        .recv_timeout(Duration::from_secs(10))
        .expect("the activated agent exited");
    assert!(
        status.success(),
        "the activated agent exits cleanly: {status}\n{}",
        stderr()
    );
    let out = env.helper(&["get"], "activated.example.test");
    if env.store.is_persistent() {
        assert_eq!(env.parse_get(&out).secret, secret, "kept by the store");
    } else {
        env.assert_not_found(&out);
    }
    let second = env.agent_pid().expect("the helper started an agent");
    assert_ne!(second, pid);
    env.store_ok("after.example.test", "ci", &secret);
    assert_eq!(env.get_ok("after.example.test").secret, secret);
}

#[test]
fn an_activated_agent_follows_its_replaced_program_on_the_same_socket() {
    let Some(tool) = which("systemd-socket-activate") else {
        skip(
            "an_activated_agent_follows_its_replaced_program_on_the_same_socket",
            "systemd-socket-activate is not installed (Debian package systemd)",
        );
        return;
    };
    let mut env = TestEnv::new();
    // An installed copy, replaced as a package upgrade replaces it.
    let bin = env.root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let regent = bin.join(regent_tests::REGENT);
    std::fs::copy(&env.bins.regent, &regent).unwrap();
    env.bins.regent = regent.clone();
    let notify_path = env.root.join("notify.sock");
    let _notify = UnixDatagram::bind(&notify_path).unwrap();
    let activator = Reaped::new(activate(&env, &tool, &notify_path));
    let pid = activator.pid;
    assert!(wait_until(Duration::from_secs(10), || env.socket.exists()));
    let secret = random_secret(24);
    env.store_ok("activated-upgrade.example.test", "ci", &secret);
    assert_eq!(env.agent_pid(), Some(pid));

    let new = regent.with_extension("new");
    std::fs::copy(&regent, &new).unwrap();
    std::fs::rename(&new, &regent).unwrap();
    let exe = || {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    let stderr = || std::fs::read_to_string(env.root.join("activated.stderr")).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(30), || exe()
            == regent.display().to_string()),
        "no handover: {}\n{}",
        exe(),
        stderr()
    );
    assert_eq!(env.agent_pid(), Some(pid));
    assert_eq!(env.get_ok("activated-upgrade.example.test").secret, secret);
    assert_eq!(env.status_json().socket, env.socket.display().to_string());
    assert_eq!(
        stderr().matches("activated=true").count(),
        2,
        "both programs serve systemd's socket\n{}",
        stderr()
    );
    let out = env.run(
        env.command(&env.bins.regent).arg("stop"),
        regent_tests::Input::Bytes(b""),
        regent_tests::DEFAULT_TIMEOUT,
    );
    assert!(out.success(), "regent stop\n{out}");
    assert!(
        activator
            .exited
            .recv_timeout(Duration::from_secs(10))
            .is_ok()
    );
}
