//! `regent import`: move plaintext credentials out of docker's
//! `config.json` and containers' `auth.json` into regent's store.
//!
//! For every `auths.<registry>` entry with an `identitytoken` (stored as
//! user `<token>`, the way docker's helpers keep identity tokens) or an
//! `auth` (base64 of `user:password`), the credential is stored through the
//! agent. Only once the agent has acknowledged it is the entry removed from
//! the file (backup kept, see [`crate::clientconf`]); `--keep` leaves the
//! files alone. A file is only cleaned when its client already asks regent
//! (docker: `credsStore` or `credHelpers` naming regent; podman: regent's
//! registries.conf.d drop-in), so that no client loses a login it can still
//! use. Malformed entries are reported and skipped. Secrets are never printed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use base64::Engine;
use regent_shared::client::{self, Connection};
use regent_shared::protocol::{Request, Response};
use regent_shared::{Secret, registry};
use serde::Serialize;
use serde_json::Value;
use zeroize::Zeroizing;

use crate::clientconf::{self, JsonFile};
use crate::setup::{HELPER_NAME, dropin_paths};

pub struct Args {
    pub files: Vec<PathBuf>,
    pub keep: bool,
    pub dry_run: bool,
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    /// docker's config.json: an emptied entry stays as `{}` (docker lists
    /// logins from those keys when a credsStore is set).
    Docker,
    /// containers' auth.json: the entry is removed.
    Containers,
}

#[derive(Serialize)]
struct Outcome {
    file: String,
    registry: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    /// imported | would-import | skipped | failed
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// True when the entry was removed from the file.
    removed: bool,
}

pub fn run(args: Args, opts: &client::Options) -> anyhow::Result<ExitCode> {
    let files: Vec<(PathBuf, Flavor)> = if args.files.is_empty() {
        let mut files = vec![(clientconf::docker_config_path(), Flavor::Docker)];
        for path in clientconf::containers_auth_paths() {
            files.push((path, Flavor::Containers));
        }
        files.into_iter().filter(|(p, _)| p.exists()).collect()
    } else {
        args.files
            .iter()
            .map(|p| {
                let flavor = if p.file_name().is_some_and(|n| n == "config.json") {
                    Flavor::Docker
                } else {
                    Flavor::Containers
                };
                (p.clone(), flavor)
            })
            .collect()
    };

    let mut outcomes = Vec::new();
    let mut conn: Option<Connection> = None;
    let mut failed = false;
    for (path, flavor) in &files {
        let mut file = JsonFile::load(path)?;
        let wired = client_asks_regent(&file, *flavor);
        let Some(Value::Object(auths)) = file.value.get("auths").cloned() else {
            continue;
        };
        let mut imported = Vec::new();
        for (registry, entry) in &auths {
            let mut outcome = Outcome {
                file: path.display().to_string(),
                registry: registry.clone(),
                username: None,
                result: "skipped",
                reason: None,
                removed: false,
            };
            match decode_entry(entry) {
                Ok(None) => continue,
                Err(why) => {
                    outcome.reason = Some(why);
                    outcomes.push(outcome);
                    continue;
                }
                Ok(Some((username, secret))) => {
                    outcome.username = Some(username.clone());
                    if registry::canonical(registry).is_err() {
                        outcome.reason = Some("not a registry name regent can key".into());
                    } else if args.dry_run {
                        outcome.result = "would-import";
                    } else {
                        let c = match &mut conn {
                            Some(c) => c,
                            None => {
                                let (c, _) = client::call_with(opts, &Request::Status)?;
                                conn.insert(c)
                            }
                        };
                        let req = Request::Store {
                            server_url: registry.clone(),
                            username,
                            secret,
                        };
                        match c.call(&req, Duration::from_secs(30)) {
                            Ok(Response::Done) => {
                                outcome.result = "imported";
                                imported.push(registry.clone());
                            }
                            Ok(Response::Error { message, .. }) => {
                                outcome.result = "failed";
                                outcome.reason = Some(message);
                                failed = true;
                            }
                            Ok(other) => {
                                outcome.result = "failed";
                                outcome.reason =
                                    Some(format!("unexpected answer: {}", other.kind()));
                                failed = true;
                            }
                            Err(e) => {
                                outcome.result = "failed";
                                outcome.reason = Some(e.to_string());
                                failed = true;
                                conn = None;
                            }
                        }
                    }
                    outcomes.push(outcome);
                }
            }
        }

        if imported.is_empty() || args.keep || args.dry_run {
            continue;
        }
        if !wired {
            if !args.json {
                let how = match flavor {
                    Flavor::Docker => "regent setup docker",
                    Flavor::Containers => "regent setup podman",
                };
                println!(
                    "kept the plaintext entries in {}: its clients do not ask regent yet; run \
                     `{how}`, then `regent import` again to remove them",
                    path.display()
                );
            }
            continue;
        }
        let Some(Value::Object(auths)) = file.value.get_mut("auths") else {
            continue;
        };
        for registry in &imported {
            match flavor {
                Flavor::Docker => {
                    auths.insert(registry.clone(), Value::Object(Default::default()));
                }
                Flavor::Containers => {
                    auths.remove(registry);
                }
            }
        }
        if let Some(backup) = file.save()?
            && !args.json
        {
            println!("backup of {} saved as {}", path.display(), backup.display());
        }
        for o in outcomes.iter_mut() {
            if o.file == path.display().to_string() && imported.contains(&o.registry) {
                o.removed = true;
            }
        }
    }

    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    } else if outcomes.is_empty() {
        if files.is_empty() {
            println!("found no docker config.json or containers auth.json to import from");
        } else {
            println!("no plaintext credentials found in:");
            for (path, _) in &files {
                println!("  {}", path.display());
            }
        }
    } else {
        for o in &outcomes {
            let user = o
                .username
                .as_deref()
                .map(|u| format!(" as {u}"))
                .unwrap_or_default();
            let how = match (o.result, o.removed) {
                ("imported", true) => " (removed from the file)".to_owned(),
                _ => String::new(),
            };
            let why = o
                .reason
                .as_deref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            println!(
                "{:<12} {}{user} from {}{how}{why}",
                o.result, o.registry, o.file
            );
        }
    }
    if failed {
        bail!("some credentials could not be stored (see above); their entries were kept");
    }
    Ok(ExitCode::SUCCESS)
}

/// The credential of one `auths` entry: `Ok(None)` for an entry without a
/// secret (docker's `{}` placeholders), `Err` for a malformed one.
fn decode_entry(entry: &Value) -> Result<Option<(String, Secret)>, String> {
    let Value::Object(entry) = entry else {
        return Err("the entry is not a JSON object".into());
    };
    let text = |key: &str| -> Result<Option<&str>, String> {
        match entry.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(format!("\"{key}\" is not a string")),
        }
    };
    if let Some(token) = text("identitytoken")? {
        return Ok(Some(("<token>".to_owned(), Secret::from(token))));
    }
    let Some(auth) = text("auth")? else {
        return Ok(None);
    };
    let decoded = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| "\"auth\" is not valid base64".to_owned())?,
    );
    let decoded =
        std::str::from_utf8(&decoded).map_err(|_| "\"auth\" does not decode to text".to_owned())?;
    let Some((user, password)) = decoded.split_once(':') else {
        return Err("\"auth\" does not decode to user:password".into());
    };
    if user.is_empty() {
        return Err("\"auth\" has an empty user name".into());
    }
    Ok(Some((user.to_owned(), Secret::from(password))))
}

/// True when the client reading this file already asks regent, so removing
/// the plaintext loses nothing.
fn client_asks_regent(file: &JsonFile, flavor: Flavor) -> bool {
    match flavor {
        Flavor::Docker => file.value.get("credsStore").and_then(Value::as_str) == Some(HELPER_NAME),
        Flavor::Containers => dropin_paths().iter().any(|p| p.exists()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn entries_decode() {
        let (u, s) = decode_entry(&json!({"auth": b64("alice:pa:ss")}))
            .unwrap()
            .unwrap();
        assert_eq!((u.as_str(), s.expose()), ("alice", "pa:ss"));
        let (u, s) = decode_entry(&json!({"auth": b64("x:"), "identitytoken": "tok"}))
            .unwrap()
            .unwrap();
        assert_eq!((u.as_str(), s.expose()), ("<token>", "tok"));
        assert!(decode_entry(&json!({})).unwrap().is_none());
        assert!(decode_entry(&json!({"auth": ""})).unwrap().is_none());
    }

    #[test]
    fn malformed_entries_are_reported_without_the_secret() {
        for bad in [
            json!({"auth": "%%%"}),
            json!({"auth": b64("no-colon-here")}),
            json!({"auth": b64(":secret")}),
            json!({"auth": 5}),
            json!("text"),
        ] {
            let err = decode_entry(&bad).err().unwrap();
            assert!(!err.contains("secret") || err.contains("\"auth\""), "{err}");
            assert!(!err.contains("no-colon-here"), "{err}");
        }
    }
}
