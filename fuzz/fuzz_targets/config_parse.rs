//! The agent's config file parser: never panics, and an error names a line
//! and column inside the text.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use regent_agent::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse(text, Path::new("config.toml")) {
        let message = e.to_string();
        assert!(!message.is_empty());
    }
});
