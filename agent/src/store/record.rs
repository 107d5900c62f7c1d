//! A login as the backends keep it: the whole login in one value.
//!
//! Every backend maps a canonical key to one opaque value. Since format 2
//! that value is the whole login, not the bare secret:
//!
//! ```text
//! regent-login-v2\n
//! {"server_url":"https://index.docker.io/v1/","username":"alice","updated":1700000000}\n
//! <the secret, byte for byte>
//! ```
//!
//! The header line is JSON (so it holds no raw newline); the secret follows
//! unescaped, so a record costs a few dozen bytes more than its secret, not
//! twice its size. Because each backend write replaces one value, a login is
//! always wholly the old or wholly the new one, whatever happens to the index
//! beside it: the index can be checked against the store and rebuilt from it
//! (see [`crate::credentials`]).
//!
//! A value that does not start with the magic line was written by an older
//! regent: it is the bare secret, and its username and server URL live only
//! in the index ([`Decoded::Legacy`]). The next store of that key writes a
//! record.

use regent_shared::Secret;
use serde::{Deserialize, Serialize};

/// The first line of every record.
const MAGIC: &str = "regent-login-v2\n";

/// A whole login, as stored.
pub struct Login {
    /// The server URL exactly as the client stored it.
    pub server_url: String,
    pub username: String,
    /// Unix seconds of the store that wrote it.
    pub updated: i64,
    pub secret: Secret,
}

#[derive(Serialize, Deserialize)]
struct Header<'a> {
    #[serde(borrow)]
    server_url: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    username: std::borrow::Cow<'a, str>,
    updated: i64,
}

/// What a stored value turned out to be.
pub enum Decoded {
    Login(Login),
    /// A bare secret written by a regent before records.
    Legacy(Secret),
}

/// The value to store for `login`.
pub fn encode(server_url: &str, username: &str, updated: i64, secret: &Secret) -> Secret {
    let header = Header {
        server_url: server_url.into(),
        username: username.into(),
        updated,
    };
    // Neither field is secret; only the buffer below holds the secret.
    let header = serde_json::to_string(&header).expect("a header always serialises");
    let mut value = String::with_capacity(MAGIC.len() + header.len() + 1 + secret.len());
    value.push_str(MAGIC);
    value.push_str(&header);
    value.push('\n');
    value.push_str(secret.expose());
    Secret::new(value)
}

/// The number of bytes [`encode`] makes: what a backend with a size limit
/// has to keep.
pub fn encoded_len(server_url: &str, username: &str, updated: i64, secret_len: usize) -> usize {
    let header = Header {
        server_url: server_url.into(),
        username: username.into(),
        updated,
    };
    let header = serde_json::to_string(&header).expect("a header always serialises");
    MAGIC.len() + header.len() + 1 + secret_len
}

/// Reads a stored value. The error says what is wrong, never what the value
/// holds.
pub fn decode(value: Secret) -> Result<Decoded, String> {
    let Some(rest) = value.expose().strip_prefix(MAGIC) else {
        return Ok(Decoded::Legacy(value));
    };
    let Some((header, secret)) = rest.split_once('\n') else {
        return Err("a login record without its header line".to_owned());
    };
    let header: Header<'_> = serde_json::from_str(header)
        .map_err(|e| format!("a login record with a bad header (column {})", e.column()))?;
    Ok(Decoded::Login(Login {
        server_url: header.server_url.into_owned(),
        username: header.username.into_owned(),
        updated: header.updated,
        secret: Secret::new(secret.to_owned()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(value: Secret) -> Login {
        match decode(value).unwrap() {
            Decoded::Login(l) => l,
            Decoded::Legacy(_) => panic!("decoded as legacy"),
        }
    }

    #[test]
    fn round_trips_awkward_logins() {
        for (url, user, secret) in [
            ("https://index.docker.io/v1/", "alice", "s3cret"),
            ("ghcr.io", "ü\"s\ne\\r", "multi\nline\n\nsecret\n"),
            ("h", "u", ""),
            ("h", "u", MAGIC),
            ("h", "", "{\"json\":true}\n"),
        ] {
            let value = encode(url, user, 42, &Secret::from(secret));
            assert_eq!(value.len(), encoded_len(url, user, 42, secret.len()));
            let back = login(value);
            assert_eq!(back.server_url, url);
            assert_eq!(back.username, user);
            assert_eq!(back.updated, 42);
            assert!(back.secret.expose() == secret);
        }
    }

    #[test]
    fn bare_secrets_are_legacy() {
        for old in ["", "plain", "regent-login-v1\nx", "regent-login-v2"] {
            match decode(Secret::from(old)).unwrap() {
                Decoded::Legacy(s) => assert_eq!(s.expose(), old),
                Decoded::Login(_) => panic!("{old:?} decoded as a record"),
            }
        }
    }

    #[test]
    fn broken_records_are_errors_without_the_value() {
        for bad in [
            "regent-login-v2\nno header line",
            "regent-login-v2\n{\"server_url\":1}\nsecret-bytes",
            "regent-login-v2\nnot json\nsecret-bytes",
        ] {
            let err = match decode(Secret::from(bad)) {
                Err(e) => e,
                Ok(_) => panic!("{bad:?} decoded"),
            };
            assert!(!err.contains("secret-bytes"), "{err}");
            assert!(!err.contains("no header line"), "{err}");
        }
    }
}
