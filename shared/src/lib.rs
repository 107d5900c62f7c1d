//! The contract between `docker-credential-regent`, the `regent` CLI and the
//! `regent` agent: wire protocol and framing, registry-key normalisation, the
//! paths policy, the `Secret` type and a small blocking client.
//!
//! This crate is std-only on purpose: the helper links it and must stay tiny.

pub mod client;
pub mod paths;
pub mod protocol;
pub mod registry;
pub mod secret;
pub mod sys;

pub use secret::Secret;

/// The three messages every credential-helper client matches on. Go clients
/// compare the whole trimmed stdout, docker-py looks for the substring.
pub mod messages {
    pub const NOT_FOUND: &str = "credentials not found in native keychain";
    pub const NO_SERVER_URL: &str = "no credentials server URL";
    pub const NO_USERNAME: &str = "no credentials username";
}
