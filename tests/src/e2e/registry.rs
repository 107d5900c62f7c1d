//! A CNCF distribution registry on 127.0.0.1 with htpasswd auth for one
//! test, and the small loopback HTTP client that asks it (and dockerd) what
//! it holds.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;

use super::{DOCKER_REGISTRY, E2e, HTPASSWD, REGISTRY_START, USER, program, require, skip, tail};
use crate::{kill, random_secret};

impl E2e {
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
}

impl E2e {
    /// A registry in token mode behind a loopback token server
    /// ([`crate::fakes::distribution_token`]) for [`USER`] and `password`,
    /// routed to regent for podman & co like [`E2e::registry`]. Skips
    /// (returns `None`) when it cannot start.
    pub fn token_registry(
        &self,
        password: &str,
    ) -> Option<(crate::fakes::distribution_token::TokenServer, Registry)> {
        use crate::fakes::distribution_token::{ISSUER, SERVICE, TokenServer};
        if let Err(why) = require(&[DOCKER_REGISTRY]) {
            skip(self.name, &why);
            return None;
        }
        let tokens = match TokenServer::start(&self.dir.join("token-server"), USER, password) {
            Ok(t) => t,
            Err(why) => {
                skip(self.name, &format!("the token server did not start: {why}"));
                return None;
            }
        };
        let reg = match Registry::start_token_auth(
            &self.dir.join("registry"),
            &tokens.realm(),
            SERVICE,
            ISSUER,
            &tokens.cert,
        ) {
            Ok(reg) => reg,
            Err(why) => {
                skip(self.name, &format!("the registry did not start: {why}"));
                return None;
            }
        };
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
        Some((tokens, reg))
    }
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

pub(super) fn parse_http(resp: &[u8]) -> Result<(u16, String), String> {
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
        Registry::start_with(dir, user, password, None, None)
    }

    /// As [`Registry::start`], serving HTTPS with the certificate and key
    /// of `tls` (PEM files; see [`crate::tls::TestCa`]).
    pub fn start_tls(
        dir: &Path,
        user: &str,
        password: &str,
        tls: (&Path, &Path),
    ) -> Result<Registry, String> {
        Registry::start_with(dir, user, password, Some(tls), None)
    }

    /// A registry that takes bearer tokens of the token server at `realm`
    /// (distribution's `auth.token`): JWTs for `service` from `issuer`,
    /// signed by the key of the certificate `rootcert` (PEM). See
    /// [`crate::fakes::distribution_token`].
    pub fn start_token_auth(
        dir: &Path,
        realm: &str,
        service: &str,
        issuer: &str,
        rootcert: &Path,
    ) -> Result<Registry, String> {
        Registry::start_token_auth_with(dir, realm, service, issuer, rootcert, None)
    }

    /// As [`Registry::start_token_auth`], serving HTTPS with `tls`.
    pub fn start_token_auth_with(
        dir: &Path,
        realm: &str,
        service: &str,
        issuer: &str,
        rootcert: &Path,
        tls: Option<(&Path, &Path)>,
    ) -> Result<Registry, String> {
        let auth = format!(
            "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    \
             rootcertbundle: {}\n",
            rootcert.display()
        );
        Registry::start_with(dir, "", "", tls, Some(auth))
    }

    fn start_with(
        dir: &Path,
        user: &str,
        password: &str,
        tls: Option<(&Path, &Path)>,
        auth: Option<String>,
    ) -> Result<Registry, String> {
        fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
        if let Some(auth) = auth {
            return Registry::spawn(dir, user, password, tls, &auth);
        }
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
        let auth = format!(
            "auth:\n  htpasswd:\n    realm: regent-e2e\n    path: {}\n",
            htpasswd.display()
        );
        Registry::spawn(dir, user, password, tls, &auth)
    }

    /// Starts `docker-registry` with the `auth` block on a free port.
    fn spawn(
        dir: &Path,
        user: &str,
        password: &str,
        tls: Option<(&Path, &Path)>,
        auth: &str,
    ) -> Result<Registry, String> {
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
                     {tls}\
                     {auth}",
                    data = dir.join("data").display(),
                    secret = random_secret(24),
                    tls = match tls {
                        Some((cert, key)) => format!(
                            "  tls:\n    certificate: {}\n    key: {}\n",
                            cert.display(),
                            key.display()
                        ),
                        None => String::new(),
                    },
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
                let ready = match tls {
                    // Listening is enough: its config was read by then.
                    Some(_) => TcpStream::connect(&addr).is_ok(),
                    None => matches!(http_get(&addr, "/v2/", None), Ok((401, _))),
                };
                if ready {
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
