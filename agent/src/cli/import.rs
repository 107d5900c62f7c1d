//! `regent import`: move plaintext credentials out of docker's
//! `config.json` and containers' `auth.json` into regent's store.
//!
//! For every `auths.<registry>` entry with an `identitytoken` (stored as
//! user `<token>`, the way docker's helpers keep identity tokens) or an
//! `auth` (base64 of `user:password`), the credential is stored through the
//! agent. Only once the agent has acknowledged it is the entry removed from
//! the file; `--keep` leaves the files alone. A file is only cleaned when its
//! client already asks regent (docker: `credsStore` or `credHelpers` naming
//! regent; podman: regent's registries.conf.d drop-in), so that no client
//! loses a login it can still use. Malformed entries are reported and
//! skipped. Secrets are never printed.
//!
//! Entries are grouped by registry as regent keys them (`registry.example`
//! and `https://registry.example`, `docker.io` and
//! `https://index.docker.io/v1/` are one registry), across all the files
//! read. One login under several spellings is imported once and removed
//! everywhere. Different logins (user or secret) for one registry are a
//! conflict regent cannot settle: nothing is imported or removed for that
//! registry, the others proceed, and the command exits non-zero saying which
//! entries to choose between.
//!
//! A changed file is backed up first as `<file>.regent-bak.<time>`, mode
//! 0600 (see [`super::clientconf`]): the backup holds the plaintext that was
//! removed, and the output says so and where. `--no-backup` keeps none.
//! A file named on the command line that does not exist is an error.

use std::collections::BTreeMap;
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

use super::call;
use super::clientconf::{self, BACKUP_MODE, HELPER_NAME, JsonFile, dropin_paths};
use super::output::outln;

#[derive(clap::Args)]
pub struct Args {
    /// Files to import from; none: docker's config.json and every containers auth.json.
    files: Vec<PathBuf>,
    /// Leave the entries in the files.
    #[arg(long)]
    keep: bool,
    /// Show what would be imported, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print JSON for scripts.
    #[arg(long)]
    json: bool,
    /// Keep no backup of the files changed (a backup holds the plaintext
    /// credentials that were removed).
    #[arg(long)]
    no_backup: bool,
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
    /// imported | would-import | skipped | failed | conflict
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// True when the entry was removed from the file.
    removed: bool,
    /// The backup of the file made before the entry was removed; it still
    /// holds the entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    backup: Option<String>,
}

/// One entry with a login, waiting for its group's verdict.
struct Candidate {
    /// Index into the outcomes.
    outcome: usize,
    file: usize,
    registry: String,
    username: String,
    secret: Secret,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let files: Vec<(PathBuf, Flavor)> = if args.files.is_empty() {
        let mut files = vec![(clientconf::docker_config_path(), Flavor::Docker)];
        for path in clientconf::containers_auth_paths() {
            files.push((path, Flavor::Containers));
        }
        files.into_iter().filter(|(p, _)| p.exists()).collect()
    } else {
        for p in &args.files {
            match std::fs::metadata(p) {
                Ok(m) if m.is_file() => {}
                Ok(_) => bail!("{} is not a file; nothing was imported", p.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                    "{} does not exist; nothing was imported (name docker's config.json or a \
                     containers auth.json, or run `regent import` alone to read the usual places)",
                    p.display()
                ),
                Err(e) => bail!("cannot read {}: {e}; nothing was imported", p.display()),
            }
        }
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
    // Every file is read (and must parse) before anything is stored.
    let mut loaded = Vec::new();
    for (path, flavor) in &files {
        loaded.push((JsonFile::load(path)?, *flavor));
    }

    let mut outcomes = Vec::new();
    let mut groups: BTreeMap<String, Vec<Candidate>> = BTreeMap::new();
    for (i, (file, _)) in loaded.iter().enumerate() {
        let Some(Value::Object(auths)) = file.value.get("auths") else {
            continue;
        };
        for (registry, entry) in auths {
            let mut outcome = Outcome {
                file: file.path.display().to_string(),
                registry: registry.clone(),
                username: None,
                result: "skipped",
                reason: None,
                removed: false,
                backup: None,
            };
            match decode_entry(entry) {
                Ok(None) => continue,
                Err(why) => outcome.reason = Some(why),
                Ok(Some((username, secret))) => {
                    outcome.username = Some(username.clone());
                    match registry::canonical(registry) {
                        Err(_) => {
                            outcome.reason = Some("not a registry name regent can key".into())
                        }
                        Ok(key) => groups.entry(key.into()).or_default().push(Candidate {
                            outcome: outcomes.len(),
                            file: i,
                            registry: registry.clone(),
                            username,
                            secret,
                        }),
                    }
                }
            }
            outcomes.push(outcome);
        }
    }

    let mut conn: Option<Connection> = None;
    let mut failed = false;
    let mut conflicts = Vec::new();
    // Per file, the registries (as spelled there) whose login regent now holds.
    let mut imported: Vec<Vec<String>> = vec![Vec::new(); loaded.len()];
    for (key, group) in &groups {
        let first = &group[0];
        let same = group
            .iter()
            .all(|c| c.username == first.username && c.secret.expose() == first.secret.expose());
        if !same {
            let places: Vec<String> = group
                .iter()
                .map(|c| {
                    format!(
                        "{} as \"{}\" in {}",
                        c.username,
                        c.registry,
                        loaded[c.file].0.path.display()
                    )
                })
                .collect();
            let reason = format!(
                "{} different logins for {key} ({}); nothing was imported or removed for it",
                group.len(),
                places.join(", ")
            );
            for c in group {
                outcomes[c.outcome].result = "conflict";
                outcomes[c.outcome].reason = Some(reason.clone());
            }
            conflicts.push(key.clone());
            continue;
        }
        if args.dry_run {
            for c in group {
                outcomes[c.outcome].result = "would-import";
            }
            continue;
        }
        let c = match &mut conn {
            Some(c) => c,
            None => {
                let (c, _) = client::call_with(&call::starting_options(), &Request::Status)?;
                conn.insert(c)
            }
        };
        let req = Request::Store {
            server_url: first.registry.clone(),
            username: first.username.clone(),
            secret: first.secret.clone(),
        };
        let error = match c.call(&req, Duration::from_secs(30)) {
            Ok(Response::Done) => None,
            Ok(Response::Error { message, .. }) => Some(message),
            Ok(other) => Some(format!("unexpected answer: {}", other.kind())),
            Err(e) => {
                conn = None;
                Some(e.to_string())
            }
        };
        for c in group {
            match &error {
                None => {
                    outcomes[c.outcome].result = "imported";
                    imported[c.file].push(c.registry.clone());
                }
                Some(message) => {
                    outcomes[c.outcome].result = "failed";
                    outcomes[c.outcome].reason = Some(message.clone());
                }
            }
        }
        failed |= error.is_some();
    }

    for (i, (file, flavor)) in loaded.iter_mut().enumerate() {
        let done = &imported[i];
        if done.is_empty() || args.keep || args.dry_run {
            continue;
        }
        if !client_asks_regent(file, *flavor) {
            if !args.json {
                let how = match flavor {
                    Flavor::Docker => "regent setup docker",
                    Flavor::Containers => "regent setup podman",
                };
                outln!(
                    "kept the plaintext entries in {}: its clients do not ask regent yet; run \
                     `{how}`, then `regent import` again to remove them",
                    file.path.display()
                );
            }
            continue;
        }
        let Some(Value::Object(auths)) = file.value.get_mut("auths") else {
            continue;
        };
        for registry in done {
            match flavor {
                Flavor::Docker => {
                    auths.insert(registry.clone(), Value::Object(Default::default()));
                }
                Flavor::Containers => {
                    auths.remove(registry);
                }
            }
        }
        let backup = if args.no_backup {
            file.save_without_backup()?;
            None
        } else {
            file.save()?
        };
        let path = file.path.display().to_string();
        if !args.json {
            match &backup {
                Some(backup) => outln!(
                    "backup of {path} saved as {} (mode {BACKUP_MODE:04o}): it still holds the \
                     plaintext credentials removed from {path}; delete it once you no longer \
                     need it (`regent import --no-backup` keeps none)",
                    backup.display()
                ),
                None => outln!("changed {path}; no backup kept (--no-backup)"),
            }
        }
        for o in outcomes.iter_mut() {
            if o.file == path && o.result == "imported" && done.contains(&o.registry) {
                o.removed = true;
                o.backup = backup.as_ref().map(|b| b.display().to_string());
            }
        }
    }

    if args.json {
        outln!("{}", serde_json::to_string_pretty(&outcomes)?);
    } else if outcomes.is_empty() {
        if files.is_empty() {
            outln!("found no docker config.json or containers auth.json to import from");
        } else {
            outln!("no plaintext credentials found in:");
            for (path, _) in &files {
                outln!("  {}", path.display());
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
            outln!(
                "{:<12} {}{user} from {}{how}{why}",
                o.result,
                o.registry,
                o.file
            );
        }
    }
    if !conflicts.is_empty() {
        bail!(
            "different logins for one registry need your choice: {}; delete the entry you do \
             not want from its file, then run `regent import` again{}",
            conflicts.join(", "),
            if failed {
                "; some other credentials could not be stored either (see above), and their \
                 entries were kept"
            } else {
                ""
            }
        );
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
