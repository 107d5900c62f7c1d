//! Made-up test data and checks on bytes: random secrets and registry
//! hosts, a byte search for leaked secrets, and texts clipped for failure
//! messages.

use std::fs;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};

/// At most 4 KiB of a text, for failure messages.
pub fn clip(s: &str) -> String {
    const MAX: usize = 4096;
    if s.len() <= MAX {
        return format!("{s:?}");
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} more bytes)", &s[..end], s.len() - end)
}

/// True when `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// `n` random bytes from the kernel.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("read /dev/urandom");
    buf
}

/// A random printable secret of exactly `len` bytes (URL-safe base64 characters).
pub fn random_secret(len: usize) -> String {
    use base64::Engine;
    let mut s = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes(len));
    s.truncate(len);
    s
}

/// A registry host name unique to this call.
pub fn unique_host(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}-{}-{}.example",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}
