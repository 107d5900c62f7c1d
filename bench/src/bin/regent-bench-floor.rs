//! The exec floor of `regent-bench`: an empty Rust program. Timing it next to
//! `docker-credential-regent get` shows what the helper costs beyond starting
//! any Rust binary at all.

fn main() {}
