//! The regent agent and its management CLI.

pub mod cli;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod environ;
pub mod named_secrets;
pub mod refresh;
pub mod server;
pub mod sources;
pub mod store;
