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
//! The modules: `programs` (finding the system's clients and servers),
//! `checks` (what the helper was asked and the agent served), `registry`
//! (the registry, with htpasswd or in token mode, and a loopback HTTP
//! client), `docker` (dockerd and the docker CLI), `podman` (podman,
//! buildah, skopeo).
//!
//! A component that truly cannot start on this machine (a missing program, a
//! daemon that dies at start) skips the test loudly with `SKIP: ...` on stderr
//! ([`crate::skip`], counted by scripts/test); in strict mode
//! (`REGENT_TEST_STRICT=1`, CI) a skip fails the test instead.

mod checks;
mod docker;
mod podman;
mod programs;
mod registry;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{Input, Outcome, TestEnv, random_secret};

pub use checks::{Call, Mark, Served};
pub use docker::{Dockerd, unmount_under};
pub use programs::{
    BUILDAH, DOCKER, DOCKER_REGISTRY, DOCKERD, HTPASSWD, PODMAN, PYTHON3, SKOPEO, TAR, program,
    require,
};
pub use registry::{Registry, free_port, http_get};

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
}
