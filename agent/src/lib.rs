//! The regent agent and its management CLI.

pub mod cli;
pub mod config;
pub mod credentials;
pub mod daemon;
pub mod server;
pub mod store;
