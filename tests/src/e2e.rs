//! End-to-end helpers: real clients (docker, podman, buildah, skopeo,
//! docker-py) against a real registry, through the real helper and agent.
//!
//! Everything lives under the [`TestEnv`]'s temporary directory:
//!
//! - a CNCF distribution registry (`docker-registry`) with htpasswd bcrypt auth
//!   on plain HTTP, on a free 127.0.0.1 port ([`Registry`]);
//! - a private `dockerd` with its own socket, data root, exec root and pid
//!   file, no iptables, no bridge, the vfs driver ([`Dockerd`]); one at a time
//!   per test binary;
//! - a `DOCKER_CONFIG` with `credsStore: regent` written by `regent setup
//!   docker`, and podman/buildah/skopeo configuration (`registries.conf`,
//!   `storage.conf`, `containers.conf`, an auth file) with the `regent` drop-in
//!   written by `regent setup podman`.
//!
//! The clients find `docker-credential-regent` on `PATH`: first a small shell
//! wrapper that appends each call's verb (and, for `get` and `erase`, the
//! server URL it was given; never a secret) to a log, then execs the real
//! helper. So every test checks both what the client did and what the helper
//! was asked ([`E2e::calls_since`]), next to the agent's own log
//! ([`E2e::served_since`]) and its table ([`TestEnv::ls_json`]).
//!
//! `REGENT_E2E_DOCKER` picks another docker CLI (default: /usr/bin/docker).
//!
//! Nothing outside the temporary directory is written, with two exceptions
//! that bookworm's versions do not let a caller move: as root, containers/image
//! (podman 4.3, buildah 1.28, skopeo 1.9) keeps its blob-info cache in
//! /var/lib/containers/cache, and dockerd 20.10 creates /run/docker/plugins
//! (removed again when it did not exist before and is empty). dockerd's
//! /etc/docker/key.json is moved into the temp dir (`deprecated-key-path`), and
//! podman uses the CNI backend so that netavark's /run/containers/networks is
//! never created.
//!
//! A component that truly cannot start on this machine (a missing program, a
//! daemon that dies at start) skips the test loudly with `SKIP: ...` on stderr
//! ([`crate::skip`], counted by scripts/test); in strict mode
//! (`REGENT_TEST_STRICT=1`, CI) a skip fails the test instead.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;

use crate::{Input, Outcome, TestEnv, is_alive, kill, random_secret, wait_until};

/// How long one client command (a login, a push, a build) may take.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(240);
/// How long the registry may take to answer after it was started.
pub const REGISTRY_START: Duration = Duration::from_secs(20);
/// How long dockerd may take to answer `/_ping` after it was started.
pub const DOCKERD_START: Duration = Duration::from_secs(90);

/// The registry user every test logs in as.
pub const USER: &str = "e2e-user";

/// True when a skip is a failure: see [`crate::strict`].
pub fn strict() -> bool {
    crate::strict()
}

/// Skips `test` loudly and counts it, or fails it in strict mode: see
/// [`crate::skip`].
pub fn skip(test: &str, why: &str) {
    crate::skip(test, why);
}

/// The last `max` bytes of a file, for failure and skip messages.
pub fn tail(path: &Path, max: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("...{}", &text[start..])
}

/// An executable from the system, by absolute path first (so that e.g.
/// pyenv shims or a newer client in /usr/local/bin do not change what runs),
/// then on `PATH`.
pub fn program(preferred: &[&str], name: &str) -> Option<PathBuf> {
    const SYSTEM: [&str; 6] = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    preferred
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| crate::which(name))
        .or_else(|| {
            SYSTEM
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
        })
}

/// Every program a test needs, or the skip reason naming the missing ones
/// and their Debian packages.
pub fn require(programs: &[(&str, &str)]) -> Result<(), String> {
    let missing: Vec<String> = programs
        .iter()
        .filter(|(p, _)| program(&[], p).is_none())
        .map(|(p, pkg)| format!("{p} (Debian package {pkg})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "not installed: {}; scripts/test installs them as root",
            missing.join(", ")
        ))
    }
}

/// The programs used below.
pub const DOCKER_REGISTRY: (&str, &str) = ("/usr/bin/docker-registry", "docker-registry");
pub const HTPASSWD: (&str, &str) = ("htpasswd", "apache2-utils");
pub const DOCKERD: (&str, &str) = ("dockerd", "docker.io");
pub const DOCKER: (&str, &str) = ("docker", "docker.io");
pub const PODMAN: (&str, &str) = ("podman", "podman");
pub const BUILDAH: (&str, &str) = ("buildah", "buildah");
pub const SKOPEO: (&str, &str) = ("skopeo", "skopeo");
pub const TAR: (&str, &str) = ("tar", "tar");
pub const PYTHON3: (&str, &str) = ("/usr/bin/python3", "python3");

/// One helper call as the wrapper recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub verb: String,
    /// The server URL for `get` and `erase`; empty otherwise.
    pub server: String,
}

impl Call {
    pub fn is(&self, verb: &str, server: &str) -> bool {
        self.verb == verb && self.server == server
    }
}

/// One request the agent served, from its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub request: String,
    pub response: String,
}

/// A test's whole world: the regent env plus the clients' configuration.
pub struct E2e {
    pub name: &'static str,
    pub env: TestEnv,
    /// `<env root>/e2e`: everything the clients and servers write.
    pub dir: PathBuf,
    /// Where the clients' `docker-credential-regent` wrapper records calls.
    pub calls_path: PathBuf,
    /// `$DOCKER_CONFIG`.
    pub docker_config: PathBuf,
    /// `$REGISTRY_AUTH_FILE` for podman, buildah and skopeo.
    pub auth_file: PathBuf,
    /// The per-user registries.conf podman & co read (under `$HOME/.config`).
    pub registries_conf: PathBuf,
    /// The drop-in `regent setup podman` wrote.
    pub regent_dropin: PathBuf,
    /// The image layer tarball (one small file) every test imports.
    pub tiny_tar: PathBuf,
}

impl E2e {
    /// A fresh env for `name`: the helper wrapper first on `PATH`, a private
    /// `DOCKER_CONFIG` and containers configuration, both set up by `regent
    /// setup`. Panics when the setup itself fails (that is regent's job).
    pub fn new(name: &'static str) -> E2e {
        let mut env = TestEnv::new();
        let dir = env.root.join("e2e");
        let wrap_dir = dir.join("bin");
        let calls_path = dir.join("helper-calls.log");
        let docker_config = dir.join("docker");
        let containers = dir.join("containers");
        let auth_file = containers.join("auth.json");
        let tmp = dir.join("tmp");
        // podman 4.3 (containers/image 5.23) reads the per-user registries.conf
        // and its drop-in directory under $HOME/.config, not $XDG_CONFIG_HOME:
        // keep the two the same so `regent setup podman` writes where podman reads.
        let config_home = env.home.join(".config");
        for d in [
            &dir,
            &wrap_dir,
            &docker_config,
            &containers,
            &tmp,
            &config_home,
        ] {
            fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        }
        fs::set_permissions(&config_home, fs::Permissions::from_mode(0o700)).unwrap();

        // The wrapper (first on PATH): record, then run the real helper by its
        // absolute path. The real helper's directory comes next on PATH.
        let wrapper = wrap_dir.join(crate::HELPER);
        let script = format!(
            "#!/bin/sh\n\
             # Records each call (verb, and the server URL for get/erase; never a\n\
             # secret), then runs the real helper with the same stdin.\n\
             log='{log}'\n\
             real='{real}'\n\
             case \"$1\" in\n\
             get|erase)\n\
             \x20   input=$(cat)\n\
             \x20   printf '%s %s\\n' \"$1\" \"$input\" >> \"$log\"\n\
             \x20   printf '%s' \"$input\" | \"$real\" \"$@\"\n\
             \x20   ;;\n\
             *)\n\
             \x20   printf '%s\\n' \"$1\" >> \"$log\"\n\
             \x20   exec \"$real\" \"$@\"\n\
             \x20   ;;\n\
             esac\n",
            log = calls_path.display(),
            real = env.bins.helper.display(),
        );
        fs::write(&wrapper, script).unwrap();
        fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(&calls_path, b"").unwrap();

        let bins_dir = env
            .bins
            .helper
            .parent()
            .expect("helper has a directory")
            .to_path_buf();
        let mut path = vec![wrap_dir.clone(), bins_dir];
        if let Some(p) = std::env::var_os("PATH") {
            path.extend(std::env::split_paths(&p));
        }
        for d in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
            if !path.iter().any(|p| p == Path::new(d)) {
                path.push(PathBuf::from(d));
            }
        }
        let path = std::env::join_paths(path).expect("PATH");

        // podman/buildah/skopeo: storage, engine and auth file, all private.
        let storage_conf = containers.join("storage.conf");
        let storage = dir.join("storage");
        fs::write(
            &storage_conf,
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                storage.join("graph").display(),
                storage.join("run").display()
            ),
        )
        .unwrap();
        let containers_conf = containers.join("containers.conf");
        fs::write(
            &containers_conf,
            format!(
                "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"none\"\n\
                 tmp_dir = \"{tmp}/libpod\"\nstatic_dir = \"{st}/libpod\"\n\
                 volume_path = \"{st}/volumes\"\nimage_copy_tmp_dir = \"{tmp}\"\n\n\
                 # CNI keeps its state under network_config_dir; netavark (as root)\n\
                 # would use /run/containers/networks.\n\
                 [network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{st}/networks\"\n",
                tmp = tmp.display(),
                st = storage.display(),
            ),
        )
        .unwrap();
        fs::write(&auth_file, b"{}\n").unwrap();
        fs::set_permissions(&auth_file, fs::Permissions::from_mode(0o600)).unwrap();

        env.set_env("PATH", Some(path));
        env.set_env("XDG_CONFIG_HOME", Some(&config_home));
        env.set_env("TMPDIR", Some(&tmp));
        env.set_env("DOCKER_CONFIG", Some(&docker_config));
        env.set_env("REGISTRY_AUTH_FILE", Some(&auth_file));
        env.set_env("CONTAINERS_STORAGE_CONF", Some(&storage_conf));
        env.set_env("CONTAINERS_CONF", Some(&containers_conf));
        for var in [
            "DOCKER_HOST",
            "DOCKER_CONTEXT",
            "DOCKER_TLS_VERIFY",
            "DOCKER_CERT_PATH",
            "DOCKER_AUTH_CONFIG",
            "DOCKER_BUILDKIT",
            "BUILDAH_ISOLATION",
            "CONTAINERS_REGISTRIES_CONF",
            "CONTAINER_HOST",
            "CONTAINER_CONNECTION",
            "STORAGE_DRIVER",
            "STORAGE_OPTS",
        ] {
            env.set_env(var, None::<OsString>);
        }

        let registries_conf = config_home.join("containers").join("registries.conf");
        let regent_dropin = config_home
            .join("containers")
            .join("registries.conf.d")
            .join("50-regent.conf");
        let e = E2e {
            name,
            env,
            dir,
            calls_path,
            docker_config,
            auth_file,
            registries_conf,
            regent_dropin,
            tiny_tar: PathBuf::new(),
        };
        for client in ["docker", "podman"] {
            let out = e.env.regent(&["setup", client]);
            assert!(
                out.success(),
                "`regent setup {client}` failed\n{out}\n{}",
                e.env.diagnostics()
            );
        }
        let config = e.docker_config_json();
        assert_eq!(
            config["credsStore"], "regent",
            "`regent setup docker` did not set credsStore in $DOCKER_CONFIG/config.json: {config}"
        );
        let dropin = fs::read_to_string(&e.regent_dropin).unwrap_or_else(|err| {
            panic!(
                "`regent setup podman` did not write {}: {err}",
                e.regent_dropin.display()
            )
        });
        assert!(
            dropin.contains("credential-helpers") && dropin.contains("\"regent\""),
            "unexpected drop-in {}:\n{dropin}",
            e.regent_dropin.display()
        );
        e.with_tiny_tar()
    }

    fn with_tiny_tar(mut self) -> E2e {
        let src = self.dir.join("tiny");
        fs::create_dir_all(&src).unwrap();
        fs::write(
            src.join("hello.txt"),
            format!("hello from {} ({})\n", self.name, random_secret(12)),
        )
        .unwrap();
        let tar = self.dir.join("tiny.tar");
        let out = self.run(
            Command::new(program(&["/usr/bin/tar", "/bin/tar"], "tar").unwrap_or("tar".into()))
                .arg("-C")
                .arg(&src)
                .arg("-cf")
                .arg(&tar)
                .arg("hello.txt"),
            None,
        );
        assert!(out.success(), "cannot make the image tarball\n{out}");
        self.tiny_tar = tar;
        self
    }

    /// Runs `cmd` (stdin: `input`, else /dev/null) with the client timeout.
    pub fn run(&self, cmd: &mut Command, input: Option<&[u8]>) -> Outcome {
        let stdin = match input {
            Some(b) => Input::Bytes(b),
            None => Input::Null,
        };
        self.env.run(cmd, stdin, CLIENT_TIMEOUT)
    }

    /// A command for `program` with this test's environment.
    pub fn cmd(&self, program: impl AsRef<Path>) -> Command {
        self.env.command(program)
    }

    /// Runs a client program (from the system) with `args`.
    pub fn client(&self, prog: &str, args: &[&str], input: Option<&[u8]>) -> Outcome {
        let path = program(&[], prog).unwrap_or_else(|| PathBuf::from(prog));
        self.run(self.cmd(path).args(args), input)
    }

    pub fn podman(&self, args: &[&str]) -> Outcome {
        self.client("podman", args, None)
    }

    pub fn buildah(&self, args: &[&str]) -> Outcome {
        self.client("buildah", args, None)
    }

    pub fn skopeo(&self, args: &[&str]) -> Outcome {
        self.client("skopeo", args, None)
    }

    /// Asserts that `out` succeeded, with everything useful when it did not.
    pub fn ok(&self, out: &Outcome, what: &str) {
        assert!(
            out.success(),
            "{}: {what}: expected success\n{out}\n{}",
            self.name,
            self.diagnostics()
        );
    }

    /// Asserts that `out` failed and its output mentions one of `words`
    /// (case-insensitive).
    pub fn fails_with(&self, out: &Outcome, what: &str, words: &[&str]) {
        let text = format!("{}\n{}", out.stdout(), out.stderr()).to_lowercase();
        assert!(
            !out.success() && words.iter().any(|w| text.contains(&w.to_lowercase())),
            "{}: {what}: expected a failure mentioning one of {words:?}\n{out}\n{}",
            self.name,
            self.diagnostics()
        );
    }

    /// The helper calls so far, the agent log and the config files.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- helper calls ---\n{}--- $DOCKER_CONFIG/config.json ---\n{}\n--- auth file ---\n{}\n{}",
            fs::read_to_string(&self.calls_path).unwrap_or_default(),
            fs::read_to_string(self.docker_config.join("config.json")).unwrap_or_default(),
            fs::read_to_string(&self.auth_file).unwrap_or_default(),
            self.env.diagnostics()
        )
    }

    /// Every helper call the wrapper recorded.
    pub fn calls(&self) -> Vec<Call> {
        fs::read_to_string(&self.calls_path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (verb, server) = l.split_once(' ').unwrap_or((l, ""));
                Call {
                    verb: verb.to_owned(),
                    server: server.trim().to_owned(),
                }
            })
            .collect()
    }

    /// A position in the call log and the agent log, for `*_since`.
    pub fn mark(&self) -> Mark {
        Mark {
            calls: self.calls().len(),
            served: self.served().len(),
        }
    }

    pub fn calls_since(&self, mark: &Mark) -> Vec<Call> {
        let mut all = self.calls();
        all.split_off(mark.calls.min(all.len()))
    }

    /// Every request the agent logged as served (`served request=.. response=..`).
    pub fn served(&self) -> Vec<Served> {
        let field = |line: &str, name: &str| -> Option<String> {
            let start = line.find(&format!("{name}=\""))? + name.len() + 2;
            let len = line[start..].find('"')?;
            Some(line[start..start + len].to_owned())
        };
        self.env
            .log_contents()
            .lines()
            .filter(|l| l.contains(" served ") || l.ends_with(" served"))
            .filter_map(|l| {
                Some(Served {
                    request: field(l, "request")?,
                    response: field(l, "response")?,
                })
            })
            .collect()
    }

    pub fn served_since(&self, mark: &Mark) -> Vec<Served> {
        let all = self.served();
        all[mark.served.min(all.len())..].to_vec()
    }

    /// Asserts that since `mark` the helper was asked `get <server>` at least
    /// once and the agent answered a `get` with credentials.
    pub fn assert_got_credentials(&self, mark: &Mark, server: &str, what: &str) {
        let calls = self.calls_since(mark);
        assert!(
            calls.iter().any(|c| c.is("get", server)),
            "{}: {what}: the helper was never asked `get {server}`; calls since: {calls:?}\n{}",
            self.name,
            self.diagnostics()
        );
        let served = self.served_since(mark);
        assert!(
            served
                .iter()
                .any(|s| s.request == "get" && s.response == "credentials"),
            "{}: {what}: the agent served no `get` with credentials; served since: {served:?}\n{}",
            self.name,
            self.diagnostics()
        );
    }

    /// Asserts that since `mark` the helper was never asked to `store`.
    pub fn assert_no_store(&self, mark: &Mark, what: &str) {
        let calls = self.calls_since(mark);
        assert!(
            !calls.iter().any(|c| c.verb == "store"),
            "{}: {what}: the helper was asked to store; calls since: {calls:?}\n{}",
            self.name,
            self.diagnostics()
        );
    }

    /// Asserts that since `mark` the helper stored (once or more) and the
    /// agent logged `stored key=<key>`.
    pub fn assert_stored(&self, mark: &Mark, key: &str, what: &str) {
        let calls = self.calls_since(mark);
        assert!(
            calls.iter().any(|c| c.verb == "store"),
            "{}: {what}: the helper was never asked to store; calls since: {calls:?}\n{}",
            self.name,
            self.diagnostics()
        );
        let served = self.served_since(mark);
        assert!(
            served
                .iter()
                .any(|s| s.request == "store" && s.response == "done"),
            "{}: {what}: the agent served no successful `store`; served since: {served:?}\n{}",
            self.name,
            self.diagnostics()
        );
        let quoted = format!("key=\"{key}\"");
        let bare = format!("key={key} ");
        assert!(
            self.env
                .log_contents()
                .lines()
                .any(|l| l.contains(" stored ") && (l.contains(&quoted) || l.contains(&bare))),
            "{}: {what}: the agent did not log `stored key={key}`\n{}",
            self.name,
            self.diagnostics()
        );
    }

    /// Asserts regent holds exactly one login for `key`, by `user`, and that
    /// `get` returns `password`.
    pub fn assert_holds(&self, key: &str, user: &str, password: &str) {
        let entries = self.env.ls_json();
        let matching: Vec<_> = entries.iter().filter(|e| e.key == key).collect();
        assert!(
            matching.len() == 1 && matching[0].username == user,
            "{}: expected one entry for {key} by {user} in `regent ls --json`: {entries:?}\n{}",
            self.name,
            self.diagnostics()
        );
        let creds = self.env.get_ok(key);
        assert_eq!(
            (creds.username.as_str(), creds.secret.as_str()),
            (user, password),
            "{}: `get {key}` returned other credentials",
            self.name
        );
    }

    /// Asserts regent holds nothing for `key`.
    pub fn assert_holds_nothing(&self, key: &str) {
        let entries = self.env.ls_json();
        assert!(
            entries.iter().all(|e| e.key != key),
            "{}: expected no entry for {key} in `regent ls --json`: {entries:?}\n{}",
            self.name,
            self.diagnostics()
        );
        self.env.get_missing(key);
    }

    /// `$DOCKER_CONFIG/config.json`.
    pub fn docker_config_json(&self) -> serde_json::Value {
        let path = self.docker_config.join("config.json");
        let text = fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        serde_json::from_slice(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e})", path.display()))
    }

    /// Asserts `password` is in no client configuration file: not in
    /// `config.json` (nor an `auth` field for `key`), not in the podman auth
    /// file.
    pub fn assert_password_not_in_client_files(&self, key: &str, password: &str) {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let encoded = b64(&format!("{USER}:{password}"));
        for path in [
            self.docker_config.join("config.json"),
            self.auth_file.clone(),
        ] {
            let text = fs::read_to_string(&path).unwrap_or_default();
            assert!(
                !text.contains(password) && !text.contains(&encoded),
                "{}: the password is in {}:\n{text}",
                self.name,
                path.display()
            );
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                let entry = &v["auths"][key];
                assert!(
                    entry.get("auth").is_none() && entry.get("password").is_none(),
                    "{}: {} holds credentials for {key}: {v}",
                    self.name,
                    path.display()
                );
            }
        }
    }

    /// Starts a registry for this test and routes it to regent for podman &
    /// co (marked insecure: it speaks plain HTTP). Skips (returns `None`) when
    /// it cannot start.
    pub fn registry(&self) -> Option<Registry> {
        if let Err(why) = require(&[DOCKER_REGISTRY, HTPASSWD]) {
            skip(self.name, &why);
            return None;
        }
        let password = random_secret(20);
        match Registry::start(&self.dir.join("registry"), USER, &password) {
            Ok(reg) => {
                fs::create_dir_all(self.registries_conf.parent().unwrap()).unwrap();
                fs::write(
                    &self.registries_conf,
                    format!(
                        "# e2e: only the loopback registry, over plain HTTP.\n\
                         unqualified-search-registries = []\n\n\
                         [[registry]]\nlocation = \"{}\"\ninsecure = true\n",
                        reg.addr
                    ),
                )
                .unwrap();
                Some(reg)
            }
            Err(why) => {
                skip(self.name, &format!("the registry did not start: {why}"));
                None
            }
        }
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

    /// `<tool> login -u USER --password-stdin <addr>` (podman, buildah,
    /// skopeo).
    pub fn login(&self, tool: &str, addr: &str, password: &str) -> Outcome {
        let stdin = format!("{password}\n");
        self.client(
            tool,
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

    /// Checks that podman can run at all here (`podman info`); skips when not.
    pub fn podman_works(&self) -> bool {
        if let Err(why) = require(&[PODMAN]) {
            skip(self.name, &why);
            return false;
        }
        let out = self.podman(&["info"]);
        if !out.success() {
            skip(self.name, &format!("`podman info` fails here:\n{out}"));
            return false;
        }
        true
    }

    /// Imports the tiny tarball into podman's storage as `image`.
    pub fn podman_import(&self, image: &str) {
        let tar = self.tiny_tar.to_string_lossy().into_owned();
        let out = self.podman(&["import", &tar, image]);
        self.ok(&out, &format!("podman import {image}"));
    }
}

/// A position in the logs (see [`E2e::mark`]).
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    calls: usize,
    served: usize,
}

/// A free TCP port on 127.0.0.1 (free when this returns; the caller retries
/// if another process takes it first).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// One HTTP/1.0 request to 127.0.0.1; the status code and the body.
pub fn http_get(
    addr: &str,
    path: &str,
    basic: Option<(&str, &str)>,
) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect_timeout(
        &addr.parse().map_err(|e| format!("{addr}: {e}"))?,
        Duration::from_secs(2),
    )
    .map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let auth = basic
        .map(|(u, p)| {
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        })
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )
    .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut resp = Vec::new();
    stream
        .read_to_end(&mut resp)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    parse_http(&resp)
}

fn parse_http(resp: &[u8]) -> Result<(u16, String), String> {
    let text = String::from_utf8_lossy(resp);
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {}", crate::clip(&text)))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A CNCF distribution registry (`docker-registry`) on 127.0.0.1 with
/// htpasswd (bcrypt) auth and plain HTTP. Stopped by pid on drop.
pub struct Registry {
    /// `127.0.0.1:<port>`: the registry's name for every client.
    pub addr: String,
    pub user: String,
    pub password: String,
    pub log: PathBuf,
    child: Child,
}

impl Registry {
    pub fn start(dir: &Path, user: &str, password: &str) -> Result<Registry, String> {
        fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        let htpasswd = dir.join("htpasswd");
        let hp = Command::new(program(&[], "htpasswd").unwrap_or("htpasswd".into()))
            .args(["-B", "-b", "-n", user, password])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("htpasswd: {e}"))?;
        if !hp.status.success() || !hp.stdout.starts_with(format!("{user}:$2").as_bytes()) {
            return Err(format!(
                "htpasswd -B failed: {}",
                String::from_utf8_lossy(&hp.stderr)
            ));
        }
        fs::write(&htpasswd, &hp.stdout).map_err(|e| e.to_string())?;
        let mut last = String::new();
        for attempt in 0..5 {
            let port = free_port();
            let addr = format!("127.0.0.1:{port}");
            let config = dir.join(format!("config-{attempt}.yml"));
            let log = dir.join(format!("registry-{attempt}.log"));
            fs::write(
                &config,
                format!(
                    "version: 0.1\n\
                     log:\n  level: info\n\
                     storage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\n\
                     http:\n  addr: {addr}\n  secret: {secret}\n\
                     auth:\n  htpasswd:\n    realm: regent-e2e\n    path: {htpasswd}\n",
                    data = dir.join("data").display(),
                    secret = random_secret(24),
                    htpasswd = htpasswd.display(),
                ),
            )
            .map_err(|e| e.to_string())?;
            let logf = fs::File::create(&log).map_err(|e| e.to_string())?;
            let child = Command::new(DOCKER_REGISTRY.0)
                .arg("serve")
                .arg(&config)
                .env_clear()
                .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
                .env("HOME", dir)
                .stdin(Stdio::null())
                .stdout(logf.try_clone().map_err(|e| e.to_string())?)
                .stderr(logf)
                .spawn()
                .map_err(|e| format!("spawn {}: {e}", DOCKER_REGISTRY.0))?;
            let mut reg = Registry {
                addr: addr.clone(),
                user: user.to_owned(),
                password: password.to_owned(),
                log: log.clone(),
                child,
            };
            // Ready when /v2/ asks for credentials; a child that exits early
            // most likely lost the port to someone else: try another one.
            let deadline = Instant::now() + REGISTRY_START;
            loop {
                if let Ok(Some(status)) = reg.child.try_wait() {
                    last = format!(
                        "docker-registry exited with {status} on {addr}; log:\n{}",
                        tail(&log, 3000)
                    );
                    break;
                }
                if let Ok((401, _)) = http_get(&addr, "/v2/", None) {
                    return Ok(reg);
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "docker-registry did not answer on {addr} within {REGISTRY_START:?}; log:\n{}",
                        tail(&log, 3000)
                    ));
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        Err(last)
    }

    /// The tags of `repo`, asked with the registry's own credentials.
    pub fn tags(&self, repo: &str) -> Vec<String> {
        let (status, body) = http_get(
            &self.addr,
            &format!("/v2/{repo}/tags/list"),
            Some((&self.user, &self.password)),
        )
        .unwrap_or_else(|e| panic!("registry tags/list: {e}"));
        if status == 404 {
            return Vec::new();
        }
        assert_eq!(status, 200, "registry tags/list {repo}: {body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("tags/list: {e}: {body}"));
        v["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `addr/repo:tag`.
    pub fn image(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let pid = self.child.id();
        kill(pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
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
