//! The memory backend: secrets live in the agent's memory only and are gone
//! when it stops. Nothing touches disk; meant for ephemeral CI runners.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use regent_shared::Secret;

use super::backend::{Backend, Op, StoreError, StoreKind, apply_to_map, snapshot};

#[derive(Default)]
pub struct MemoryBackend {
    secrets: Mutex<HashMap<String, Secret>>,
}

impl MemoryBackend {
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    /// A store holding `records`: what an agent hands over on an upgrade.
    pub fn with_records(records: Vec<(String, Secret)>) -> MemoryBackend {
        MemoryBackend {
            secrets: Mutex::new(records.into_iter().collect()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Secret>> {
        // A panic while holding the lock cannot leave the map half-updated
        // (apply only inserts and removes), so a poisoned lock is still usable.
        self.secrets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Backend for MemoryBackend {
    fn kind(&self) -> StoreKind {
        StoreKind::Memory
    }

    fn location(&self) -> String {
        "agent memory only (lost when the agent stops)".to_owned()
    }

    fn get(&self, key: &str) -> Result<Option<Secret>, StoreError> {
        Ok(self.lock().get(key).cloned())
    }

    fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        let mut secrets = self.lock();
        apply_to_map(&mut secrets, ops);
        Ok(())
    }

    fn is_atomic(&self) -> bool {
        true
    }

    fn load_all(&self) -> Result<Option<Vec<(String, Secret)>>, StoreError> {
        Ok(Some(snapshot(&self.lock())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basics() {
        let backend = MemoryBackend::new();
        assert_eq!(backend.kind(), StoreKind::Memory);
        assert!(backend.is_atomic());
        assert!(backend.get("ghcr.io").unwrap().is_none());

        backend
            .apply(&[
                Op::Set("ghcr.io".into(), Secret::from("one")),
                Op::Set("quay.io".into(), Secret::from("two")),
                Op::Set("ghcr.io".into(), Secret::from("three")),
                Op::Delete("quay.io".into()),
                Op::Delete("never.there".into()),
            ])
            .unwrap();

        assert_eq!(backend.get("ghcr.io").unwrap().unwrap().expose(), "three");
        assert!(backend.get("quay.io").unwrap().is_none());
        let all = backend.load_all().unwrap().unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].0, "ghcr.io");
        assert_eq!(all[0].1.expose(), "three");
    }
}
