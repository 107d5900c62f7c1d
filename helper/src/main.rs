//! `docker-credential-regent`: the program docker, podman, buildah, skopeo and
//! docker-py execute for every credential lookup (`credsStore: regent` or a
//! `credHelpers` entry).
//!
//! It speaks the credential-helper protocol exactly (the action in `argv[1]`,
//! the payload on stdin, the result or a one-line error on stdout, exit status
//! 1 on failure) and forwards each request to the regent agent over its local
//! socket, starting the agent when none answers. It never keeps a secret
//! itself, and it is bounded everywhere: clients of the protocol set no
//! timeout of their own.

use std::env;
use std::io::{self, IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

mod parse;

use parse::{Failure, parse_server_url, parse_store};

use regent_shared::Secret;
use regent_shared::client::{self, AgentExe, ClientError, Options};
use regent_shared::messages::NOT_FOUND;
use regent_shared::protocol::{Request, Response};

const NAME: &str = "docker-credential-regent";
const USAGE: &str = "Usage: docker-credential-regent <store|get|erase|list|version>";

/// The most stdin the helper reads: far above any real request (a 64 KiB
/// secret is the largest any client sends), far below what a hostile caller
/// could make us allocate.
const MAX_STDIN: usize = 1 << 20;

/// How long a non-terminal stdin may stay open without reaching end of file.
const STDIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A `get` that cannot reach or start the agent gives up well within 3 s and
/// answers "not found", so public images still pull.
const GET_START_BUDGET: Duration = Duration::from_millis(2500);

fn main() -> ExitCode {
    let args: Vec<String> = env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let result = match args.as_slice() {
        [verb] => match verb.as_str() {
            "get" => get(),
            "store" => store(),
            "erase" => erase(),
            "list" => list(),
            "version" | "-v" | "--version" => {
                print_out(&format!("{NAME} (regent) {}\n", env!("CARGO_PKG_VERSION")));
                Ok(())
            }
            "-h" | "--help" => {
                print_out(&help());
                Ok(())
            }
            other => Err(Failure::line(format!("{NAME}: unknown action: {other}"))),
        },
        _ => Err(Failure::line(USAGE)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if let Some(reason) = f.stderr {
                eprintln!("{NAME}: {reason}");
            }
            print_out(&format!("{}\n", f.stdout));
            ExitCode::FAILURE
        }
    }
}

fn help() -> String {
    format!(
        "{USAGE}\n\n\
         The credential helper of regent: docker, podman, buildah, skopeo and docker-py\n\
         run it with `credsStore: regent` or a `credHelpers` entry. Each action is\n\
         forwarded to the regent agent, which is started when it is not running.\n\n\
         Actions:\n  \
           get      read a server URL on stdin, print its credentials as JSON\n  \
           store    read {{\"ServerURL\",\"Username\",\"Secret\"}} JSON on stdin and keep it\n  \
           erase    read a server URL on stdin and forget its credentials\n  \
           list     print {{\"<server URL>\": \"<username>\"}} for every credential\n  \
           version  print the version\n\n\
         See `regent status` for the agent and `regent --help` for everything else.\n"
    )
}

fn print_out(s: &str) {
    let mut out = io::stdout().lock();
    let _ = out.write_all(s.as_bytes());
    let _ = out.flush();
}

fn options(start_timeout: Duration) -> Options {
    let mut opts = Options::new("helper");
    opts.agent_exe = AgentExe::NextToMe;
    opts.start_timeout = start_timeout;
    opts
}

fn agent_error(e: &ClientError) -> Failure {
    Failure::line(e.to_string())
}

fn get() -> Result<(), Failure> {
    let server_url = read_server_url()?;
    // The caller's AWS identity goes with the request: the agent mints
    // tokens for whoever asks, not for whoever started it.
    let opts = options(GET_START_BUDGET);
    // The registry's entry may read variables of ours beyond the usual
    // ones (the `env` source): `client::get` sends them, once, on the same
    // connection.
    let answer = client::get(&opts, &server_url);
    match answer {
        Ok(Response::Credentials {
            username, secret, ..
        }) => {
            write_credentials(&server_url, &username, &secret);
            Ok(())
        }
        Ok(Response::NotFound) => Err(Failure::line(NOT_FOUND)),
        Ok(other) => Err(unexpected(other)),
        // Without an agent there are no credentials, but public images must
        // still pull: docker treats only this line as "go on anonymously".
        Err(e) => Err(Failure {
            stdout: NOT_FOUND.to_owned(),
            stderr: Some(e.to_string()),
        }),
    }
}

fn write_credentials(server_url: &str, username: &str, secret: &Secret) {
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(secret.len() + 128));
    buf.extend_from_slice(b"{\"ServerURL\":");
    json_string(&mut buf, server_url);
    buf.extend_from_slice(b",\"Username\":");
    json_string(&mut buf, username);
    buf.extend_from_slice(b",\"Secret\":");
    json_string(&mut buf, secret.expose());
    buf.extend_from_slice(b"}\n");
    let mut out = io::stdout().lock();
    let _ = out.write_all(&buf);
    let _ = out.flush();
}

fn json_string(buf: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *buf, s).expect("writing a string to a Vec cannot fail");
}

fn store() -> Result<(), Failure> {
    let input = read_stdin()?;
    let (server_url, username, secret) = parse_store(&input)?;
    drop(input);
    let req = Request::Store {
        server_url,
        username,
        secret,
    };
    match client::call(&options(Duration::from_secs(10)), &req) {
        Ok(Response::Done) => Ok(()),
        Ok(other) => Err(unexpected(other)),
        Err(e) => Err(agent_error(&e)),
    }
}

fn erase() -> Result<(), Failure> {
    let server_url = read_server_url()?;
    match client::call(
        &options(Duration::from_secs(10)),
        &Request::Erase { server_url },
    ) {
        // Erasing what is not there succeeds: `podman logout` fails otherwise,
        // and `docker logout` erases several spellings of one registry.
        Ok(Response::Done | Response::NotFound) => Ok(()),
        Ok(other) => Err(unexpected(other)),
        Err(e) => Err(agent_error(&e)),
    }
}

/// `list` never reads stdin: Go clients write `unused`, docker-py closes it,
/// and a terminal would block.
///
/// When the agent cannot be reached or started, `list` prints `{}` and exits
/// 0, with the reason on stderr. This is deliberate: docker's classic
/// builder (`DOCKER_BUILDKIT=0`), `docker run --use-api-socket` and compose
/// v1 call `list` (then `get` per key) before every build, and a failing
/// `list` would break builds that need no login at all (public base images).
/// Nothing is hidden: the reason is on stderr, and every `store` (a login)
/// fails loudly with it.
fn list() -> Result<(), Failure> {
    match client::call(&options(GET_START_BUDGET), &Request::ListLogins) {
        Ok(Response::List { entries }) => {
            let mut json = serde_json::to_string(&entries).expect("a string map serialises");
            json.push('\n');
            print_out(&json);
            Ok(())
        }
        Ok(other) => Err(unexpected(other)),
        // Like `get`: without an agent there is nothing to list, and classic
        // `docker build` must still run (see above).
        Err(e) => {
            eprintln!("{NAME}: {e}; listing no credentials");
            print_out("{}\n");
            Ok(())
        }
    }
}

fn unexpected(resp: Response) -> Failure {
    match resp {
        Response::Error { message, .. } => Failure::line(message),
        other => Failure::line(format!(
            "unexpected answer from the regent agent ({}); run `regent status`",
            other.kind()
        )),
    }
}

/// Reads the server URL of `get` and `erase`: line breaks are dropped and
/// surrounding white space trimmed, as the reference helpers do.
fn read_server_url() -> Result<String, Failure> {
    parse_server_url(&read_stdin()?)
}

/// Reads stdin to its end, refusing more than [`MAX_STDIN`] bytes and, unless
/// a person is typing at a terminal, a stdin that stays open too long.
///
/// On unix it waits with `poll(2)` on the descriptor rather than on a reader
/// thread: this runs on every `docker pull`, and a thread costs more than
/// the rest of the lookup ([`regent_shared::sys::Stdin`]).
fn read_stdin() -> Result<zeroize::Zeroizing<Vec<u8>>, Failure> {
    let interactive = io::stdin().is_terminal();
    let deadline = Instant::now() + STDIN_TIMEOUT;
    let mut stdin = regent_shared::sys::Stdin::new();
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(16 * 1024));
    let mut chunk = zeroize::Zeroizing::new([0u8; 16 * 1024]);
    let timed_out = || {
        Failure::line(format!(
            "timed out after {}s waiting for stdin to close",
            STDIN_TIMEOUT.as_secs()
        ))
    };
    loop {
        if !interactive {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            match stdin.wait(left) {
                Ok(true) => {}
                Ok(false) => return Err(timed_out()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Failure::line(format!("cannot read stdin: {e}"))),
            }
        }
        match stdin.read(&mut chunk[..]) {
            Ok(0) => return Ok(buf),
            Ok(n) => {
                if buf.len() + n > MAX_STDIN {
                    return Err(Failure::line(format!(
                        "input too large: more than {MAX_STDIN} bytes on stdin"
                    )));
                }
                if buf.len() + n > buf.capacity() {
                    // Grow by hand: a reallocation would leave a copy of the
                    // secret behind in freed memory; the old buffer is wiped.
                    let mut bigger = zeroize::Zeroizing::new(Vec::with_capacity(
                        (buf.len() + n).max(buf.capacity() * 2),
                    ));
                    bigger.extend_from_slice(&buf);
                    buf = bigger;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Failure::line(format!("cannot read stdin: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use regent_shared::messages::{NO_SERVER_URL, NO_USERNAME};

    fn parsed(json: &str) -> Result<(String, String, String), String> {
        parse_store(json.as_bytes())
            .map(|(u, n, s)| (u, n, s.expose().to_owned()))
            .map_err(|f| f.stdout)
    }

    #[test]
    fn store_json_like_go() {
        let want = Ok(("r.example".to_owned(), "u".to_owned(), "s".to_owned()));
        assert_eq!(
            parsed(r#"{"ServerURL":"r.example","Username":"u","Secret":"s"}"#),
            want
        );
        assert_eq!(
            parsed(r#"{"serverurl":"r.example","USERNAME":"u","secret":"s","Extra":1}"#),
            want
        );
        assert_eq!(
            parsed("{\n\"ServerURL\":\"r.example\",\n\"Username\":\"u\",\n\"Secret\":\"s\"\n}\n"),
            want
        );
        // The first value wins, as with Go's decoder.
        assert_eq!(
            parsed(r#"{"ServerURL":"r.example","Username":"u","Secret":"s"} {"x":1}"#),
            want
        );
        // An exact key beats a case-insensitive one.
        assert_eq!(
            parsed(r#"{"secret":"no","Secret":"s","ServerURL":"r.example","Username":"u"}"#),
            want
        );
    }

    #[test]
    fn store_validation_messages() {
        assert_eq!(
            parsed(r#"{"Username":"u","Secret":"s"}"#),
            Err(NO_SERVER_URL.to_owned())
        );
        assert_eq!(
            parsed(r#"{"ServerURL":"","Username":"u","Secret":"s"}"#),
            Err(NO_SERVER_URL.to_owned())
        );
        assert_eq!(
            parsed(r#"{"ServerURL":"r","Secret":"s"}"#),
            Err(NO_USERNAME.to_owned())
        );
        assert!(parsed(r#"{"ServerURL":"r","Username":"u"}"#).is_ok());
        assert!(parsed(r#"{"ServerURL":"r","Username":"u","Secret":""}"#).is_ok());
    }

    #[test]
    fn store_errors_never_quote_the_input() {
        for bad in [
            "notjson-hunter2",
            r#"{"ServerURL":"r","Username":"u","Secret":hunter2}"#,
            r#"{"ServerURL":"r","Username":"u","Secret":["hunter2"]}"#,
            r#"["hunter2"]"#,
            "",
        ] {
            let err = parsed(bad).unwrap_err();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn credentials_json_escapes() {
        let mut buf = Vec::new();
        json_string(&mut buf, "a\"b\\c\nd<é>");
        assert_eq!(String::from_utf8(buf).unwrap(), r#""a\"b\\c\nd<é>""#);
    }
}
