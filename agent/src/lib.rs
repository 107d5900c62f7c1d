//! The regent agent and its management CLI.

pub mod store;
