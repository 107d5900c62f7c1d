//! `regent login`, `regent logout` and `regent verify`: a login is checked
//! with the registry before it is stored (`registry_auth`), a logout
//! removes the registry's login whatever spelling stored it, and a verify
//! shows the registry what the agent would hand out, changing nothing.

use std::io::{self, BufRead, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use regent_shared::Secret;
use regent_shared::protocol::{Request, Response};
use regent_shared::registry;
use serde_json::json;
use zeroize::Zeroizing;

use super::call::{accepted, call_agent, running_agent, unexpected};
use super::output::outln;
use crate::reference::{self, Target};
use crate::registry_auth::{AuthError, Credential, Grant, Proof, Registry};
use crate::sources::http::Http;
use crate::sys::EchoOff;

/// How long the agent may take to answer a list or an erase.
const AGENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The most a password (or token) on stdin may take.
const MAX_PASSWORD: usize = 64 << 10;

#[derive(clap::Args)]
pub struct LoginArgs {
    /// The registry (ghcr.io, localhost:5000, http://10.0.0.5:5000) or an
    /// image reference as you pull it (ghcr.io/org/app:1.2, alpine).
    target: String,
    /// The username; asked for on a terminal when not given.
    #[arg(short, long)]
    username: Option<String>,
    /// Read the password (or token) from stdin instead of asking for it.
    #[arg(long)]
    password_stdin: bool,
    /// A CA bundle (PEM) to trust for this registry, instead of the
    /// system's (as SSL_CERT_FILE does).
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Never on the command line: refused (use --password-stdin). A value
    /// that starts with `-` is taken too, so that it reaches the refusal
    /// rather than a parse error that quotes its first characters.
    #[arg(
        short = 'p',
        long = "password",
        hide = true,
        value_name = "PASSWORD",
        allow_hyphen_values = true
    )]
    password_on_command_line: Option<String>,
}

#[derive(clap::Args)]
pub struct LogoutArgs {
    /// The registry or an image reference, as for `regent login`.
    target: String,
    /// Print what was removed as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct VerifyArgs {
    /// The registry, or an image reference whose repository's pull access
    /// is checked too.
    target: String,
    /// With an image: check push access as well (an upload is started and
    /// cancelled; nothing is written).
    #[arg(long)]
    push: bool,
    /// A CA bundle (PEM) to trust for this registry, as for `regent login`.
    #[arg(long, value_name = "FILE")]
    ca_file: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn login(mut args: LoginArgs) -> anyhow::Result<ExitCode> {
    if let Some(mut refused) = args.password_on_command_line.take() {
        zeroize::Zeroize::zeroize(&mut refused);
        bail!(
            "a password on the command line is visible to every user of this machine (ps, \
             /proc) and kept in shell history; nothing was done. Pipe it: \
             `printf %s \"$TOKEN\" | regent login {} -u USER --password-stdin`, or leave \
             both out to be asked",
            args.target
        );
    }
    let target = reference::parse(&args.target)?;
    trust_ca_file(args.ca_file.as_deref())?;
    let username = match args.username.take() {
        Some(u) => u,
        None => ask_username(&target)?,
    };
    if username.is_empty() {
        bail!("the username is empty");
    }
    let password = read_password(&target, args.password_stdin)?;
    let http = Http::new();
    let (proof, base) = runtime()?.block_on(check(&http, &target, &username, &password))?;
    let key = target.login_key();
    let (stored_user, secret) = match &proof.identity_token {
        Some(token) => ("<token>".to_owned(), Secret::new(token.expose().to_owned())),
        None => (username.clone(), password),
    };
    match call_agent(&Request::Store {
        server_url: key.clone(),
        username: stored_user.clone(),
        secret,
    })? {
        Response::Done => {}
        other => return Err(unexpected(&other)),
    }
    let identity = proof.identity_token.is_some();
    if args.json {
        outln!(
            "{}",
            json!({
                "registry": target.registry,
                "stored_as": key,
                "username": username,
                "identity_token": identity,
                "checked": proof.how.name(),
                "api": base,
            })
        );
    } else {
        let what = if identity {
            "an identity token from the token server, as docker would"
        } else {
            "the password"
        };
        outln!(
            "Login Succeeded: {} as {username} (checked: {}); stored {what} under {key}",
            target.registry,
            proof.how.describe()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Proves the login, at the base [`reachable_base`] picks.
async fn check(
    http: &Http,
    target: &Target,
    username: &str,
    password: &Secret,
) -> anyhow::Result<(Proof, String)> {
    let base = reachable_base(http, target).await;
    let registry = Registry {
        http,
        base: base.clone(),
        name: target.registry.clone(),
        progress: &progress,
    };
    Ok((registry.login(username, password).await?, base))
}

fn progress(line: &str) {
    eprintln!("regent: {line}");
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")
}

/// `--ca-file`: the roots the HTTP client reads (through `SSL_CERT_FILE`).
fn trust_ca_file(ca: Option<&std::path::Path>) -> anyhow::Result<()> {
    if let Some(ca) = ca {
        std::fs::File::open(ca)
            .with_context(|| format!("cannot read the CA file {}", ca.display()))?;
        // SAFETY: no other thread exists yet (the runtime is built later),
        // so nothing reads the environment concurrently.
        unsafe { std::env::set_var("SSL_CERT_FILE", ca) };
    }
    Ok(())
}

/// The base URL to use: plain HTTP for a loopback registry named without a
/// scheme when HTTPS cannot be spoken there, as docker does.
async fn reachable_base(http: &Http, target: &Target) -> String {
    let base = target.api_base();
    if target.plain_http || target.https_only || !crate::sources::http::is_loopback(target.host()) {
        return base;
    }
    let probe = Registry {
        http,
        base: base.clone(),
        name: target.registry.clone(),
        progress: &progress,
    };
    match probe.challenge().await {
        Err(AuthError::Tls { .. } | AuthError::Unreachable { .. }) => {
            let plain = format!("http://{}", target.registry);
            progress(&format!(
                "no HTTPS at {base}; using {plain} (a loopback registry)"
            ));
            plain
        }
        _ => base,
    }
}

pub fn verify(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    use regent_shared::client;
    let target = reference::parse(&args.target)?;
    trust_ca_file(args.ca_file.as_deref())?;
    if args.push && target.repository.is_none() {
        bail!("--push needs an image reference (REGISTRY/REPOSITORY), not a registry alone");
    }
    let server_url = target.login_key();
    // What a docker command here would be handed: this shell's variables
    // go with it, as the helper sends them.
    let answer = client::get(&super::call::starting_options(), &server_url)?;
    let (username, secret) = match accepted(answer)? {
        Response::Credentials {
            username, secret, ..
        } => (username, secret),
        Response::NotFound => bail!(
            "no credential for {}: nothing is stored and no source answers; `regent login {}`",
            target.registry,
            target.registry
        ),
        other => return Err(unexpected(&other)),
    };
    let cred = if username == "<token>" {
        Credential::IdentityToken(&secret)
    } else {
        Credential::Password {
            username: &username,
            password: &secret,
        }
    };
    let http = Http::new();
    let runtime = runtime()?;
    let verified = runtime.block_on(async {
        let base = reachable_base(&http, &target).await;
        let registry = Registry {
            http: &http,
            base,
            name: target.registry.clone(),
            progress: &progress,
        };
        registry
            .verify(&cred, target.repository.as_deref(), args.push)
            .await
    })?;
    let repo = target.repository.as_deref().unwrap_or_default();
    // A repository that does not exist yet is fine for a push (it makes
    // it), not for a pull.
    let ok = !matches!(
        (verified.pull, verified.push),
        (Some(Grant::Denied), _) | (_, Some(Grant::Denied)) | (Some(Grant::NoSuchRepository), None)
    );
    if args.json {
        outln!(
            "{}",
            json!({
                "registry": target.registry,
                "username": username,
                "checked": verified.how.name(),
                "repository": target.repository,
                "pull": verified.pull.map(Grant::name),
                "push": verified.push.map(Grant::name),
                "ok": ok,
            })
        );
    } else {
        outln!(
            "{}: the credential of {username} works (checked: {})",
            target.registry,
            verified.how.describe()
        );
        for (action, grant) in [("pull", verified.pull), ("push", verified.push)] {
            if let Some(grant) = grant {
                let said = match grant {
                    Grant::Granted => "granted".to_owned(),
                    Grant::Denied => {
                        "denied: the registry refuses it to this credential".to_owned()
                    }
                    Grant::NoSuchRepository => {
                        "the registry has no such repository (check the name)".to_owned()
                    }
                };
                outln!("{action} {repo}: {said}");
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn ask_username(target: &Target) -> anyhow::Result<String> {
    let stdin = io::stdin();
    if !stdin.is_terminal() {
        bail!("no username: give it with -u USER (stdin is not a terminal to ask on)");
    }
    eprint!("Username for {}: ", target.registry);
    let _ = io::stderr().flush();
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the username")?;
    let line = line.trim().to_owned();
    if line.is_empty() {
        bail!("no username given");
    }
    Ok(line)
}

fn read_password(target: &Target, from_stdin: bool) -> anyhow::Result<Secret> {
    let stdin = io::stdin();
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_PASSWORD + 1));
    if from_stdin {
        stdin
            .lock()
            .take(MAX_PASSWORD as u64 + 1)
            .read_to_end(&mut buf)
            .context("reading the password from stdin")?;
        if buf.len() > MAX_PASSWORD {
            bail!("the password on stdin is larger than {MAX_PASSWORD} bytes");
        }
    } else if stdin.is_terminal() {
        eprint!("Password for {} (input hidden): ", target.registry);
        let _ = io::stderr().flush();
        let _echo = EchoOff::new();
        let mut line = Zeroizing::new(String::with_capacity(1024));
        stdin
            .lock()
            .read_line(&mut line)
            .context("reading the password")?;
        eprintln!();
        buf.extend_from_slice(line.as_bytes());
    } else {
        bail!("no password: pipe it with --password-stdin (stdin is not a terminal to ask on)");
    }
    while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        buf.pop();
    }
    if buf.is_empty() {
        bail!("the password is empty");
    }
    let text = std::str::from_utf8(&buf).context("the password is not UTF-8")?;
    Ok(Secret::new(text.to_owned()))
}

pub fn logout(args: LogoutArgs) -> anyhow::Result<ExitCode> {
    let target = reference::parse(&args.target)?;
    let key = registry::canonical(&target.login_key())?;
    let Some(mut conn) = running_agent()? else {
        return nothing_removed(&args, &target, "no agent is running");
    };
    let entries = match accepted(conn.call(&Request::ListLogins, AGENT_TIMEOUT)?)? {
        Response::List { entries } => entries,
        other => return Err(unexpected(&other)),
    };
    let mine: Vec<(String, String)> = entries
        .into_iter()
        .filter(|(url, _)| registry::canonical(url).is_ok_and(|k| k == key))
        .collect();
    if mine.is_empty() {
        return nothing_removed(&args, &target, "no login is stored for it");
    }
    for (url, _) in &mine {
        let erase = Request::Erase {
            server_url: url.clone(),
        };
        match accepted(conn.call(&erase, AGENT_TIMEOUT)?)? {
            Response::Done => {}
            other => return Err(unexpected(&other)),
        }
    }
    if args.json {
        let removed: Vec<_> = mine
            .iter()
            .map(|(url, user)| json!({"server_url": url, "username": user}))
            .collect();
        outln!(
            "{}",
            json!({"registry": target.registry, "removed": removed})
        );
    } else {
        for (url, user) in &mine {
            outln!("Removed the login for {url} ({user})");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn nothing_removed(args: &LogoutArgs, target: &Target, why: &str) -> anyhow::Result<ExitCode> {
    if args.json {
        outln!("{}", json!({"registry": target.registry, "removed": []}));
    } else {
        outln!("Not logged in to {}: {why}", target.registry);
    }
    Ok(ExitCode::SUCCESS)
}
