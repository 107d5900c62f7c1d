//! Reading a secret from stdin: bounded, and on a terminal asked for with
//! echo off (`sys::EchoOff`: `tcsetattr`, or the console mode on Windows).

use std::io::{IsTerminal, Read};

use anyhow::{Context, bail};
use zeroize::Zeroizing;

use crate::named_secrets;
use crate::sys::EchoOff;

/// The secret from stdin, bounded; one trailing newline is dropped. On a
/// terminal, asks for it with echo off.
pub fn read_secret(name: &str) -> anyhow::Result<Zeroizing<String>> {
    let stdin = std::io::stdin();
    let mut buf = Zeroizing::new(Vec::with_capacity(named_secrets::MAX_VALUE + 1));
    if stdin.is_terminal() {
        eprint!("secret {name} (input hidden): ");
        let _echo = EchoOff::new();
        let mut line = Zeroizing::new(String::with_capacity(1024));
        stdin.read_line(&mut line).context("reading the secret")?;
        eprintln!();
        buf.extend_from_slice(line.as_bytes());
    } else {
        stdin
            .lock()
            .take(named_secrets::MAX_VALUE as u64 + 1)
            .read_to_end(&mut buf)
            .context("reading the secret from stdin")?;
    }
    if buf.len() > named_secrets::MAX_VALUE {
        bail!(
            "the secret on stdin is larger than {} bytes",
            named_secrets::MAX_VALUE
        );
    }
    if buf.ends_with(b"\n") {
        buf.pop();
        if buf.ends_with(b"\r") {
            buf.pop();
        }
    }
    let text = std::str::from_utf8(&buf).context("the secret is not UTF-8")?;
    Ok(Zeroizing::new(text.to_owned()))
}
