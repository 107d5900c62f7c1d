//! The helper's stdin parsing of every verb: the server URL of `get` and
//! `erase`, the credentials JSON of `store`. Never panics; an error is one
//! line; an accepted payload has what the protocol requires.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../helper/src/parse.rs"]
mod parse;

fuzz_target!(|data: &[u8]| {
    match parse::parse_server_url(data) {
        Ok(url) => {
            assert!(!url.is_empty());
            assert_eq!(url, url.trim());
            assert!(!url.contains(['\n', '\r']));
        }
        Err(f) => assert!(!f.stdout.contains('\n'), "{}", f.stdout),
    }
    match parse::parse_store(data) {
        Ok((url, user, _secret)) => {
            assert!(!url.trim().is_empty());
            assert!(!user.is_empty());
        }
        Err(f) => assert!(!f.stdout.contains('\n'), "{}", f.stdout),
    }
});
