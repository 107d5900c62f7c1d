//! What the README promises about stores, configuration and the agent's
//! defences, each checked through the real binaries:
//!
//! - `auto` picks the keyring when a Secret Service answers and is unlocked,
//!   else the file store, and an existing file store stays in use;
//! - the file store keeps its master key in the keyring when there is one;
//! - `store = "..."` in config.toml, and `REGENT_CONFIG` naming another file;
//! - a store asked for by name that cannot be opened never becomes `memory`;
//! - the agent is non-dumpable;
//! - frame lengths are checked before anything is allocated;
//! - slow and idle peers are cut off by the handshake, frame and idle
//!   timeouts.
//!
//! Every test sets `DBUS_SESSION_BUS_ADDRESS` itself (a private Secret
//! Service, or a bus that does not exist), whatever bus the phase runs in.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use regent_shared::protocol::{MAX_FRAME, PROTOCOL_VERSION};
use regent_tests::secret_service::SecretService;
use regent_tests::{StoreKind, TestEnv, is_alive, is_root, kill, skip, unique_host, wait_until};

/// An env whose agent picks its store by `REGENT_STORE=store` (`None`:
/// unset), with no `REGENT_MASTER_KEY`, on the given bus.
fn env_on_bus(store: Option<&str>, bus: Bus<'_>) -> TestEnv {
    let mut env = TestEnv::with_store(StoreKind::Memory);
    env.set_env("REGENT_STORE", store);
    env.set_env("REGENT_MASTER_KEY", None::<&str>);
    let address = match bus {
        Bus::Private(ss) => ss.address.clone(),
        Bus::None => format!("unix:path={}", env.root.join("no-bus").display()),
    };
    env.set_env("DBUS_SESSION_BUS_ADDRESS", Some(address));
    env
}

#[derive(Clone, Copy)]
enum Bus<'a> {
    /// A private Secret Service.
    Private(&'a SecretService),
    /// A session bus address where nothing listens.
    None,
}

fn master_key_file(env: &TestEnv) -> PathBuf {
    env.config_home.join("regent").join("master.key")
}

fn secrets_file(env: &TestEnv) -> PathBuf {
    env.data_home.join("regent").join("secrets.enc")
}

/// Locks every collection of `ss`, as a screen lock would.
fn lock(ss: &SecretService) {
    let out = Command::new("dbus-send")
        .env("DBUS_SESSION_BUS_ADDRESS", &ss.address)
        .args([
            "--session",
            "--print-reply",
            "--dest=org.freedesktop.secrets",
            "/org/freedesktop/secrets",
            "org.freedesktop.Secret.Service.Lock",
            "array:objpath:/org/freedesktop/secrets/collection/login,/org/freedesktop/secrets/aliases/default",
        ])
        .output()
        .expect("dbus-send");
    assert!(
        out.status.success(),
        "locking the keyring failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- auto ----

#[test]
fn auto_picks_the_keyring_when_a_secret_service_answers_and_is_unlocked() {
    let Some(ss) = SecretService::start(
        "auto_picks_the_keyring_when_a_secret_service_answers_and_is_unlocked",
    ) else {
        return;
    };
    let env = env_on_bus(Some("auto"), Bus::Private(&ss));
    let host = unique_host("auto-keyring");
    env.store_ok(&host, "u", "auto-keyring-secret");
    assert_eq!(env.status_json().store, "keyring", "{}", env.diagnostics());
    assert!(
        !secrets_file(&env).exists(),
        "auto chose the keyring but wrote {}",
        secrets_file(&env).display()
    );
    env.stop_agent();
    assert_eq!(env.get_ok(&host).secret, "auto-keyring-secret");
}

#[test]
fn auto_picks_the_file_store_without_a_secret_service() {
    let env = env_on_bus(Some("auto"), Bus::None);
    let host = unique_host("auto-file");
    env.store_ok(&host, "u", "auto-file-secret");
    assert_eq!(env.status_json().store, "file", "{}", env.diagnostics());
    assert!(
        secrets_file(&env).is_file(),
        "no {}",
        secrets_file(&env).display()
    );
    // No keyring for the master key: a key file, private.
    let key = fs::metadata(master_key_file(&env)).unwrap_or_else(|e| {
        panic!(
            "{}: {e}\n{}",
            master_key_file(&env).display(),
            env.diagnostics()
        )
    });
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    env.stop_agent();
    assert_eq!(env.get_ok(&host).secret, "auto-file-secret");
}

#[test]
fn auto_picks_the_file_store_when_the_keyring_is_locked() {
    let Some(ss) = SecretService::start("auto_picks_the_file_store_when_the_keyring_is_locked")
    else {
        return;
    };
    lock(&ss);
    let env = env_on_bus(Some("auto"), Bus::Private(&ss));
    env.store_ok(&unique_host("auto-locked"), "u", "auto-locked-secret");
    assert_eq!(env.status_json().store, "file", "{}", env.diagnostics());
}

#[test]
fn auto_keeps_an_existing_file_store_when_a_keyring_shows_up() {
    let Some(ss) =
        SecretService::start("auto_keeps_an_existing_file_store_when_a_keyring_shows_up")
    else {
        return;
    };
    let mut env = env_on_bus(Some("auto"), Bus::None);
    let host = unique_host("auto-sticky");
    env.store_ok(&host, "u", "sticky-secret");
    assert_eq!(env.status_json().store, "file");
    env.stop_agent();

    // Now a working, unlocked keyring answers: the file store stays.
    env.set_env("DBUS_SESSION_BUS_ADDRESS", Some(ss.address.as_str()));
    assert_eq!(env.get_ok(&host).secret, "sticky-secret");
    assert_eq!(env.status_json().store, "file", "{}", env.diagnostics());
}

// ---- the file store's master key ----

#[test]
fn the_file_stores_master_key_lives_in_the_keyring() {
    let test = "the_file_stores_master_key_lives_in_the_keyring";
    let Some(ss) = SecretService::start(test) else {
        return;
    };
    let host = unique_host("masterkey");
    let mut env = env_on_bus(Some("file"), Bus::Private(&ss));
    env.store_ok(&host, "u", "key-in-keyring");
    assert_eq!(env.status_json().store, "file");
    env.stop_agent();
    assert!(
        !master_key_file(&env).exists(),
        "a keyring answers, yet the master key went to {}",
        master_key_file(&env).display()
    );
    // A new agent finds the key again: not in REGENT_MASTER_KEY (unset),
    // not in a file (none), so in the keyring.
    assert_eq!(env.get_ok(&host).secret, "key-in-keyring");
    env.stop_agent();

    // With that keyring gone (a new, empty one), the same file cannot be read.
    drop(ss);
    let Some(other) = SecretService::start(test) else {
        return;
    };
    env.set_env("DBUS_SESSION_BUS_ADDRESS", Some(other.address.as_str()));
    let out = env.helper(&["get"], &host);
    assert!(
        !out.stdout().contains("key-in-keyring"),
        "the secret was read without its keyring\n{out}"
    );
    assert!(secrets_file(&env).is_file(), "the store file is gone");
    drop(env);
}

// ---- configuration ----

fn write(path: &std::path::Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

#[test]
fn store_in_config_toml_chooses_the_store() {
    let env = env_on_bus(None, Bus::None);
    write(
        &env.config_home.join("regent").join("config.toml"),
        "store = \"file\"\n",
    );
    env.store_ok(&unique_host("cfg"), "u", "cfg-secret");
    assert_eq!(env.status_json().store, "file", "{}", env.diagnostics());
    assert!(secrets_file(&env).is_file());
}

#[test]
fn regent_config_names_the_config_file() {
    let mut env = env_on_bus(None, Bus::None);
    // The default file says memory; the one REGENT_CONFIG names says file.
    write(
        &env.config_home.join("regent").join("config.toml"),
        "store = \"memory\"\n",
    );
    let elsewhere = env.root.join("elsewhere").join("regent.toml");
    write(&elsewhere, "store = \"file\"\n");
    env.list_ok();
    assert_eq!(env.status_json().store, "memory", "{}", env.diagnostics());
    env.stop_agent();

    env.set_env("REGENT_CONFIG", Some(&elsewhere));
    env.list_ok();
    assert_eq!(env.status_json().store, "file", "{}", env.diagnostics());
}

// ---- never memory ----

/// A store asked for by name that cannot be opened: the helper's store fails
/// with one line, and no agent serves (from memory or anything else).
fn assert_refused_not_memory(env: &TestEnv, what: &str) {
    let out = env.helper(
        &["store"],
        TestEnv::store_json(&unique_host("never-mem"), "u", "never-memory"),
    );
    assert_eq!(out.code(), Some(1), "{what}: the store must fail\n{out}");
    assert_eq!(out.out_lines().len(), 1, "{what}\n{out}");
    assert!(!out.stdout().contains("never-memory"), "{what}\n{out}");
    if env.agent_pid().is_some() {
        let store = env.status_json().store;
        assert_ne!(store, "memory", "{what}: fell back to memory");
    }
    let list = env.helper(&["list"], "");
    assert!(
        !list.stdout().contains("never-mem"),
        "{what}: something kept the refused login\n{list}"
    );
}

#[test]
fn a_named_store_that_cannot_open_never_falls_back_to_memory() {
    // The keyring with no Secret Service, by variable and by config.
    let env = env_on_bus(Some("keyring"), Bus::None);
    assert_refused_not_memory(&env, "REGENT_STORE=keyring without a Secret Service");

    let env = env_on_bus(None, Bus::None);
    write(
        &env.config_home.join("regent").join("config.toml"),
        "store = \"keyring\"\n",
    );
    assert_refused_not_memory(&env, "store = \"keyring\" without a Secret Service");

    // The file store where its data directory cannot be made.
    let env = env_on_bus(Some("file"), Bus::None);
    fs::write(env.data_home.join("regent"), b"not a directory").unwrap();
    assert_refused_not_memory(&env, "REGENT_STORE=file with a file as its data directory");
}

// ---- non-dumpable ----

/// The owner of `/proc/<pid>/environ`: the kernel shows the entries of a
/// non-dumpable process as root's.
fn proc_owner(pid: u32) -> u32 {
    fs::metadata(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/environ: {e}"))
        .uid()
}

#[test]
fn the_agent_is_non_dumpable() {
    let test = "the_agent_is_non_dumpable";
    let env = TestEnv::with_store(StoreKind::Memory);
    if !is_root() {
        // Our own uid: a dumpable process's environment is readable, a
        // non-dumpable one's is not.
        let mut control = Command::new("sleep").arg("30").spawn().expect("run sleep");
        assert!(
            fs::read(format!("/proc/{}/environ", control.id())).is_ok(),
            "control: cannot read the environment of our own child"
        );
        let _ = control.kill();
        let _ = control.wait();
        env.list_ok();
        let pid = env.agent_pid().expect("agent");
        let err = fs::read(format!("/proc/{pid}/environ")).expect_err(
            "the agent's /proc/<pid>/environ is readable by its own user: it is dumpable",
        );
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{err}");
        return;
    }
    // As root everything is readable and root-owned: run the agent as nobody,
    // whose non-dumpable process shows as root's in /proc.
    let Some(setpriv) = regent_tests::which("setpriv") else {
        return skip(test, "setpriv is not installed (Debian package util-linux)");
    };
    for dir in [
        &env.root,
        &env.home,
        &env.runtime_dir,
        &env.config_home,
        &env.data_home,
        &env.state_home,
    ] {
        std::os::unix::fs::chown(dir, Some(65534), Some(65534)).unwrap();
    }
    let as_nobody = |program: &std::path::Path, args: &[&str]| {
        let mut cmd = env.command(&setpriv);
        cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        regent_tests::spawn_retrying(&mut cmd).expect("run setpriv")
    };
    // Control: a plain process of nobody is shown as nobody's.
    let mut control = as_nobody(std::path::Path::new("/bin/sleep"), &["30"]);
    assert!(wait_until(Duration::from_secs(5), || proc_owner(
        control.id()
    ) == 65534));
    let _ = control.kill();
    let _ = control.wait();

    let mut agent = as_nobody(&env.bins.regent, &["agent", "--foreground"]);
    let pid = agent.id();
    let up = wait_until(Duration::from_secs(15), || {
        env.socket.exists() || !is_alive(pid)
    });
    let owner = proc_owner(pid);
    kill(pid, libc::SIGKILL);
    let _ = agent.wait();
    assert!(
        up && env.socket.exists(),
        "the agent as nobody did not come up\n{}",
        env.diagnostics()
    );
    assert_eq!(
        owner, 0,
        "/proc/{pid}/environ of the agent (running as nobody) belongs to uid {owner}: it is \
         dumpable"
    );
}

// ---- frames ----

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// A `Hello` frame whose JSON is padded with spaces to `len` bytes.
fn hello_of_len(len: usize) -> Vec<u8> {
    let mut body =
        format!(r#"{{"type":"Hello","proto":{PROTOCOL_VERSION},"client":"cli","version":"0"}}"#)
            .into_bytes();
    assert!(body.len() <= len);
    body.resize(len, b' ');
    frame(&body)
}

/// Sends `bytes`, then reads until the agent closes: the first frame's
/// JSON, if one came back.
fn exchange(env: &TestEnv, bytes: &[u8]) -> Option<serde_json::Value> {
    let mut s = UnixStream::connect(&env.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The agent may close before taking everything: a broken pipe is fine.
    let _ = s.write_all(bytes);
    let mut got = Vec::new();
    let r = s.read_to_end(&mut got);
    assert!(
        r.is_ok() || got.len() >= 4,
        "the agent neither answered nor closed within 30 s: {r:?}"
    );
    if got.len() < 4 {
        return None;
    }
    let n = u32::from_be_bytes(got[..4].try_into().unwrap()) as usize;
    serde_json::from_slice(&got[4..4 + n.min(got.len() - 4)]).ok()
}

fn vm_peak_kb(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmPeak:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmPeak in /proc/<pid>/status")
}

#[test]
fn frame_lengths_are_checked_before_allocating() {
    let env = TestEnv::with_store(StoreKind::Memory);
    env.store_ok("frames.example", "u", "frame-secret");
    let pid = env.agent_pid().expect("agent");

    // Control: a Hello of exactly the limit is answered.
    let answer = exchange(&env, &hello_of_len(MAX_FRAME));
    assert_eq!(
        answer.as_ref().map(|v| v["type"].clone()),
        Some("Hello".into()),
        "a {MAX_FRAME}-byte Hello should be answered: {answer:?}\n{}",
        env.diagnostics()
    );
    // One byte more: closed without an answer, the body never parsed.
    let answer = exchange(&env, &hello_of_len(MAX_FRAME + 1));
    assert!(
        answer.is_none(),
        "a {}-byte frame was answered: {answer:?}",
        MAX_FRAME + 1
    );

    // A header announcing 4 GiB - 1: the agent's peak address space does
    // not grow by anything like it (an allocation would, even untouched).
    let before = vm_peak_kb(pid);
    let answer = exchange(&env, &[0xff, 0xff, 0xff, 0xff]);
    assert!(answer.is_none(), "a 4 GiB header was answered: {answer:?}");
    assert!(is_alive(pid), "the agent died\n{}", env.diagnostics());
    let grown = vm_peak_kb(pid).saturating_sub(before);
    assert!(
        grown < 512 * 1024,
        "the agent's VmPeak grew by {grown} kB after a 4 GiB frame header"
    );
    assert_eq!(env.get_ok("frames.example").secret, "frame-secret");
}

// ---- timeouts ----

/// Reads until the agent closes; panics when it keeps the connection open
/// for `bound` (a hang bound, far above the agent's timeout).
fn wait_closed(mut s: UnixStream, bound: Duration, what: &str) -> Vec<u8> {
    s.set_read_timeout(Some(bound)).unwrap();
    let mut got = Vec::new();
    let r = s.read_to_end(&mut got);
    assert!(
        r.is_ok(),
        "{what}: the agent did not cut the connection off within {bound:?}: {r:?}"
    );
    got
}

#[test]
fn slow_peers_are_cut_off_by_timeouts() {
    // The agent's bounds (agent/src/daemon/server/): the Hello within
    // HANDSHAKE_TIMEOUT (5 s), each frame within FRAME_TIMEOUT (10 s) of its
    // first byte, the next request within IDLE_TIMEOUT (60 s). The
    // assertions only detect a connection kept open far beyond them.
    let env = TestEnv::with_store(StoreKind::Memory);
    env.store_ok("slow.example", "u", "slow-secret");
    let pid = env.agent_pid().expect("agent");
    let bound = Duration::from_secs(40);
    std::thread::scope(|scope| {
        // Connects and never says a word.
        let silent = scope.spawn(|| {
            let s = UnixStream::connect(&env.socket).unwrap();
            wait_closed(s, bound, "a peer that sends nothing")
        });
        // Half a Hello, then nothing.
        let half_hello = scope.spawn(|| {
            let mut s = UnixStream::connect(&env.socket).unwrap();
            let hello = hello_of_len(80);
            s.write_all(&hello[..20]).unwrap();
            wait_closed(s, bound, "a peer that stalls in the middle of its Hello")
        });
        // A whole Hello, then half a request.
        let half_request = scope.spawn(|| {
            let mut s = UnixStream::connect(&env.socket).unwrap();
            s.write_all(&hello_of_len(80)).unwrap();
            s.write_all(&[0, 0, 0, 100, b'{']).unwrap();
            wait_closed(s, bound, "a peer that stalls in the middle of a request")
        });
        // A whole Hello, then nothing: idle past IDLE_TIMEOUT (60 s).
        let idle = scope.spawn(|| {
            let mut s = UnixStream::connect(&env.socket).unwrap();
            s.write_all(&hello_of_len(80)).unwrap();
            wait_closed(
                s,
                Duration::from_secs(120),
                "a peer that goes idle after its Hello",
            )
        });
        assert!(silent.join().unwrap().is_empty());
        assert!(half_hello.join().unwrap().is_empty());
        // It got its Hello answered before it was cut off.
        let got = half_request.join().unwrap();
        let n = got
            .get(..4)
            .map(|h| u32::from_be_bytes(h.try_into().unwrap()) as usize)
            .unwrap_or(0);
        let hello: serde_json::Value =
            serde_json::from_slice(got.get(4..4 + n).unwrap_or_default()).unwrap_or_default();
        assert_eq!(hello["type"], "Hello", "{}", String::from_utf8_lossy(&got));
        assert!(
            !idle.join().unwrap().is_empty(),
            "the idle peer got no Hello"
        );
    });
    assert!(is_alive(pid));
    assert_eq!(env.get_ok("slow.example").secret, "slow-secret");
}
