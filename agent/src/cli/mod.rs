//! The `regent` command line: the agent itself and the commands that manage it.
//!
//! This module parses the command line, refuses what does not parse and
//! hands each command to its own file, which holds its arguments and its
//! `run`: `lifecycle` (`start`, `stop`), `status`, `ls`, `reload`, `secret`,
//! `setup`, `import`, `completions` and `man` (both generated from the
//! definitions here). `regent agent` is the agent itself
//! ([`crate::daemon`]). What the commands share: `call` (reaching the
//! agent), `output` (stdout that survives a closed pipe), `prompt` (the
//! hidden terminal prompt) and `clientconf` (the clients' own files).

use std::ffi::OsString;
use std::io::{self, Write};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use regent_shared::paths;

use crate::daemon;

mod call;
mod clientconf;
mod completions;
#[cfg(feature = "http")]
mod doctor;
mod import;
mod lifecycle;
#[cfg(feature = "http")]
mod login;
mod ls;
mod man;
mod output;
mod prompt;
mod reload;
mod secret;
mod setup;
mod status;

/// Exit status of a command line clap (or regent) refuses, as clap's own.
const EXIT_USAGE: u8 = 2;

/// The variables regent reads: `--help`'s "Environment" and regent.1's
/// ENVIRONMENT.
const ENVIRONMENT: &[(&str, &str)] = &[
    (
        "REGENT_STORE",
        "store: auto (default), keyring, file, keyutils or memory",
    ),
    (
        "REGENT_LOG",
        "agent log level: error, warn, info (default), debug, trace",
    ),
    (
        "REGENT_SOCKET",
        "the agent's socket (its directory must be private to you)",
    ),
    ("REGENT_CONFIG", "the config file"),
    (
        "REGENT_KEYRING_SERVICE",
        "keyring service name of regent's entries (default \"regent\")",
    ),
    (
        "REGENT_MASTER_KEY",
        "file store master key: base64 of 32 bytes",
    ),
    (
        "REGENT_GCLOUD",
        "the gcloud CLI of the gcp source (empty: that step is off)",
    ),
    (
        "REGENT_AZ",
        "the Azure CLI of the acr source (empty: that step is off)",
    ),
];

/// `--help`'s last part: the variables regent reads and the paths it uses
/// here (with this environment).
fn environment_help() -> String {
    let mut help = String::from("Environment:\n");
    for (name, what) in ENVIRONMENT {
        help.push_str(&format!("  {name:<24}{what}\n"));
    }
    let socket = paths::socket_path();
    help.push_str(&format!(
        "\nPaths here:\n  \
           config   {}\n  \
           log      {}\n  \
           data     {}\n  \
           socket   {}\n",
        paths::config_file().display(),
        paths::log_file().display(),
        paths::data_dir().display(),
        socket.display(),
    ));
    help
}

#[derive(Parser)]
#[command(
    name = "regent",
    version,
    about = "A credential agent for docker, podman, buildah, skopeo and docker-py",
    long_about = "regent keeps registry credentials in the OS keyring (or an encrypted file, \
                  the kernel keyring or memory) and serves them from memory to \
                  docker-credential-regent, the credential helper clients execute."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (normally started on demand by the helper or `regent start`).
    Agent {
        /// Stay attached and log to stderr: for systemd, launchd and debugging.
        #[arg(long)]
        foreground: bool,
    },
    /// Start the agent in the background unless it is running.
    Start,
    /// Stop the running agent.
    Stop,
    /// Show the agent's pid, uptime, socket, store and number of credentials.
    Status(status::Args),
    /// List the stored credentials (never their secrets).
    Ls(ls::Args),
    /// Re-read the config file's token sources in the running agent.
    ///
    /// A file that does not parse is refused with its line and column, and the
    /// config in force stays. Without a running agent, only checks the file.
    Reload,
    /// Named secrets that config entries refer to: `env = { X = { secret = "NAME" } }`.
    Secret(secret::Args),
    /// Point docker and podman/buildah/skopeo at regent (all found, or those named).
    Setup(setup::Args),
    /// Move plaintext credentials from docker's config.json and containers' auth.json into regent.
    Import(import::Args),
    /// Check a login with the registry, then store it (the password is asked for, or read with --password-stdin).
    #[cfg(feature = "http")]
    Login(login::LoginArgs),
    /// Remove a registry's login, whatever spelling stored it.
    #[cfg(feature = "http")]
    Logout(login::LogoutArgs),
    /// Check the credential regent would hand out for a registry (or an image's pull/push access) now, changing nothing.
    #[cfg(feature = "http")]
    Verify(login::VerifyArgs),
    /// Check every part a docker pull goes through (helper, clients, socket, agent, store, config, sources, clock), each with its fix.
    #[cfg(feature = "http")]
    Doctor(doctor::Args),
    /// Print the completion script for a shell (bash, zsh, fish, elvish, powershell).
    ///
    /// For bash: `regent completions bash > ~/.local/share/bash-completion/completions/regent`
    /// (scripts/install does this for bash, zsh and fish).
    Completions(completions::Args),
    /// Write the man pages (regent.1 and one per command) into a directory.
    Man(man::Args),
}

pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let command = Cli::command().after_help(environment_help());
    let cli = match command
        .try_get_matches_from(&args)
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => return usage_error(e, &args),
    };
    if let Command::Secret(secret) = &cli.command
        && secret.value_on_command_line()
    {
        return secret_on_command_line();
    }
    output::finish(run(cli))
}

/// A command line that does not parse. clap quotes what it did not expect,
/// which under `regent secret set` may be the secret itself: that one gets a
/// message of its own.
fn usage_error(e: clap::Error, args: &[OsString]) -> ExitCode {
    use clap::error::ErrorKind;
    let quiet = matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    let words: Vec<&std::ffi::OsStr> = args.iter().skip(1).map(OsString::as_os_str).collect();
    // A missing NAME quotes nothing; anything else may quote a value.
    if !quiet
        && e.kind() != ErrorKind::MissingRequiredArgument
        && words.starts_with(&["secret".as_ref(), "set".as_ref()])
    {
        return secret_on_command_line();
    }
    // clap prints help and usage errors; a closed pipe is not a reason to
    // panic.
    let _ = e.print();
    ExitCode::from(e.exit_code().clamp(0, 255) as u8)
}

fn secret_on_command_line() -> ExitCode {
    let _ = writeln!(
        io::stderr(),
        "regent: `regent secret set` takes only the NAME; the value is read from stdin, never \
         from the command line (where other processes and your shell history see it): \
         `printf %s \"$TOKEN\" | regent secret set NAME`. Nothing was stored; if you typed \
         a real secret, it is in your shell history now."
    );
    ExitCode::from(EXIT_USAGE)
}

fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Agent { foreground } => return daemon::run(foreground),
        Command::Start => lifecycle::start(),
        Command::Stop => lifecycle::stop(),
        Command::Status(args) => status::run(args),
        Command::Ls(args) => ls::run(args),
        Command::Reload => reload::run(),
        Command::Secret(args) => secret::run(args),
        Command::Setup(args) => setup::run(args),
        Command::Import(args) => import::run(args),
        #[cfg(feature = "http")]
        Command::Login(args) => login::login(args),
        #[cfg(feature = "http")]
        Command::Logout(args) => login::logout(args),
        #[cfg(feature = "http")]
        Command::Verify(args) => login::verify(args),
        #[cfg(feature = "http")]
        Command::Doctor(args) => doctor::run(args),
        Command::Completions(args) => completions::run(args, Cli::command()),
        Command::Man(args) => man::run(args, Cli::command(), ENVIRONMENT),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(io::stderr(), "regent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        Cli::command().debug_assert();
    }
}
