//! Conformance with the docker credential-helper protocol: every verb, every
//! error string, stdin variants, output shapes (docs/protocol.md §5, C1–C24).

use regent_tests::{Input, StoreKind, TestEnv, random_secret, unique_host};

// The protocol's error lines as docker's credential-helper client matches
// them (github.com/docker/docker-credential-helpers, credentials/error.go),
// pinned here as literals: never taken from the code under test.
const NOT_FOUND: &str = "credentials not found in native keychain";
const NO_SERVER_URL: &str = "no credentials server URL";
const NO_USERNAME: &str = "no credentials username";

const VERSION_PREFIX: &str = "docker-credential-regent (regent) ";

// ---- C1, C2, C3: argv ----

#[test]
fn version_prints_one_line_without_reading_stdin() {
    let env = TestEnv::new();
    for flag in ["version", "-v", "--version"] {
        // stdin stays open: `version` must not read it.
        let out = env.helper_stdin_open(&[flag]);
        assert!(out.success(), "{flag}: expected exit 0\n{out}");
        let text = out.stdout();
        assert!(
            text.ends_with('\n') && text.matches('\n').count() == 1,
            "{flag}: expected exactly one line\n{out}"
        );
        let line = text.trim_end();
        assert_eq!(
            line,
            format!("{VERSION_PREFIX}{}", env!("CARGO_PKG_VERSION")),
            "{flag}: wrong version line\n{out}"
        );
    }
}

#[test]
fn help_exits_zero_with_usage_on_stdout() {
    let env = TestEnv::new();
    for flag in ["-h", "--help"] {
        let out = env.helper_stdin_open(&[flag]);
        assert!(out.success(), "{flag}: expected exit 0\n{out}");
        assert!(
            out.stdout().to_lowercase().contains("usage"),
            "{flag}: expected usage text on stdout\n{out}"
        );
        for verb in ["get", "store", "erase", "list", "version"] {
            assert!(
                out.stdout().contains(verb),
                "{flag}: usage should name {verb}\n{out}"
            );
        }
    }
}

#[test]
fn usage_errors_print_usage_on_stdout_and_exit_1() {
    let env = TestEnv::new();
    let cases: &[&[&str]] = &[&[], &["get", "extra"], &["store", "a", "b"], &["list", "x"]];
    for args in cases {
        let out = env.helper(args, "registry.example.com");
        assert_eq!(out.code(), Some(1), "{args:?}: expected exit 1\n{out}");
        assert!(
            out.stdout().to_lowercase().contains("usage"),
            "{args:?}: expected a usage line on stdout\n{out}"
        );
    }
}

#[test]
fn unknown_action_prints_one_line_and_exits_1() {
    let env = TestEnv::new();
    let out = env.helper(&["frob"], "");
    assert_eq!(out.code(), Some(1), "expected exit 1\n{out}");
    let lines = out.out_lines();
    assert_eq!(lines.len(), 1, "expected exactly one line on stdout\n{out}");
    assert!(
        lines[0].contains("frob"),
        "the line should name the unknown action\n{out}"
    );
}

// ---- C4, C5, C6, C7: store and get ----

#[test]
fn store_then_get_round_trips() {
    let env = TestEnv::new();
    let host = unique_host("registry");
    let store_input = format!(r#"{{"ServerURL":"{host}","Username":"u","Secret":"s"}}"#) + "\n";
    let out = env.helper(&["store"], &store_input);
    env.assert_store_ok(&out, "s");
    let creds = env.get_ok(&host);
    assert_eq!(creds.username, "u");
    assert_eq!(creds.secret, "s");
}

#[test]
fn get_accepts_newline_crlf_and_spaces_around_the_url() {
    let env = TestEnv::new();
    let host = unique_host("variants");
    env.store_ok(&host, "alice", "pa55");
    let erase_host = unique_host("erase-variants");
    for stdin in [
        host.clone(),
        format!("{host}\n"),
        format!("{host}\r\n"),
        format!("  {host}  \n"),
        format!("\t{host} \r\n"),
    ] {
        let out = env.helper(&["get"], &stdin);
        let creds = env.parse_get(&out);
        assert_eq!(
            (creds.username.as_str(), creds.secret.as_str()),
            ("alice", "pa55"),
            "get with stdin {stdin:?}\n{out}"
        );
    }
    for stdin in [
        format!("{erase_host}\n"),
        format!("{erase_host}\r\n"),
        format!("  {erase_host}  \n"),
    ] {
        env.store_ok(&erase_host, "bob", "x");
        let out = env.helper(&["erase"], &stdin);
        assert!(
            out.success() && out.stdout.is_empty(),
            "erase with stdin {stdin:?}\n{out}"
        );
        env.get_missing(&erase_host);
    }
}

#[test]
fn get_of_unknown_registry_is_not_found() {
    let env = TestEnv::new();
    let out = env.helper(&["get"], "missing.example");
    env.assert_not_found(&out);
    assert_eq!(out.out_trim(), NOT_FOUND);
    // With a newline too, and after something else was stored.
    env.store_ok("present.example", "u", "s");
    let out = env.helper(&["get"], "missing.example\n");
    env.assert_not_found(&out);
}

// ---- C8, C9, C10, C11, C12: validation ----

#[test]
fn empty_server_url_is_refused_by_get_and_erase() {
    let env = TestEnv::new();
    for verb in ["get", "erase"] {
        for stdin in ["", " \n", "\r\n", "\n\n", "   "] {
            let out = env.helper(&[verb], stdin);
            assert!(
                out.code() == Some(1) && out.out_trim() == NO_SERVER_URL,
                "{verb} with stdin {stdin:?}: expected exit 1 and {NO_SERVER_URL:?}\n{out}\n{}",
                env.diagnostics()
            );
        }
    }
}

#[test]
fn store_without_server_url_is_refused() {
    let env = TestEnv::new();
    for input in [
        r#"{"Username":"u","Secret":"s"}"#,
        r#"{"ServerURL":"","Username":"u","Secret":"s"}"#,
        r#"{"ServerURL":"   ","Username":"u","Secret":"s"}"#,
        r#"{"Secret":"s"}"#,
        r#"{}"#,
    ] {
        let out = env.helper(&["store"], input);
        env.assert_error(&out, NO_SERVER_URL);
    }
}

#[test]
fn store_without_username_is_refused() {
    let env = TestEnv::new();
    for input in [
        r#"{"ServerURL":"nouser.example","Secret":"s"}"#,
        r#"{"ServerURL":"nouser.example","Username":"","Secret":"s"}"#,
    ] {
        let out = env.helper(&["store"], input);
        env.assert_error(&out, NO_USERNAME);
    }
    env.get_missing("nouser.example");
}

#[test]
fn store_accepts_an_empty_or_absent_secret() {
    let env = TestEnv::new();
    let out = env.helper(
        &["store"],
        r#"{"ServerURL":"empty-secret.example","Username":"u","Secret":""}"#,
    );
    env.assert_store_ok(&out, "");
    let creds = env.get_ok("empty-secret.example");
    assert_eq!((creds.username.as_str(), creds.secret.as_str()), ("u", ""));

    // Go's decoder treats a missing field as empty: the reference accepts it.
    let out = env.helper(
        &["store"],
        r#"{"ServerURL":"absent-secret.example","Username":"v"}"#,
    );
    env.assert_store_ok(&out, "");
    let creds = env.get_ok("absent-secret.example");
    assert_eq!((creds.username.as_str(), creds.secret.as_str()), ("v", ""));
}

#[test]
fn store_with_invalid_input_fails_with_one_line() {
    let env = TestEnv::new();
    let secret = "hunter2-do-not-echo-me";
    let truncated = format!(r#"{{"ServerURL":"bad.example","Username":"u","Secret":"{secret}""#);
    let wrong_type =
        format!(r#"{{"ServerURL":"bad.example","Username":"u","Secret":["{secret}"]}}"#);
    let cases: Vec<(&str, &[u8])> = vec![
        ("notjson", b"notjson"),
        ("empty stdin", b""),
        ("array", b"[1,2,3]"),
        ("string", b"\"bad.example\""),
        ("number", b"42"),
        ("truncated object", truncated.as_bytes()),
        ("secret of the wrong type", wrong_type.as_bytes()),
    ];
    for (name, input) in cases {
        let out = env.helper(&["store"], input);
        assert_eq!(out.code(), Some(1), "{name}: expected exit 1\n{out}");
        let lines = out.out_lines();
        assert!(
            lines.len() == 1 && !lines[0].trim().is_empty(),
            "{name}: expected one non-empty line on stdout\n{out}"
        );
        assert!(
            !out.stdout().contains(secret) && !out.stderr().contains(secret),
            "{name}: the secret was echoed back\n{out}"
        );
    }
    env.get_missing("bad.example");
}

// ---- C13, C14, C15, C16 ----

#[test]
fn identity_token_username_round_trips() {
    let env = TestEnv::new();
    let out = env.helper(
        &["store"],
        r#"{"ServerURL":"r.example","Username":"<token>","Secret":"idtok"}"#,
    );
    env.assert_store_ok(&out, "idtok");
    let creds = env.get_ok("r.example");
    assert_eq!(creds.username, "<token>");
    assert_eq!(creds.secret, "idtok");
    assert_eq!(
        env.list_ok().get("r.example").map(String::as_str),
        Some("<token>")
    );
}

#[test]
fn second_store_wins_and_list_shows_one_key() {
    let env = TestEnv::new();
    env.store_ok("twice.example", "first", "one");
    env.store_ok("twice.example", "second", "two");
    let creds = env.get_ok("twice.example");
    assert_eq!(
        (creds.username.as_str(), creds.secret.as_str()),
        ("second", "two")
    );
    let list = env.list_ok();
    assert_eq!(list.len(), 1, "list: {list:?}");
    assert_eq!(
        list.get("twice.example").map(String::as_str),
        Some("second")
    );
}

#[test]
fn erase_removes_and_erasing_a_missing_key_succeeds() {
    let env = TestEnv::new();
    env.store_ok("erase.example", "u", "s");
    env.store_ok("keep.example", "k", "s2");
    env.erase_ok("erase.example");
    env.get_missing("erase.example");
    assert_eq!(env.get_ok("keep.example").secret, "s2");
    // Again, and a key that never existed: exit 0, empty stdout (podman logout).
    env.erase_ok("erase.example");
    env.erase_ok("never-stored.example");
    // docker logout erases up to four spellings of one registry.
    env.store_ok("logout.example", "u", "s");
    for form in [
        "logout.example",
        "logout.example",
        "http://logout.example",
        "https://logout.example",
    ] {
        env.erase_ok(form);
    }
    env.get_missing("logout.example");
    let list = env.list_ok();
    assert_eq!(
        list.keys().collect::<Vec<_>>(),
        ["keep.example"],
        "list: {list:?}"
    );
}

// ---- C17, C18: list ----

#[test]
fn list_of_empty_store_is_an_empty_object() {
    let env = TestEnv::new();
    for input in [Input::Null, Input::Bytes(b"unused"), Input::Bytes(b"")] {
        let out = env.run(
            env.command(&env.bins.helper).arg("list"),
            input,
            regent_tests::DEFAULT_TIMEOUT,
        );
        assert!(out.success(), "list: expected exit 0\n{out}");
        assert_eq!(out.out_trim(), "{}", "list of an empty store\n{out}");
    }
}

#[test]
fn list_does_not_read_stdin() {
    let env = TestEnv::new();
    env.store_ok("open-stdin.example", "u", "s");
    // A pipe that is never written nor closed: a helper reading it would block.
    let out = env.helper_stdin_open(&["list"]);
    let list = env.parse_list(&out);
    assert_eq!(
        list.get("open-stdin.example").map(String::as_str),
        Some("u")
    );
    // And on a fresh env, before anything was stored.
    let fresh = TestEnv::new();
    let out = fresh.helper_stdin_open(&["list"]);
    assert!(out.success(), "list with open stdin\n{out}");
    assert_eq!(out.out_trim(), "{}", "{out}");
}

#[test]
fn list_returns_keys_as_stored() {
    let env = TestEnv::new();
    env.store_ok("https://index.docker.io/v1/", "hubuser", "a");
    env.store_ok("ghcr.io", "ghuser", "b");
    env.store_ok("localhost:5000", "localuser", "c");
    let out = env.helper(&["list"], "unused");
    let list = env.parse_list(&out);
    let expected: std::collections::BTreeMap<String, String> = [
        ("https://index.docker.io/v1/", "hubuser"),
        ("ghcr.io", "ghuser"),
        ("localhost:5000", "localuser"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(list, expected, "{out}");
    for secret in ["\"a\"", "\"b\"", "\"c\""] {
        assert!(
            !out.stdout().contains(secret),
            "list printed a secret\n{out}"
        );
    }
}

// ---- C20, C21, C22: payloads ----

/// The largest secret regent keeps in one kernel keyring key.
const KEYUTILS_MAX: usize = 32_766;

fn assert_round_trip(env: &TestEnv, host: &str, username: &str, secret: &str) {
    if env.store == StoreKind::Keyutils && secret.len() > KEYUTILS_MAX {
        // The kernel refuses it: the store must fail with one line that says
        // what to do, and nothing must be half-stored.
        let out = env.helper(&["store"], TestEnv::store_json(host, username, secret));
        assert_eq!(out.code(), Some(1), "{host}: expected a refusal\n{out}");
        assert_eq!(out.out_lines().len(), 1, "{out}");
        assert!(out.stdout().contains("REGENT_STORE=file"), "{out}");
        env.get_missing(host);
        return;
    }
    env.store_ok(host, username, secret);
    let creds = env.get_ok(host);
    assert_eq!(creds.username, username, "username of {host}");
    assert!(
        creds.secret == secret,
        "secret of {host} did not round-trip byte-exact: stored {} bytes, got {} bytes",
        secret.len(),
        creds.secret.len()
    );
}

#[test]
fn awkward_secrets_round_trip_byte_exact() {
    let env = TestEnv::new();
    let secrets = [
        r#"quote"inside"#.to_owned(),
        r"back\slash\\double\n-not-a-newline".to_owned(),
        "real\nnew\r\nlines\n".to_owned(),
        "html &<>&amp;<script>".to_owned(),
        "non-ASCII: pässwörd € 日本語 🔑".to_owned(),
        "tab\tand\u{1}control".to_owned(),
        " leading and trailing spaces ".to_owned(),
        "{\"Secret\":\"nested json\"}".to_owned(),
    ];
    for (i, secret) in secrets.iter().enumerate() {
        assert_round_trip(
            &env,
            &format!("awkward{i}.example"),
            &format!("user{i}"),
            secret,
        );
    }
    // Awkward usernames too.
    assert_round_trip(&env, "awkward-user.example", "ü\"s<e>r&\\", "x");
}

#[test]
fn large_secrets_round_trip_byte_exact() {
    let env = TestEnv::new();
    for (i, len) in [
        2_561usize,
        16 * 1024,
        64 * 1024 - 100,
        64 * 1024,
        64 * 1024 + 1,
        100_000,
    ]
    .into_iter()
    .enumerate()
    {
        assert_round_trip(
            &env,
            &format!("large{i}.example"),
            "AWS",
            &random_secret(len),
        );
    }
    // 64 KiB that doubles in size when JSON-escaped, and multi-byte characters.
    let escaped = "\"\\".repeat(32 * 1024);
    assert_round_trip(&env, "escaped.example", "u", &escaped);
    let wide = "€".repeat(64 * 1024 / 3 + 1);
    assert_round_trip(&env, "wide.example", "u", &wide);
}

#[test]
fn store_accepts_any_key_case_extra_keys_and_multiline_json() {
    let env = TestEnv::new();
    let inputs = [
        ("lower.example", r#"{"serverurl":"lower.example","username":"u1","secret":"s1"}"#.to_owned()),
        ("upper.example", r#"{"SERVERURL":"upper.example","USERNAME":"u2","SECRET":"s2"}"#.to_owned()),
        ("mixed.example", r#"{"sErVeRuRl":"mixed.example","UserName":"u3","sEcReT":"s3"}"#.to_owned()),
        (
            "extra.example",
            r#"{"ServerURL":"extra.example","Username":"u4","Secret":"s4","Extra":1,"Email":"a@b","Nested":{"a":[1,2,{"b":null}]}}"#
                .to_owned(),
        ),
        (
            "multiline.example",
            "{\n  \"ServerURL\": \"multiline.example\",\n  \"Username\": \"u5\",\n  \"Secret\": \"s5\"\n}\n"
                .to_owned(),
        ),
        (
            "crlf.example",
            "{\r\n\"ServerURL\":\r\n\"crlf.example\",\r\n\"Username\":\"u6\",\r\n\"Secret\":\"s6\"\r\n}\r\n"
                .to_owned(),
        ),
        (
            "nonewline.example",
            r#"{"ServerURL":"nonewline.example","Username":"u7","Secret":"s7"}"#.to_owned(),
        ),
    ];
    for (i, (host, input)) in inputs.iter().enumerate() {
        let out = env.helper(&["store"], input);
        let n = i + 1;
        env.assert_store_ok(&out, &format!("s{n}"));
        let creds = env.get_ok(host);
        assert_eq!(
            (creds.username, creds.secret),
            (format!("u{n}"), format!("s{n}")),
            "store input {input:?}"
        );
    }
}

// ---- C24: stdout carries only the payload ----

#[test]
fn every_verb_keeps_stdout_to_payload_or_one_line() {
    let env = TestEnv::new();
    let secret = random_secret(40);
    env.store_ok("clean.example", "u", &secret);
    let runs = [
        env.helper(&["get"], "clean.example"),
        env.helper(&["get"], "nothing.example"),
        env.helper(&["list"], ""),
        env.helper(&["erase"], "nothing.example"),
        env.helper(&["version"], ""),
        env.helper(&["store"], "{broken"),
    ];
    for out in &runs {
        assert!(
            out.out_lines().len() <= 1,
            "more than one line on stdout\n{out}"
        );
        assert!(
            !out.stderr().contains(&secret),
            "a secret appeared on stderr\n{out}"
        );
    }
    assert!(runs[0].stdout().contains(&secret));
    for out in &runs[1..] {
        assert!(!out.stdout().contains(&secret), "secret leaked\n{out}");
    }
}
