//! The wire protocol between clients (the helper, the `regent` CLI) and the agent.
//!
//! # Transport
//! A stream socket that only the user can reach: a Unix-domain socket bound to
//! a filesystem path (never the Linux abstract namespace) inside a 0700
//! directory, or a named pipe on Windows. See [`crate::paths`].
//!
//! # Framing
//! Every message is one frame: a `u32` big-endian length followed by that many
//! bytes of UTF-8 JSON. A length of 0 or above [`MAX_FRAME`] (1 MiB) is a
//! protocol error: the reader rejects it from the 4-byte header, before it
//! allocates anything, and the connection is closed. A connection carries any
//! number of requests; responses come back in request order.
//!
//! # Session
//! The client's first frame is [`Request::Hello`] with its [`PROTOCOL_VERSION`];
//! the agent answers [`Response::Hello`] with its own version and the oldest
//! one it still serves. A client may pipeline its first real request right
//! behind `Hello` (the helper does: one write, two reads). When the agent does
//! not serve the client's version, it answers every later request with
//! [`Response::Error`] of kind [`ErrorKind::Unsupported`], except `Quit`.
//! A client that is newer than the agent sends `Quit` and starts a new agent;
//! `{"type":"Hello",...}` and `{"type":"Quit"}` keep their shape forever so
//! that any two versions can do this.
//!
//! # Unknown messages
//! A frame that is not valid JSON, or names an unknown `type`, gets
//! `Error{kind: BadRequest}`; the connection stays open. A frame that breaks the
//! framing rules closes the connection.
//!
//! # Trust boundary
//! The agent serves only peers whose uid equals its own (checked with
//! `SO_PEERCRED` / `getpeereid` on every connection), on top of the 0700
//! directory. Secrets cross this boundary only inside `Store` and
//! `SecretSet` requests and `Credentials` responses, and as the caller's AWS
//! credentials in the `env` of `Get` ([`CallerEnv`], zeroed on drop, never
//! `Debug`-printed); every buffer that held a frame is zeroed after use.
//! Errors never carry a secret: decoding errors report only their position,
//! never the offending value.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::Secret;

/// Bump on any change a peer of the previous version could misread. Never derive
/// it from the crate version.
///
/// 2: [`Response::NeedEnv`] and `Get.env_complete`. The agent sends
/// `NeedEnv` only to clients that said 2 or more in their `Hello`.
pub const PROTOCOL_VERSION: u32 = 2;

/// The oldest client protocol this agent still serves.
pub const MIN_SUPPORTED_PROTOCOL: u32 = 1;
const _: () = assert!(MIN_SUPPORTED_PROTOCOL <= PROTOCOL_VERSION);

/// The largest frame either side accepts: 1 MiB of JSON.
pub const MAX_FRAME: usize = 1 << 20;

/// Environment variables of the caller that the helper forwards with every
/// `Get`: the caller's cloud identity and where it points, so that a token
/// is minted for whoever asks (`AWS_PROFILE=x docker pull ...` picks profile
/// `x`, a CI job's keys are that job's), never for whoever started the agent.
///
/// AWS: keys and session token, the profile and the files it is read from,
/// web identity (role, token file, session name), container credentials
/// (ECS, EKS Pod Identity); where they lead: regions, endpoint overrides,
/// FIPS / dual-stack, the instance-metadata switches. Google: the
/// credentials file and gcloud's configuration directory. Azure: the
/// tenant, client and federated token file of workload identity, the
/// authority host, the `az` CLI's configuration directory. Nothing else of
/// the caller's environment reaches the agent unless a `[[registry]]` entry
/// names it (`Response::NeedEnv`). Some values are secrets: they travel in a
/// [`CallerEnv`].
pub const FORWARDED_ENV: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
    "AWS_ROLE_SESSION_NAME",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_ECR",
    "AWS_ENDPOINT_URL_ECR_PUBLIC",
    "AWS_ENDPOINT_URL_STS",
    "AWS_ENDPOINT_URL_SSO",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_USE_FIPS_ENDPOINT",
    "AWS_USE_DUALSTACK_ENDPOINT",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
    "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CLOUDSDK_CONFIG",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_ID",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "AZURE_CONFIG_DIR",
];

/// The longest value of a forwarded variable; a longer one is not
/// forwarded (all of [`FORWARDED_ENV`] at this size still fit in a frame).
pub const MAX_FORWARDED_VALUE: usize = 16 * 1024;
/// The most variables a [`Response::NeedEnv`] may ask for; a client
/// ignores the rest.
pub const MAX_NAMED_ENV: usize = 16;
const _: () = assert!(
    (FORWARDED_ENV.len() + MAX_NAMED_ENV) * (MAX_FORWARDED_VALUE + 64) < MAX_FRAME - 64 * 1024
);

/// Whether `name` may be asked for in [`Response::NeedEnv`]: a portable
/// environment variable name (`[A-Za-z_][A-Za-z0-9_]*`, at most 128 bytes).
pub fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= 128
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Variables of the caller, by name, as `Get` carries them.
///
/// Values may be secrets (`AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`):
/// they are zeroed on drop, and `Debug` shows the names only. On the wire it
/// is a plain JSON object of strings.
#[derive(Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallerEnv(BTreeMap<String, String>);

impl CallerEnv {
    /// The non-empty variables of `names` in this process's environment
    /// (values above [`MAX_FORWARDED_VALUE`] bytes are left out).
    pub fn from_process(names: &[&str]) -> CallerEnv {
        CallerEnv(
            names
                .iter()
                .filter_map(|name| {
                    let value = std::env::var(name).ok()?;
                    (!value.is_empty() && value.len() <= MAX_FORWARDED_VALUE)
                        .then(|| ((*name).to_owned(), value))
                })
                .collect(),
        )
    }

    /// Only the variables named in `names`.
    pub fn subset(&self, names: &[&str]) -> CallerEnv {
        self.filtered(|name| names.contains(&name))
    }

    /// Only the variables whose names `keep` accepts.
    pub fn filtered(&self, keep: impl Fn(&str) -> bool) -> CallerEnv {
        CallerEnv(
            self.0
                .iter()
                .filter(|(name, _)| keep(name))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        )
    }

    /// Adds the non-empty variables of `names` that are valid names
    /// ([`is_env_name`]) from this process's environment, at most
    /// [`MAX_NAMED_ENV`] of them (values above [`MAX_FORWARDED_VALUE`]
    /// bytes are left out): the answer to [`Response::NeedEnv`].
    pub fn add_from_process(&mut self, names: &[String]) {
        for name in names.iter().filter(|n| is_env_name(n)).take(MAX_NAMED_ENV) {
            if let Ok(value) = std::env::var(name)
                && !value.is_empty()
                && value.len() <= MAX_FORWARDED_VALUE
            {
                self.set(name.as_str(), value);
            }
        }
    }

    /// A non-empty value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    pub fn set(&mut self, name: impl Into<String>, value: impl Into<String>) {
        if let Some(mut old) = self.0.insert(name.into(), value.into()) {
            zeroize::Zeroize::zeroize(&mut old);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    pub fn iter(&self) -> std::collections::btree_map::Iter<'_, String, String> {
        self.0.iter()
    }
}

impl<'a> IntoIterator for &'a CallerEnv {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl<const N: usize> From<[(&str, &str); N]> for CallerEnv {
    fn from(vars: [(&str, &str); N]) -> CallerEnv {
        CallerEnv(
            vars.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }
}

impl fmt::Debug for CallerEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Drop for CallerEnv {
    fn drop(&mut self) {
        for value in self.0.values_mut() {
            zeroize::Zeroize::zeroize(value);
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Request {
    Hello {
        proto: u32,
        /// Who is calling, for the log: `helper` or `cli`.
        client: String,
        version: String,
    },
    /// Look up credentials. `server_url` is exactly what the client sent; the
    /// agent owns normalisation. `env`: the caller's [`FORWARDED_ENV`]
    /// variables that are set (the agent ignores any other name), and, in
    /// a `Get` that answers [`Response::NeedEnv`], the ones it asked for;
    /// that `Get` says `env_complete`, so that a variable missing from it is
    /// known to be unset.
    Get {
        server_url: String,
        #[serde(default, skip_serializing_if = "CallerEnv::is_empty")]
        env: CallerEnv,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        env_complete: bool,
    },
    Store {
        server_url: String,
        username: String,
        #[serde(with = "crate::secret::wire")]
        secret: Secret,
    },
    Erase {
        server_url: String,
    },
    /// `{server URL as stored: username}` of the stored logins, for the
    /// helper's `list`; answered with [`Response::List`].
    #[serde(rename = "List")]
    ListLogins,
    /// One row per credential, stored or from a source, with its metadata,
    /// for `regent ls`; answered with [`Response::Entries`].
    #[serde(rename = "Entries")]
    ListEntries,
    Status,
    /// Ask the agent to exit. Its shape never changes.
    Quit,
    /// Re-read the config file's token sources. A file that does not parse
    /// is refused and the config in force stays.
    Reload,
    /// Set a named secret that config entries refer to (`regent secret set`).
    SecretSet {
        name: String,
        #[serde(with = "crate::secret::wire")]
        secret: Secret,
    },
    /// Remove a named secret; removing one that is not there succeeds.
    SecretRm {
        name: String,
    },
    /// The names of the named secrets (never their values).
    SecretLs,
}

impl Request {
    /// The message type, for logs. Never includes a field value.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Get { .. } => "get",
            Request::Store { .. } => "store",
            Request::Erase { .. } => "erase",
            Request::ListLogins => "list",
            Request::ListEntries => "entries",
            Request::Status => "status",
            Request::Quit => "quit",
            Request::Reload => "reload",
            Request::SecretSet { .. } => "secret-set",
            Request::SecretRm { .. } => "secret-rm",
            Request::SecretLs => "secret-ls",
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum Response {
    Hello {
        proto: u32,
        min_proto: u32,
        version: String,
        pid: u32,
    },
    Credentials {
        server_url: String,
        username: String,
        #[serde(with = "crate::secret::wire")]
        secret: Secret,
    },
    NotFound,
    /// To a `Get` (protocol 2): the registry's `[[registry]]` entry reads
    /// these variables of the caller (the `env` source). The client sends
    /// the `Get` again on the same connection, with them added to `env` and
    /// `env_complete` set. At most [`MAX_NAMED_ENV`] names.
    NeedEnv {
        names: Vec<String>,
    },
    /// A store, erase or quit was carried out (for a store: durably).
    Done,
    List {
        entries: BTreeMap<String, String>,
    },
    Entries {
        entries: Vec<EntryInfo>,
    },
    Status(Box<StatusInfo>),
    /// The config was re-read: the file and how many `[[registry]]` entries
    /// are now in force.
    Reloaded {
        config: String,
        rules: usize,
    },
    Secrets {
        names: Vec<String>,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

impl Response {
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Response::Error {
            kind,
            message: message.into(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Response::Hello { .. } => "hello",
            Response::Credentials { .. } => "credentials",
            Response::NotFound => "not-found",
            Response::NeedEnv { .. } => "need-env",
            Response::Done => "done",
            Response::List { .. } => "list",
            Response::Entries { .. } => "entries",
            Response::Status(_) => "status",
            Response::Reloaded { .. } => "reloaded",
            Response::Secrets { .. } => "secrets",
            Response::Error { .. } => "error",
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The request was malformed or named an invalid registry.
    BadRequest,
    /// The agent does not serve this client's protocol version.
    Unsupported,
    /// The persistent store refused or failed.
    Store,
    /// A token source failed and no valid credential is cached.
    Source,
    Internal,
}

/// One credential as `regent ls` shows it. No secret.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// The server URL exactly as it was stored.
    pub server_url: String,
    /// The canonical registry key.
    pub key: String,
    pub username: String,
    /// Where the credential comes from: `static` for stored logins, else the
    /// name of the token source (`exec`, ...).
    pub source: String,
    /// Unix seconds.
    pub created: i64,
    pub updated: i64,
    /// When the token expires (Unix seconds); tokens from sources only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
    /// When the source last produced a token (Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh: Option<i64>,
    /// Why the last fetch failed, if it did; cleared by a success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StatusInfo {
    pub pid: u32,
    pub version: String,
    pub proto: u32,
    /// Unix seconds.
    pub started: i64,
    pub uptime_secs: u64,
    pub socket: String,
    /// `keyring`, `file`, `keyutils` or `memory`.
    pub store: String,
    /// Why this store was chosen, in words (one line).
    pub store_reason: String,
    /// Where the store keeps its data, if anywhere: a path or a keyring
    /// name, nothing else.
    pub store_location: Option<String>,
    /// More about the location: the cipher, where the master key comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store_detail: Option<String>,
    pub credentials: usize,
    /// The config file's path, whether or not it exists.
    pub config: Option<String>,
    /// True when the config file exists.
    #[serde(default)]
    pub config_present: bool,
    pub log: Option<String>,
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer closed the connection cleanly between frames.
    #[error("connection closed")]
    Closed,
    #[error("connection closed in the middle of a frame")]
    Truncated,
    #[error("frame of {0} bytes is larger than the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("empty frame")]
    Empty,
    #[error("malformed message: {0}")]
    Json(JsonError),
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl FrameError {
    /// True when the framing itself is broken and the connection must close.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FrameError::Json(_))
    }
}

/// A JSON error reduced to its category and position: serde_json's own
/// message can quote the offending value, which may be a secret.
#[derive(Debug)]
pub struct JsonError {
    category: &'static str,
    line: usize,
    column: usize,
}

impl From<serde_json::Error> for JsonError {
    fn from(e: serde_json::Error) -> Self {
        use serde_json::error::Category;
        let category = match e.classify() {
            Category::Io => "i/o error",
            Category::Syntax => "syntax error",
            Category::Data => "unexpected content",
            Category::Eof => "unexpected end",
        };
        JsonError {
            category,
            line: e.line(),
            column: e.column(),
        }
    }
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.category, self.line, self.column
        )
    }
}

/// Checks a frame header and returns the body length.
pub fn frame_len(header: [u8; 4]) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(header) as usize;
    match len {
        0 => Err(FrameError::Empty),
        n if n > MAX_FRAME => Err(FrameError::TooLarge(n)),
        n => Ok(n),
    }
}

/// Encodes one message as a frame (header and body in one buffer, zeroed on drop).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Zeroizing<Vec<u8>>, FrameError> {
    let mut buf = Zeroizing::new(Vec::with_capacity(256));
    buf.extend_from_slice(&[0; 4]);
    serde_json::to_writer(&mut *buf, msg).map_err(|e| FrameError::Json(e.into()))?;
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    buf[..4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(buf)
}

/// Decodes a frame body.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    serde_json::from_slice(body).map_err(|e| FrameError::Json(e.into()))
}

pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let buf = encode_frame(msg)?;
    w.write_all(&buf)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame. The body buffer is zeroed once decoded.
pub fn read_frame<R: Read, T: DeserializeOwned>(r: &mut R) -> Result<T, FrameError> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Closed),
            Ok(0) => return Err(FrameError::Truncated),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = frame_len(header)?;
    let mut body = Zeroizing::new(vec![0u8; len]);
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => FrameError::Truncated,
        _ => FrameError::Io(e),
    })?;
    decode_body(&body)
}

/// Reads frames from one stream through a buffer that is zeroed when it is
/// dropped or outgrown. The agent answers a `Hello` and the request behind
/// it in one write, so both answers usually come in one read, not four.
/// Bytes read past the last frame asked for are dropped with the reader:
/// use one only where nothing follows the answers it is asked to read.
pub struct FrameReader {
    buf: Zeroizing<Vec<u8>>,
    start: usize,
    end: usize,
}

impl FrameReader {
    pub fn new() -> Self {
        FrameReader {
            buf: Zeroizing::new(vec![0; 1024]),
            start: 0,
            end: 0,
        }
    }

    /// The next frame, as [`read_frame`] reads it.
    pub fn read<R: Read, T: DeserializeOwned>(&mut self, r: &mut R) -> Result<T, FrameError> {
        self.fill(r, 4)?;
        let header = self.buf[self.start..self.start + 4]
            .try_into()
            .expect("4 bytes");
        let len = frame_len(header)?;
        self.fill(r, 4 + len)?;
        let body = self.start + 4..self.start + 4 + len;
        self.start = body.end;
        decode_body(&self.buf[body])
    }

    /// Whether a whole frame (or a header that will not do) is buffered:
    /// the next [`FrameReader::read`] reads nothing from the stream.
    pub fn holds_a_frame(&self) -> bool {
        let held = &self.buf[self.start..self.end];
        match held.first_chunk::<4>().map(|h| frame_len(*h)) {
            Some(Ok(len)) => held.len() >= 4 + len,
            Some(Err(_)) => true,
            None => false,
        }
    }

    /// Reads until `need` bytes from `start` are buffered.
    fn fill<R: Read>(&mut self, r: &mut R, need: usize) -> Result<(), FrameError> {
        if self.start + need > self.buf.len() {
            // Move what is left to the front of a buffer that holds the
            // frame; the old one is zeroed as it is dropped.
            let mut bigger = Zeroizing::new(vec![0; need.max(self.buf.len())]);
            bigger[..self.end - self.start].copy_from_slice(&self.buf[self.start..self.end]);
            self.end -= self.start;
            self.start = 0;
            self.buf = bigger;
        }
        while self.end - self.start < need {
            match r.read(&mut self.buf[self.end..]) {
                Ok(0) if self.end == self.start => return Err(FrameError::Closed),
                Ok(0) => return Err(FrameError::Truncated),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn expect_err<T>(r: Result<T, FrameError>) -> FrameError {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e,
        }
    }

    fn round_trip_request(req: &Request) -> Request {
        let frame = encode_frame(req).unwrap();
        read_frame(&mut Cursor::new(frame.to_vec())).unwrap()
    }

    #[test]
    fn hello_and_quit_keep_their_shape() {
        // Every version must be able to read these two, so they are pinned.
        let hello = Request::Hello {
            proto: 7,
            client: "helper".into(),
            version: "9.9.9".into(),
        };
        assert_eq!(
            serde_json::to_string(&hello).unwrap(),
            r#"{"type":"Hello","proto":7,"client":"helper","version":"9.9.9"}"#
        );
        assert_eq!(
            serde_json::to_string(&Request::Quit).unwrap(),
            r#"{"type":"Quit"}"#
        );
        let reply: Response = serde_json::from_str(
            r#"{"type":"Hello","proto":2,"min_proto":1,"version":"x","pid":4}"#,
        )
        .unwrap();
        assert!(matches!(
            reply,
            Response::Hello {
                proto: 2,
                min_proto: 1,
                pid: 4,
                ..
            }
        ));
    }

    #[test]
    fn store_round_trips_awkward_secrets() {
        let secret = format!("q\"b\\n\nü€\u{0}{}", "x".repeat(64 * 1024));
        let req = Request::Store {
            server_url: "https://index.docker.io/v1/".into(),
            username: "<token>".into(),
            secret: Secret::new(secret.clone()),
        };
        match round_trip_request(&req) {
            Request::Store {
                server_url,
                username,
                secret: s,
            } => {
                assert_eq!(server_url, "https://index.docker.io/v1/");
                assert_eq!(username, "<token>");
                assert_eq!(s.expose(), secret);
            }
            _ => panic!("wrong variant"),
        }
    }

    #[test]
    fn get_omits_empty_env_and_reads_missing_env() {
        let req = Request::Get {
            server_url: "ghcr.io".into(),
            env: CallerEnv::default(),
            env_complete: false,
        };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(json, r#"{"type":"Get","server_url":"ghcr.io"}"#);
        assert!(matches!(round_trip_request(&req), Request::Get { env, .. } if env.is_empty()));
    }

    #[test]
    fn get_env_is_a_plain_object_and_debug_shows_names_only() {
        let env = CallerEnv::from([
            ("AWS_PROFILE", "p"),
            ("AWS_SECRET_ACCESS_KEY", "hunter2-secret"),
        ]);
        let req = Request::Get {
            server_url: "r".into(),
            env: env.clone(),
            env_complete: false,
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"type":"Get","server_url":"r","env":{"AWS_PROFILE":"p","AWS_SECRET_ACCESS_KEY":"hunter2-secret"}}"#
        );
        match round_trip_request(&req) {
            Request::Get { env: back, .. } => assert_eq!(back, env),
            _ => panic!("wrong variant"),
        }
        let debug = format!("{env:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("AWS_SECRET_ACCESS_KEY"), "{debug}");
        assert_eq!(
            env.subset(&["AWS_PROFILE"]).names().collect::<Vec<_>>(),
            ["AWS_PROFILE"]
        );
        assert_eq!(env.get("AWS_PROFILE"), Some("p"));
        assert_eq!(CallerEnv::from([("X", "")]).get("X"), None);
    }

    #[test]
    fn header_is_big_endian_length() {
        let frame = encode_frame(&Request::ListLogins).unwrap();
        let body = br#"{"type":"List"}"#;
        assert_eq!(&frame[..4], &(body.len() as u32).to_be_bytes());
        assert_eq!(&frame[4..], body);
    }

    #[test]
    fn renamed_variants_keep_their_wire_names() {
        assert_eq!(
            serde_json::to_string(&Request::ListEntries).unwrap(),
            r#"{"type":"Entries"}"#
        );
        let back: Request = serde_json::from_str(r#"{"type":"Entries"}"#).unwrap();
        assert!(matches!(back, Request::ListEntries));
        let back: Request = serde_json::from_str(r#"{"type":"List"}"#).unwrap();
        assert!(matches!(back, Request::ListLogins));
    }

    #[test]
    fn oversize_frame_is_rejected_from_the_header() {
        let mut bytes = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(b"{}");
        let err = expect_err(read_frame::<_, Request>(&mut Cursor::new(bytes)));
        assert!(matches!(err, FrameError::TooLarge(n) if n == MAX_FRAME + 1));
        assert!(err.is_fatal());
        // u32::MAX must not be allocated either.
        let err = frame_len(u32::MAX.to_be_bytes()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)));
    }

    #[test]
    fn empty_frame_is_rejected() {
        let err = expect_err(read_frame::<_, Request>(&mut Cursor::new(vec![0, 0, 0, 0])));
        assert!(matches!(err, FrameError::Empty));
    }

    #[test]
    fn truncated_frames_are_told_apart_from_clean_close() {
        let err = expect_err(read_frame::<_, Request>(&mut Cursor::new(Vec::new())));
        assert!(matches!(err, FrameError::Closed));
        let err = expect_err(read_frame::<_, Request>(&mut Cursor::new(vec![0, 0])));
        assert!(matches!(err, FrameError::Truncated));
        let mut bytes = 10u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"{\"ty");
        let err = expect_err(read_frame::<_, Request>(&mut Cursor::new(bytes)));
        assert!(matches!(err, FrameError::Truncated));
    }

    /// Hands out at most `step` bytes a read, counting the reads.
    struct Trickle {
        bytes: Cursor<Vec<u8>>,
        step: usize,
        reads: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            let n = buf.len().min(self.step);
            self.bytes.read(&mut buf[..n])
        }
    }

    fn erase(server_url: &str) -> Request {
        Request::Erase {
            server_url: server_url.into(),
        }
    }

    fn server_of(req: Request) -> String {
        match req {
            Request::Erase { server_url } => server_url,
            other => panic!("expected an erase, got {}", other.kind()),
        }
    }

    #[test]
    fn frame_reader_reads_two_frames_from_one_read_and_big_ones_across_many() {
        let big = "b".repeat(10_000);
        let mut bytes = Vec::new();
        for url in ["one", "two", big.as_str()] {
            bytes.extend_from_slice(&encode_frame(&erase(url)).unwrap());
        }
        let mut whole = Trickle {
            bytes: Cursor::new(bytes.clone()),
            step: usize::MAX,
            reads: 0,
        };
        let mut frames = FrameReader::new();
        assert!(!frames.holds_a_frame());
        assert_eq!(server_of(frames.read(&mut whole).unwrap()), "one");
        assert!(frames.holds_a_frame());
        assert_eq!(server_of(frames.read(&mut whole).unwrap()), "two");
        assert_eq!(whole.reads, 1, "both small frames came from the first read");
        assert!(!frames.holds_a_frame(), "the big one is only begun");
        assert_eq!(server_of(frames.read(&mut whole).unwrap()), big);
        assert!(matches!(
            expect_err(frames.read::<_, Request>(&mut whole)),
            FrameError::Closed
        ));

        let mut slow = Trickle {
            bytes: Cursor::new(bytes),
            step: 3,
            reads: 0,
        };
        let mut frames = FrameReader::new();
        for want in ["one", "two", big.as_str()] {
            assert_eq!(server_of(frames.read(&mut slow).unwrap()), want);
        }
    }

    #[test]
    fn frame_reader_tells_truncation_from_a_clean_close() {
        let frame = encode_frame(&erase("one")).unwrap();
        for cut in [2, 4, frame.len() - 1] {
            let mut r = Cursor::new(frame[..cut].to_vec());
            let err = expect_err(FrameReader::new().read::<_, Request>(&mut r));
            assert!(
                matches!(err, FrameError::Truncated),
                "cut at {cut}: {err:?}"
            );
        }
        let mut r = Cursor::new(vec![0, 0, 0, 0]);
        assert!(matches!(
            expect_err(FrameReader::new().read::<_, Request>(&mut r)),
            FrameError::Empty
        ));
    }

    #[test]
    fn oversize_message_is_not_encoded() {
        let req = Request::Store {
            server_url: "r".into(),
            username: "u".into(),
            secret: Secret::new("x".repeat(MAX_FRAME)),
        };
        assert!(matches!(encode_frame(&req), Err(FrameError::TooLarge(_))));
    }

    #[test]
    fn unknown_type_is_a_recoverable_error_without_the_value() {
        let body = br#"{"type":"Store","server_url":"r","username":"u","secret":12345678}"#;
        let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(body);
        let err = expect_err(read_frame::<_, Request>(&mut Cursor::new(bytes)));
        assert!(!err.is_fatal());
        assert!(!err.to_string().contains("12345678"), "{err}");

        let body = br#"{"type":"Frobnicate","secret":"hunter2"}"#;
        let err = expect_err(decode_body::<Request>(body));
        assert!(!err.is_fatal());
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn string_secret_in_wrong_place_is_not_quoted() {
        // serde_json would normally say: invalid type: string "hunter2", expected u32
        let body = br#"{"type":"Hello","proto":"hunter2","client":"c","version":"v"}"#;
        let err = expect_err(decode_body::<Request>(body));
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
