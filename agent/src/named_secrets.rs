//! Named secrets: inputs that config entries refer to by name
//! (`env = { TOKEN = { secret = "corp-token" } }`) instead of embedding them.
//!
//! They are set with `regent secret set NAME` (the value comes from stdin,
//! never argv), removed with `regent secret rm NAME` and listed by name with
//! `regent secret ls`. They live in the credential store under the key
//! `secret:NAME`, which can never be a registry key: `registry::canonical`
//! refuses it (`secret` would be a host and `NAME` a port that is not a
//! number). So the helper's `get`, `store`, `erase` and `list` never see
//! them, and `regent ls` leaves them out.
//!
//! This module is the policy alone (names, the key prefix, the limits) and
//! depends on nothing else in the agent. Sources read named secrets through
//! [`crate::sources::SecretLookup`], which the credential table implements
//! ([`crate::credentials`]).

/// The store-key prefix of named secrets.
pub const PREFIX: &str = "secret:";

/// The longest name accepted.
const MAX_NAME: usize = 128;

/// The largest value accepted (the wire frame is 1 MiB).
pub const MAX_VALUE: usize = 64 << 10;

/// A name [`check_name`] refuses; holds the name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not a valid secret name: use 1 to {max} letters, digits, \
     '.', '_' or '-', starting with a letter",
    max = MAX_NAME
)]
pub struct InvalidName(pub String);

/// The name a source setting refers to with `{ secret = "NAME" }`.
/// `setting` is the key (`client_secret`), `what` what it stands for (`key`,
/// `secret`), `how` how to write it; a string (the secret itself) is
/// refused without being quoted.
pub fn setting_ref(
    setting: &str,
    what: &str,
    value: toml::Value,
    how: &str,
) -> Result<String, String> {
    let shape = || format!("`{setting}` must be `{{ secret = \"NAME\" }}`: {how}");
    match value {
        toml::Value::String(_) => Err(format!(
            "`{setting}` must not hold the {what} itself (a config file is no place for it): \
             {how}"
        )),
        toml::Value::Table(mut table) => {
            let name = match table.remove("secret") {
                Some(toml::Value::String(name)) if table.is_empty() => name,
                _ => return Err(shape()),
            };
            check_name(&name).map_err(|e| format!("`{setting}`: {e}"))?;
            Ok(name)
        }
        _ => Err(shape()),
    }
}

/// A name is 1-128 of `A-Z a-z 0-9 . _ -`, starting with a letter: `secret:443`
/// would be a registry key (host `secret`, port 443).
pub fn check_name(name: &str) -> Result<(), InvalidName> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.as_bytes()[0].is_ascii_alphabetic()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(InvalidName(name.to_owned()))
    }
}

/// The store key of a named secret.
pub fn store_key(name: &str) -> String {
    format!("{PREFIX}{name}")
}

/// True for store keys that hold a named secret rather than a registry login.
pub fn is_secret_key(key: &str) -> bool {
    key.starts_with(PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_refers_to_a_secret_by_name_and_never_holds_it() {
        let v = |s: &str| -> toml::Value {
            toml::from_str::<toml::Table>(&format!("x = {s}")).unwrap()["x"].clone()
        };
        assert_eq!(
            setting_ref("k", "key", v("{ secret = \"gh-app\" }"), "HOW"),
            Ok("gh-app".to_owned())
        );
        assert_eq!(
            setting_ref("k", "key", v("\"-----BEGIN RSA\""), "HOW").unwrap_err(),
            "`k` must not hold the key itself (a config file is no place for it): HOW"
        );
        for bad in ["{ secret = \"a\", x = 1 }", "{ name = \"a\" }", "3"] {
            assert_eq!(
                setting_ref("k", "key", v(bad), "HOW").unwrap_err(),
                "`k` must be `{ secret = \"NAME\" }`: HOW",
                "{bad}"
            );
        }
        let e = setting_ref("k", "key", v("{ secret = \"9x\" }"), "HOW").unwrap_err();
        assert!(e.starts_with("`k`: "), "{e}");
    }

    #[test]
    fn secret_keys_are_never_registry_keys() {
        for name in ["corp-token", "a", "x.y_z-1", "a443", "Z9"] {
            check_name(name).unwrap();
            let key = store_key(name);
            assert!(
                regent_shared::registry::canonical(&key).is_err(),
                "{key} parses as a registry key"
            );
        }
    }

    #[test]
    fn names_are_checked() {
        for bad in [
            "",
            "-x",
            "443",
            "8080",
            "a b",
            "a/b",
            "a:b",
            "ü",
            &"x".repeat(129),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_refusal_reads_as_before() {
        assert_eq!(
            check_name("a b").unwrap_err().to_string(),
            "\"a b\" is not a valid secret name: use 1 to 128 letters, digits, '.', '_' or '-', \
             starting with a letter"
        );
    }
}
