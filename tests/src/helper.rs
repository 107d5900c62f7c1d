//! The helper's verbs (`store`, `get`, `erase`, `list`) and `regent status`
//! and `regent ls --json`, run in a [`TestEnv`] with their success checks:
//! exact output shapes, exit codes, and no secret on stderr.

use std::collections::BTreeMap;

use regent_shared::protocol::{EntryInfo, StatusInfo};

use crate::{DEFAULT_TIMEOUT, Input, Outcome, TestEnv, contains};

// The credential-helper protocol's error lines, spelled out here rather than
// taken from the code under test: docker and its clients match these exact
// strings, so a change in regent's constants must fail the tests.
/// What `get` prints when there are no credentials (docker's `errCredentialsNotFound`).
pub const NOT_FOUND: &str = "credentials not found in native keychain";
/// What every verb prints for an empty server URL.
pub const NO_SERVER_URL: &str = "no credentials server URL";
/// What `store` prints for an empty username.
pub const NO_USERNAME: &str = "no credentials username";

/// Credentials as `get` printed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creds {
    pub server_url: String,
    pub username: String,
    pub secret: String,
}

impl TestEnv {
    /// The JSON `store` reads.
    pub fn store_json(server_url: &str, username: &str, secret: &str) -> Vec<u8> {
        let mut v = serde_json::to_vec(&serde_json::json!({
            "ServerURL": server_url,
            "Username": username,
            "Secret": secret,
        }))
        .unwrap();
        v.push(b'\n');
        v
    }

    /// `store`, asserting exit 0 and an empty stdout.
    pub fn store_ok(&self, server_url: &str, username: &str, secret: &str) {
        let out = self.helper(&["store"], Self::store_json(server_url, username, secret));
        self.assert_store_ok(&out, secret);
    }

    pub fn assert_store_ok(&self, out: &Outcome, secret: &str) {
        assert!(
            out.success() && out.stdout.is_empty(),
            "store: expected exit 0 and empty stdout\n{out}\n{}",
            self.diagnostics()
        );
        self.assert_no_secret_in_stderr(out, secret);
    }

    /// `get`, asserting success and the exact output shape.
    pub fn get_ok(&self, server_url: &str) -> Creds {
        let out = self.helper(&["get"], server_url);
        self.parse_get(&out)
    }

    /// After a source's endpoint died: repeats `get` until it fails and
    /// returns the error. Until then every answer must be `secret`, and only
    /// within `lifetime` of `got_at` (when the token was fetched): never a
    /// token past its expiry. The error must say so and not quote `secret`.
    /// Gives up after `limit`.
    pub fn error_once_expired(
        &self,
        get: impl Fn() -> Outcome,
        secret: &str,
        got_at: std::time::Instant,
        lifetime: std::time::Duration,
        limit: std::time::Duration,
    ) -> String {
        let mut error = None;
        while got_at.elapsed() < limit {
            let out = get();
            if out.success() {
                assert_eq!(self.parse_get(&out).secret, secret);
                assert!(got_at.elapsed() < lifetime, "served past expiry");
                std::thread::sleep(std::time::Duration::from_millis(200));
            } else {
                error = Some(out.out_trim());
                break;
            }
        }
        let error = error.expect("the get kept succeeding with a dead endpoint");
        eprintln!("error: {error}");
        assert!(!error.contains(secret));
        assert!(
            error.contains("expired at") || error.contains("too soon to hand out"),
            "{error}"
        );
        error
    }

    /// Checks a successful `get`: exit 0, one line of JSON with exactly the
    /// keys `ServerURL`, `Username`, `Secret`, then a newline.
    pub fn parse_get(&self, out: &Outcome) -> Creds {
        assert!(
            out.success(),
            "get: expected exit 0\n{out}\n{}",
            self.diagnostics()
        );
        let text = out.stdout();
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "get: stdout must be exactly one line ending in a newline\n{out}"
        );
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("get: stdout is not JSON ({e})\n{out}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("get: stdout is not a JSON object\n{out}"));
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["Secret", "ServerURL", "Username"],
            "get: the object must have exactly the keys ServerURL, Username, Secret\n{out}"
        );
        let field = |k: &str| {
            obj[k]
                .as_str()
                .unwrap_or_else(|| panic!("get: {k} is not a string\n{out}"))
                .to_owned()
        };
        let creds = Creds {
            server_url: field("ServerURL"),
            username: field("Username"),
            secret: field("Secret"),
        };
        self.assert_no_secret_in_stderr(out, &creds.secret);
        creds
    }

    /// `get`, asserting exit 1 and exactly the not-found line.
    pub fn get_missing(&self, server_url: &str) {
        let out = self.helper(&["get"], server_url);
        self.assert_not_found(&out);
    }

    pub fn assert_not_found(&self, out: &Outcome) {
        assert!(
            out.code() == Some(1) && out.out_trim() == NOT_FOUND && out.out_lines().len() == 1,
            "get: expected exit 1 and stdout exactly {NOT_FOUND:?}\n{out}\n{}",
            self.diagnostics()
        );
    }

    /// Asserts exit 1 and exactly `message` (one line) on stdout.
    pub fn assert_error(&self, out: &Outcome, message: &str) {
        assert!(
            out.code() == Some(1) && out.out_trim() == message && out.out_lines().len() == 1,
            "expected exit 1 and stdout exactly {message:?}\n{out}\n{}",
            self.diagnostics()
        );
    }

    /// `erase`, asserting exit 0 and an empty stdout.
    pub fn erase_ok(&self, server_url: &str) {
        let out = self.helper(&["erase"], server_url);
        assert!(
            out.success() && out.stdout.is_empty(),
            "erase {server_url:?}: expected exit 0 and empty stdout\n{out}\n{}",
            self.diagnostics()
        );
    }

    /// `list` (stdin `/dev/null`), asserting exit 0 and a JSON object of strings.
    pub fn list_ok(&self) -> BTreeMap<String, String> {
        let out = self.run(
            self.command(&self.bins.helper).arg("list"),
            Input::Null,
            DEFAULT_TIMEOUT,
        );
        self.parse_list(&out)
    }

    pub fn parse_list(&self, out: &Outcome) -> BTreeMap<String, String> {
        assert!(
            out.success(),
            "list: expected exit 0\n{out}\n{}",
            self.diagnostics()
        );
        let v: serde_json::Value = serde_json::from_str(out.out_trim().as_str())
            .unwrap_or_else(|e| panic!("list: stdout is not JSON ({e})\n{out}"));
        let obj = v
            .as_object()
            .unwrap_or_else(|| panic!("list: stdout is not a JSON object\n{out}"));
        obj.iter()
            .map(|(k, v)| {
                let user = v
                    .as_str()
                    .unwrap_or_else(|| panic!("list: value of {k:?} is not a string\n{out}"));
                (k.clone(), user.to_owned())
            })
            .collect()
    }

    /// `regent status --json`, asserting exit 0.
    pub fn status_json(&self) -> StatusInfo {
        let out = self.regent(&["status", "--json"]);
        assert!(
            out.success(),
            "`regent status --json`: expected exit 0\n{out}\n{}",
            self.diagnostics()
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("`regent status --json` is not a StatusInfo ({e})\n{out}"))
    }

    /// `regent ls --json`, asserting exit 0.
    pub fn ls_json(&self) -> Vec<EntryInfo> {
        let out = self.regent(&["ls", "--json"]);
        assert!(
            out.success(),
            "`regent ls --json`: expected exit 0\n{out}\n{}",
            self.diagnostics()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!("`regent ls --json` is not a list of EntryInfo ({e})\n{out}")
        })
    }

    pub fn assert_no_secret_in_stderr(&self, out: &Outcome, secret: &str) {
        if secret.len() >= 4 {
            assert!(
                !contains(&out.stderr, secret.as_bytes()),
                "a secret appeared on stderr\n{out}"
            );
        }
    }
}
