//! `Secret`: a registry password or token.
//!
//! It is zeroed when dropped and has no `Debug`, `Display` or `Serialize`
//! implementation, so it cannot end up in a log line or an error message by
//! accident. The only way to the bytes is [`Secret::expose`], used where the
//! secret legitimately leaves the process: the wire, the store, the `get`
//! payload.

use zeroize::Zeroize;

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }

    /// The secret itself. Call this only at a trust boundary.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Serde glue for protocol fields that carry a secret. Using it is the
/// explicit act of putting a secret on the wire.
pub mod wire {
    use super::Secret;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(secret: &Secret, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(secret.expose())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        String::deserialize(d).map(Secret::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expose_round_trips_bytes() {
        let s = Secret::from("p\"a\\s\ns é");
        assert_eq!(s.expose(), "p\"a\\s\ns é");
        assert_eq!(s.len(), "p\"a\\s\ns é".len());
    }
}
