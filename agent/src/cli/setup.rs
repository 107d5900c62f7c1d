//! `regent setup`: point docker and podman/buildah/skopeo at regent, and
//! `regent setup --undo`: put them back.
//!
//! - docker: `"credsStore": "regent"` in docker's `config.json` (or
//!   `"credHelpers": {"HOST": "regent"}` with `--helper-for HOST`), every
//!   other key kept. docker matches `credHelpers` keys exactly, against the
//!   registry as an image reference names it, so HOST is written the way
//!   docker looks it up: `https://Quay.io/` becomes `quay.io`, and Docker Hub
//!   (`docker.io`, `index.docker.io`, ...) `https://index.docker.io/v1/`.
//! - podman, buildah, skopeo ignore `credsStore`; they read
//!   `credential-helpers` from `registries.conf`. regent writes a drop-in,
//!   `~/.config/containers/registries.conf.d/50-regent.conf`, with
//!   `credential-helpers = ["regent"]`, so the user's own `registries.conf`
//!   is never touched. regent is the only helper on purpose: with the
//!   built-in `containers-auth.json` after it, a login regent cannot store
//!   (no keyring, say) would land in plaintext `auth.json` with "Login
//!   Succeeded!"; alone, the login fails with regent's reason. Logins
//!   already in an `auth.json` are then not read: `regent import` moves
//!   them into regent, and `regent setup podman` says when there are any.
//!
//! What was there before (a previous `credsStore`, `credHelpers` entry) is
//! recorded in `<state dir>/setup.json`, which `--undo` reads to restore it.
//! Every change is idempotent; files are written as [`super::clientconf`]
//! describes (backup, atomic replace).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::clientconf::{self, HELPER_NAME, JsonFile, dropin_paths};
use super::output::{out, outln};

const DROPIN_MARKER: &str = "# Written by `regent setup podman`";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Client {
    /// docker CLI, buildx, compose, docker-py (config.json)
    Docker,
    /// podman, buildah, skopeo (registries.conf.d drop-in)
    Podman,
}

#[derive(clap::Args)]
pub struct Args {
    /// The clients to set up; none: every client found on this machine.
    #[arg(value_enum)]
    clients: Vec<Client>,
    /// Use regent for this registry only (docker `credHelpers`): a host, or an
    /// image reference naming it (ghcr.io/org/app:1.2); repeatable.
    #[arg(long, value_name = "HOST")]
    helper_for: Vec<String>,
    /// Print what would change, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Restore what `regent setup` changed.
    #[arg(long)]
    undo: bool,
}

/// What `--undo` needs to know, kept in the state directory.
#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    docker: Option<DockerState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    podman: Option<PodmanState>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct DockerState {
    config: PathBuf,
    /// True when regent set `credsStore`.
    #[serde(default)]
    creds_store: bool,
    /// The `credsStore` before regent's, if there was one.
    #[serde(default)]
    previous_creds_store: Option<String>,
    /// Hosts regent added to `credHelpers`, with the helper each had before.
    #[serde(default)]
    helper_for: BTreeMap<String, Option<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct PodmanState {
    #[serde(default)]
    dropins: Vec<PathBuf>,
}

fn state_path() -> PathBuf {
    regent_shared::paths::state_dir().join("setup.json")
}

fn load_state() -> anyhow::Result<State> {
    let path = state_path();
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
            format!(
                "{} is not readable as regent's setup record; move it aside to continue",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => bail!("cannot read {}: {e}", path.display()),
    }
}

fn save_state(state: &State) -> anyhow::Result<()> {
    let path = state_path();
    if state.docker.is_none() && state.podman.is_none() {
        match fs::remove_file(&path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => bail!("cannot remove {}: {e}", path.display()),
        }
    }
    clientconf::write_atomic_creating(&path, &clientconf::render_json(state))
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.undo && !args.helper_for.is_empty() {
        bail!("--undo takes no --helper-for: it undoes everything regent set up");
    }
    let explicit = !args.clients.is_empty();
    let mut clients = args.clients.clone();
    if !args.helper_for.is_empty() && !clients.contains(&Client::Docker) {
        if explicit {
            bail!("--helper-for applies to docker only: `regent setup docker --helper-for HOST`");
        }
        clients = vec![Client::Docker];
    }
    if clients.is_empty() {
        clients = detect_clients(args.undo);
        if clients.is_empty() {
            if args.undo {
                outln!("nothing to undo: regent has not set up any client");
            } else {
                outln!(
                    "found no docker or podman/buildah/skopeo here; name one to set it up \
                     anyway: `regent setup docker` or `regent setup podman`"
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
    }
    clients.sort();
    clients.dedup();

    let mut state = load_state()?;
    for client in clients {
        match (client, args.undo) {
            (Client::Docker, false) => setup_docker(&mut state, &args.helper_for, args.dry_run)?,
            (Client::Docker, true) => undo_docker(&mut state, args.dry_run)?,
            (Client::Podman, false) => setup_podman(&mut state, args.dry_run)?,
            (Client::Podman, true) => undo_podman(&mut state, args.dry_run)?,
        }
    }
    if !args.dry_run {
        save_state(&state)?;
        if !args.undo {
            check_helper_on_path();
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The clients found on this machine (programs on PATH or their config), or
/// for `--undo` the ones regent set up.
fn detect_clients(undo: bool) -> Vec<Client> {
    let mut out = Vec::new();
    if undo {
        let state = load_state().unwrap_or_default();
        if state.docker.is_some() {
            out.push(Client::Docker);
        }
        if state.podman.is_some() || dropin_paths().iter().any(|p| p.exists()) {
            out.push(Client::Podman);
        }
        return out;
    }
    if on_path("docker") || clientconf::docker_config_path().exists() {
        out.push(Client::Docker);
    }
    if ["podman", "buildah", "skopeo"].iter().any(|p| on_path(p))
        || clientconf::containers_config_dir().exists()
    {
        out.push(Client::Podman);
    }
    out
}

fn on_path(program: &str) -> bool {
    regent_shared::paths::find_on_path(program).is_some()
}

fn check_helper_on_path() {
    if !on_path("docker-credential-regent") {
        eprintln!(
            "regent: warning: docker-credential-regent is not on PATH, and clients look it up \
             there; add its directory to PATH (scripts/install puts it in ~/.local/bin)"
        );
    }
}

fn write_or_show(file: &JsonFile, dry_run: bool) -> anyhow::Result<()> {
    if !dry_run {
        if let Some(backup) = file.save()? {
            outln!("        previous version saved as {}", backup.display());
        }
        return Ok(());
    }
    let old = file.original.as_deref().map(String::from_utf8_lossy);
    let new = file.render();
    out!(
        "{}",
        clientconf::diff(
            &file.path,
            old.as_deref(),
            Some(&String::from_utf8_lossy(&new))
        )
    );
    Ok(())
}

/// The `credHelpers` key docker looks up for the registry `host` names:
/// docker matches the key exactly against the registry part of an image
/// reference (`host[:port]`, lower case, no scheme or path), and against
/// `https://index.docker.io/v1/` for Docker Hub.
/// `--helper-for`'s key in docker's `credHelpers`: a registry (any
/// spelling), or the registry of an image reference (`ghcr.io/org/app:1`).
fn docker_helper_key(host: &str) -> anyhow::Result<String> {
    let registry = crate::reference::parse(host)
        .ok()
        .filter(|t| t.repository.is_some())
        .map(|t| t.registry);
    let key =
        regent_shared::registry::canonical(registry.as_deref().unwrap_or(host)).map_err(|e| {
            anyhow::anyhow!("--helper-for {host:?}: {e}; give a registry host such as ghcr.io")
        })?;
    if key == regent_shared::registry::DOCKER_HUB {
        return Ok(DOCKER_HUB_CONFIG_KEY.to_owned());
    }
    if key.path().is_some() {
        bail!("--helper-for {host:?}: give a registry host such as ghcr.io, not a path under one");
    }
    Ok(key.into())
}

/// Docker Hub's key in docker's `config.json`.
const DOCKER_HUB_CONFIG_KEY: &str = "https://index.docker.io/v1/";

fn setup_docker(state: &mut State, hosts: &[String], dry_run: bool) -> anyhow::Result<()> {
    let path = clientconf::docker_config_path();
    let mut keys = Vec::new();
    for host in hosts {
        let key = docker_helper_key(host)?;
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let mut file = JsonFile::load(&path)?;
    let record = state.docker.get_or_insert_with(|| DockerState {
        config: path.clone(),
        ..DockerState::default()
    });
    if record.config != path {
        // DOCKER_CONFIG changed since the last setup; record the new file.
        *record = DockerState {
            config: path.clone(),
            ..DockerState::default()
        };
    }

    let mut notes = Vec::new();
    if hosts.is_empty() {
        let current = file.value.get("credsStore").and_then(Value::as_str);
        if current != Some(HELPER_NAME) {
            if let Some(prev) = current.filter(|p| !p.is_empty()) {
                notes.push(format!(
                    "credsStore was \"{prev}\"; credentials kept there stay there (log in again \
                     to move one to regent); `regent setup --undo` switches back"
                ));
                record.previous_creds_store = Some(prev.to_owned());
            }
            file.value
                .insert("credsStore".into(), Value::String(HELPER_NAME.into()));
            record.creds_store = true;
        }
    } else {
        let helpers = file
            .value
            .entry("credHelpers")
            .or_insert_with(|| Value::Object(Default::default()));
        let Value::Object(helpers) = helpers else {
            bail!(
                "\"credHelpers\" in {} is not a JSON object; fix it, then run this again \
                 (nothing was changed)",
                path.display()
            );
        };
        for key in &keys {
            let current = helpers.get(key).and_then(Value::as_str).map(str::to_owned);
            if current.as_deref() != Some(HELPER_NAME) {
                record.helper_for.insert(key.clone(), current);
                helpers.insert(key.clone(), Value::String(HELPER_NAME.into()));
            }
        }
    }

    let plain = plaintext_count(&file);
    if plain > 0 {
        notes.push(format!(
            "{} holds {plain} plaintext credential(s); move them into regent with \
             `regent import`",
            path.display()
        ));
    }

    if !file.changed() {
        outln!("docker: already set up ({})", path.display());
    } else {
        if !dry_run {
            if hosts.is_empty() {
                outln!(
                    "docker: credsStore = \"{HELPER_NAME}\" in {}",
                    path.display()
                );
            } else {
                outln!(
                    "docker: credHelpers {} = \"{HELPER_NAME}\" in {}",
                    keys.join(", "),
                    path.display()
                );
            }
        }
        write_or_show(&file, dry_run)?;
    }
    for note in notes {
        outln!("        note: {note}");
    }
    Ok(())
}

fn undo_docker(state: &mut State, dry_run: bool) -> anyhow::Result<()> {
    let Some(record) = state.docker.take() else {
        outln!("docker: nothing to undo");
        return Ok(());
    };
    let path = record.config.clone();
    let mut file = match JsonFile::load(&path) {
        Ok(file) => file,
        Err(e) => {
            state.docker = Some(record);
            return Err(e);
        }
    };
    if record.creds_store
        && file.value.get("credsStore").and_then(Value::as_str) == Some(HELPER_NAME)
    {
        match &record.previous_creds_store {
            Some(prev) => {
                file.value
                    .insert("credsStore".into(), Value::String(prev.clone()));
            }
            None => {
                file.value.remove("credsStore");
            }
        }
    }
    if let Some(Value::Object(helpers)) = file.value.get_mut("credHelpers") {
        for (host, prev) in &record.helper_for {
            if helpers.get(host).and_then(Value::as_str) == Some(HELPER_NAME) {
                match prev {
                    Some(prev) => {
                        helpers.insert(host.clone(), Value::String(prev.clone()));
                    }
                    None => {
                        helpers.remove(host);
                    }
                }
            }
        }
        if helpers.is_empty() {
            file.value.remove("credHelpers");
        }
    }
    if !file.changed() {
        outln!("docker: nothing to undo in {}", path.display());
    } else {
        if !dry_run {
            outln!("docker: restoring {}", path.display());
        }
        if let Err(e) = write_or_show(&file, dry_run) {
            state.docker = Some(record);
            return Err(e);
        }
        if !dry_run {
            outln!(
                "        note: credentials stored in regent stay there (`regent ls` lists them); \
                 docker no longer asks for them"
            );
        }
    }
    if dry_run {
        state.docker = Some(record);
    }
    Ok(())
}

/// Drop-ins written by an older regent, whose `credential-helpers` put the
/// plaintext `containers-auth.json` after regent (`regent status` warns).
pub fn dropins_with_plaintext_fallback() -> Vec<PathBuf> {
    dropin_paths()
        .into_iter()
        .filter(|path| {
            fs::read_to_string(path).is_ok_and(|text| {
                text.starts_with(DROPIN_MARKER)
                    && text
                        .lines()
                        .any(|l| !l.starts_with('#') && l.contains("containers-auth.json"))
            })
        })
        .collect()
}

/// The drop-in's one setting (see the module docs for why regent is alone).
const DROPIN_SETTING: &str = "credential-helpers = [\"regent\"]";

fn dropin_contents() -> String {
    format!(
        "{DROPIN_MARKER}; `regent setup --undo` removes it.\n\
         # podman, buildah and skopeo ask docker-credential-regent, and only it: a login\n\
         # regent cannot store fails with regent's reason instead of going to a\n\
         # plaintext auth.json. `regent import` moves logins already in auth.json.\n\
         {DROPIN_SETTING}\n"
    )
}

/// Plaintext logins in the auth files podman & co read by themselves
/// (their auth.json files and docker's config.json), which the drop-in
/// makes them stop reading: `(file, count)`.
fn plaintext_auth_files() -> Vec<(PathBuf, usize)> {
    let mut files = clientconf::containers_auth_paths();
    files.push(clientconf::docker_config_path());
    files
        .into_iter()
        .filter_map(|path| {
            let file = JsonFile::load(&path).ok()?;
            let n = plaintext_count(&file);
            (n > 0).then_some((path, n))
        })
        .collect()
}

/// The `auths` entries of a client file that hold a secret.
pub(crate) fn plaintext_count(file: &JsonFile) -> usize {
    let Some(Value::Object(auths)) = file.value.get("auths") else {
        return 0;
    };
    auths
        .values()
        .filter(|v| {
            ["auth", "identitytoken"].iter().any(|k| {
                v.get(k)
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
            })
        })
        .count()
}

fn read_optional(path: &Path) -> anyhow::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => bail!("cannot read {}: {e}; nothing was changed", path.display()),
    }
}

fn setup_podman(state: &mut State, dry_run: bool) -> anyhow::Result<()> {
    let want = dropin_contents();
    let paths = dropin_paths();
    // Check every place before writing any.
    let mut current = Vec::new();
    for path in &paths {
        let text = read_optional(path)?;
        if text.as_ref().is_some_and(|c| !c.starts_with(DROPIN_MARKER)) {
            bail!(
                "{} exists and was not written by regent; move it aside, then run this again \
                 (nothing was changed)",
                path.display()
            );
        }
        current.push(text);
    }
    for (path, text) in paths.iter().zip(&current) {
        if text.as_deref() == Some(want.as_str()) {
            outln!("podman: already set up ({})", path.display());
        } else if dry_run {
            out!("{}", clientconf::diff(path, text.as_deref(), Some(&want)));
        } else {
            write_new_file(path, want.as_bytes())?;
            outln!("podman: {DROPIN_SETTING} in {}", path.display());
        }
    }
    if !dry_run {
        outln!("        (used by podman, buildah and skopeo; your registries.conf is unchanged)");
        state.podman = Some(PodmanState { dropins: paths });
    }
    for (path, n) in plaintext_auth_files() {
        outln!(
            "        note: {} holds {n} plaintext login(s), which podman, buildah and skopeo \
             no longer read; move them into regent with `regent import`",
            path.display()
        );
    }
    Ok(())
}

fn undo_podman(state: &mut State, dry_run: bool) -> anyhow::Result<()> {
    let mut paths = state
        .podman
        .as_ref()
        .map(|p| p.dropins.clone())
        .unwrap_or_default();
    for path in dropin_paths() {
        if !paths.contains(&path) {
            paths.push(path);
        }
    }
    let mut any = false;
    for path in &paths {
        match fs::read_to_string(path) {
            Ok(text) if text.starts_with(DROPIN_MARKER) => {
                any = true;
                if dry_run {
                    out!("{}", clientconf::diff(path, Some(&text), None));
                } else {
                    fs::remove_file(path)
                        .with_context(|| format!("cannot remove {}", path.display()))?;
                    outln!("podman: removed {}", path.display());
                }
            }
            Ok(_) => {
                any = true;
                outln!(
                    "podman: {} was not written by regent; left as it is",
                    path.display()
                );
            }
            Err(_) => {}
        }
    }
    if !any {
        outln!("podman: nothing to undo");
    }
    if !dry_run {
        state.podman = None;
    }
    Ok(())
}

fn write_new_file(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    clientconf::write_atomic_creating(path, bytes)
}
