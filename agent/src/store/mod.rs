//! Persistent secret stores and the non-secret index.

pub mod backend;

pub use backend::{Backend, Op, StoreError, StoreKind};
