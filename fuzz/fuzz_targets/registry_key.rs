//! Registry-key normalisation: never panics, idempotent, blind to a scheme
//! in front, and every Docker Hub alias is one key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use regent_shared::registry::canonical;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(key) = canonical(raw) else {
        return;
    };
    assert_eq!(
        canonical(&key).as_deref(),
        Ok(key.as_str()),
        "not idempotent: {raw:?}"
    );
    let trimmed = raw.trim();
    if !trimmed.contains("://") && !trimmed.is_empty() {
        for scheme in ["https://", "http://"] {
            assert_eq!(
                canonical(&format!("{scheme}{trimmed}")).as_deref(),
                Ok(key.as_str()),
                "a scheme changed the key of {raw:?}"
            );
        }
    }
    if key == "docker.io" {
        for alias in [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "registry-1.docker.io",
        ] {
            assert_eq!(canonical(alias).as_deref(), Ok("docker.io"));
        }
    }
});
