//! The regent agent and its management CLI: two wings over a common core.
//!
//! - [`cli`]: the `regent` commands (a file per command), which talk to the
//!   agent over its socket like any client.
//! - [`daemon`]: `regent agent`, the process that serves the socket.
//! - The core both use: [`config`], [`credentials`] (the table of logins
//!   over a [`store`] backend), [`named_secrets`], [`sources`] of tokens and
//!   their [`refresh`] engine, the [`clock`], and [`environ`] (the agent's
//!   clean environment).

pub mod cli;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod environ;
pub mod named_secrets;
pub mod reference;
pub mod refresh;
#[cfg(feature = "http")]
pub mod registry_auth;
pub mod sources;
pub mod store;
pub mod sys;
