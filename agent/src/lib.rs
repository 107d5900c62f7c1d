//! The regent agent and its management CLI.

pub mod cli;
pub mod clientconf;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod environ;
pub mod import;
pub mod named_secrets;
pub mod refresh;
pub mod setup;
pub mod sources;
pub mod store;
