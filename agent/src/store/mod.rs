//! Persistent secret stores and the non-secret index.

mod atomic;
pub mod backend;
pub mod file;
pub mod index;
pub mod keyring;
#[cfg(target_os = "linux")]
pub mod keyutils;
pub mod memory;
pub mod record;
pub mod select;

pub use backend::{Backend, Op, StoreError, StoreKind};
