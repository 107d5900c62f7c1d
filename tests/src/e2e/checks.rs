//! What the clients asked the helper (the wrapper's call log) and what the
//! agent served (its log), with positions in both, and the checks the tests
//! make on them and on regent's table and the clients' files.

use std::fs;

use base64::Engine;

use super::{E2e, USER};

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

impl E2e {
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
}

/// A position in the logs (see [`E2e::mark`]).
#[derive(Debug, Clone, Copy)]
pub struct Mark {
    calls: usize,
    served: usize,
}
