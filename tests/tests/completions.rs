//! `regent completions SHELL` and `regent man --out DIR`, generated from the
//! command line regent parses, checked by the programs that read them: bash
//! loads and runs the completion function, `zsh -n` and `fish -n` parse
//! their scripts, `man -l` renders every page. Then scripts/install-shell-files,
//! and scripts/install's step that runs it, in a temporary HOME.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use regent_tests::{DEFAULT_TIMEOUT, Input, Outcome, TestEnv, current_test, skip, which};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `bash -c script` in `env`, with `$REGENT` the regent under test.
fn bash(env: &TestEnv, script: &str) -> Outcome {
    env.run(
        env.command("bash")
            .arg("-c")
            .arg(script)
            .env("REGENT", &env.bins.regent),
        Input::Null,
        DEFAULT_TIMEOUT,
    )
}

/// The commands `--help` lists under "Commands:", with their one-line
/// about, but `help`.
fn listed_commands(help: &str) -> Vec<(String, String)> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let (name, about) = l.trim().split_once(' ')?;
            Some((name.to_owned(), about.trim().to_owned()))
        })
        .filter(|(name, _)| name != "help")
        .collect()
}

/// Words only, whatever the width: man's filling and hyphenation (a U+2010
/// at a line end) undone.
fn words(text: &str) -> String {
    let mut joined = String::new();
    for line in text.lines().map(str::trim) {
        match joined.strip_suffix('\u{2010}') {
            Some(cut) => joined.truncate(cut.len()),
            None if !joined.is_empty() => joined.push(' '),
            None => {}
        }
        joined.push_str(line);
    }
    joined.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn words_undo_filling_and_hyphenation() {
    assert_eq!(
        words("NAME\n   regent-agent - Run (`re\u{2010}\n      gent start`)\n"),
        "NAME regent-agent - Run (`regent start`)"
    );
}

// ---- bash ----

#[test]
fn the_bash_script_registers_its_function_for_regent() {
    let env = TestEnv::new();
    let out = bash(
        &env,
        r#"source <("$REGENT" completions bash) && complete -p regent"#,
    );
    assert!(out.success(), "{out}");
    let line = out.out_trim();
    assert!(
        line.starts_with("complete ") && line.contains("-F _regent") && line.ends_with(" regent"),
        "{out}"
    );
}

#[test]
fn bash_completes_commands_and_nested_commands() {
    let env = TestEnv::new();
    // What bash does on TAB: COMP_WORDS and COMP_CWORD set, the function
    // called with the command, the word and the previous word; then
    // COMPREPLY, one per line.
    let complete = |words: &[&str]| -> BTreeSet<String> {
        let cword = words.len() - 1;
        let quoted: Vec<String> = words.iter().map(|w| format!("'{w}'")).collect();
        let line = words.join(" ");
        let script = format!(
            r#"source <("$REGENT" completions bash) || exit 1
COMP_WORDS=({words}); COMP_CWORD={cword}; COMP_LINE='{line}'; COMP_POINT=${{#COMP_LINE}}
_regent regent "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\n' "${{COMPREPLY[@]}}""#,
            words = quoted.join(" "),
        );
        let out = bash(&env, &script);
        assert!(out.success(), "{out}");
        out.out_lines()
            .into_iter()
            .filter(|w| !w.is_empty())
            .collect()
    };
    let set =
        |words: &[&str]| -> BTreeSet<String> { words.iter().map(|w| w.to_string()).collect() };

    assert_eq!(complete(&["regent", "se"]), set(&["secret", "setup"]));
    assert_eq!(
        complete(&["regent", "st"]),
        set(&["start", "status", "stop"])
    );
    assert_eq!(complete(&["regent", "com"]), set(&["completions"]));
    let nested = complete(&["regent", "secret", ""]);
    assert!(
        set(&["set", "rm", "ls"]).is_subset(&nested) && !nested.contains("status"),
        "{nested:?}"
    );
    let shells = complete(&["regent", "completions", ""]);
    assert!(
        set(&["bash", "zsh", "fish"]).is_subset(&shells),
        "{shells:?}"
    );
}

// ---- zsh, fish ----

/// Writes the `shell` script into the env and, if `shell` is installed,
/// has it parse the script (`-n`); otherwise a counted skip.
fn parses(shell: &str, marker: &str) {
    let env = TestEnv::new();
    let out = env.regent(&["completions", shell]);
    assert!(out.success(), "{out}");
    let script = out.stdout();
    assert!(
        script.contains(marker),
        "the {shell} script has {marker:?}\n{out}"
    );
    let Some(program) = which(shell) else {
        return skip(
            &current_test(),
            &format!("{shell} is not installed (Debian package {shell}): its script is not parsed"),
        );
    };
    let path = env.root.join(format!("regent.{shell}"));
    fs::write(&path, &script).unwrap();
    let check = env.run(
        env.command(&program).arg("-n").arg(&path),
        Input::Null,
        DEFAULT_TIMEOUT,
    );
    assert!(check.success(), "{shell} -n {}\n{check}", path.display());
}

#[test]
fn zsh_parses_the_zsh_script() {
    parses("zsh", "#compdef regent");
}

#[test]
fn fish_parses_the_fish_script() {
    parses("fish", "complete -c regent");
}

// ---- errors ----

#[test]
fn an_unknown_shell_is_a_usage_error_naming_the_shells() {
    let env = TestEnv::new();
    let out = env.regent(&["completions", "tcsh"]);
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stdout.is_empty(), "{out}");
    let err = out.stderr();
    assert!(err.contains("invalid value 'tcsh'"), "{out}");
    for shell in ["bash", "zsh", "fish"] {
        assert!(err.contains(shell), "{shell}\n{out}");
    }
}

#[test]
fn man_without_a_directory_is_a_usage_error() {
    let env = TestEnv::new();
    let out = env.regent(&["man"]);
    assert_eq!(out.code(), Some(2), "{out}");
    assert!(out.stderr().contains("--out"), "{out}");
}

// ---- man ----

#[test]
fn man_writes_a_page_for_every_command_and_each_renders() {
    let env = TestEnv::new();
    let dir = env.root.join("share/man/man1");
    let out = env.regent(&["man", "--out", dir.to_str().unwrap()]);
    assert!(out.success(), "{out}");
    assert!(out.stdout.is_empty(), "{out}");

    // The pages expected: regent.1, then a page per command --help lists,
    // and per command those commands list (`regent secret set`).
    let help = env.regent(&["--help"]);
    assert!(help.success(), "{help}");
    let mut expected = vec![("regent".to_owned(), "A credential agent".to_owned())];
    for (name, about) in listed_commands(&help.stdout()) {
        let sub = env.regent(&[&name, "--help"]);
        assert!(sub.success(), "{sub}");
        for (nested, about) in listed_commands(&sub.stdout()) {
            expected.push((format!("regent-{name}-{nested}"), about));
        }
        expected.push((format!("regent-{name}"), about));
    }
    // And the helper's, which it has no way to write itself.
    expected.push((
        "docker-credential-regent".to_owned(),
        "the credential helper of regent for docker, podman, buildah, skopeo and docker-py"
            .to_owned(),
    ));
    let names: BTreeSet<String> = expected.iter().map(|(n, _)| format!("{n}.1")).collect();
    for page in [
        "regent-ls.1",
        "regent-secret.1",
        "regent-secret-set.1",
        "regent-man.1",
    ] {
        assert!(names.contains(page), "{page} in {names:?}");
    }

    // Exactly those files, each named on stderr.
    let written: BTreeSet<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(written, names, "{out}");
    let reported: BTreeSet<String> = out
        .stderr()
        .lines()
        .filter_map(|l| l.strip_prefix("wrote "))
        .map(|p| {
            assert_eq!(Path::new(p).parent(), Some(dir.as_path()), "{out}");
            Path::new(p)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(reported, names, "{out}");

    let Some(man) = which("man") else {
        return skip(
            &current_test(),
            "man is not installed (Debian package man-db): the pages are not rendered",
        );
    };
    for (name, about) in &expected {
        let page = dir.join(format!("{name}.1"));
        let shown = env.run(
            env.command(&man)
                .arg("-l")
                .arg(&page)
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "80"),
            Input::Null,
            DEFAULT_TIMEOUT,
        );
        assert!(shown.success(), "man -l {}\n{shown}", page.display());
        let text = shown.stdout();
        assert!(
            text.lines().any(|l| l == "NAME"),
            "{name}.1 has a NAME section\n{text}"
        );
        let text = words(&text);
        assert!(
            text.contains(&format!("{name} - {}", words(about))),
            "{name}.1's NAME is its about text {about:?}\n{text}"
        );
        if name == "regent" {
            for word in [
                "ENVIRONMENT",
                "REGENT_STORE",
                "REGENT_SOCKET",
                "FILES",
                "agent.log",
            ] {
                assert!(text.contains(word), "{word} in regent.1\n{text}");
            }
        }
    }
}

// ---- scripts/install-shell-files, scripts/install ----

/// What scripts/install-shell-files (or scripts/install) printed and put
/// into `bash_dir`, `zsh_dir`, `fish_file`'s directory and `man_dir`:
/// exactly the scripts `regent completions` prints and the pages.
fn check_installed(
    env: &TestEnv,
    out: &Outcome,
    bash: PathBuf,
    zsh: PathBuf,
    fish: PathBuf,
    man_dir: PathBuf,
) {
    assert!(out.success(), "{out}");
    let text = out.stdout();
    for (shell, path) in [("bash", &bash), ("zsh", &zsh), ("fish", &fish)] {
        let script = env.regent(&["completions", shell]);
        assert!(script.success(), "{script}");
        let installed = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}\n{out}", path.display()));
        assert!(
            installed == script.stdout,
            "{} is `regent completions {shell}`",
            path.display()
        );
        assert!(
            text.contains(&path.display().to_string()),
            "{} is named\n{out}",
            path.display()
        );
        // No temporary file left next to it.
        let dir = path.parent().unwrap();
        let names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{}: {names:?}", dir.display());
    }
    for page in ["regent.1", "regent-ls.1", "regent-secret-set.1"] {
        let path = man_dir.join(page);
        assert!(path.is_file(), "{}\n{out}", path.display());
        assert!(
            text.contains(&path.display().to_string()),
            "{} is named\n{out}",
            path.display()
        );
    }
}

fn install_shell_files(env: &TestEnv, args: &[&str]) -> Outcome {
    env.run(
        env.command("bash")
            .arg(repo().join("scripts/install-shell-files"))
            .args(args)
            .arg(&env.bins.regent),
        Input::Null,
        DEFAULT_TIMEOUT,
    )
}

#[test]
fn install_shell_files_uses_the_xdg_directories() {
    let env = TestEnv::new();
    let out = install_shell_files(&env, &[]);
    check_installed(
        &env,
        &out,
        env.data_home.join("bash-completion/completions/regent"),
        env.data_home.join("zsh/site-functions/_regent"),
        env.config_home.join("fish/completions/regent.fish"),
        env.data_home.join("man/man1"),
    );
    // Again: the files are replaced, nothing else changes.
    let again = install_shell_files(&env, &[]);
    assert!(again.success(), "{again}");
    assert!(!env.home.join(".local").exists(), "{again}");
}

#[test]
fn install_shell_files_without_xdg_variables_uses_home() {
    let mut env = TestEnv::new();
    env.set_env("XDG_DATA_HOME", None::<&str>);
    env.set_env("XDG_CONFIG_HOME", None::<&str>);
    let out = install_shell_files(&env, &[]);
    let share = env.home.join(".local/share");
    check_installed(
        &env,
        &out,
        share.join("bash-completion/completions/regent"),
        share.join("zsh/site-functions/_regent"),
        env.home.join(".config/fish/completions/regent.fish"),
        share.join("man/man1"),
    );
}

#[test]
fn install_shell_files_under_a_prefix() {
    let env = TestEnv::new();
    let prefix = env.root.join("prefix");
    let out = install_shell_files(&env, &["--prefix", prefix.to_str().unwrap()]);
    check_installed(
        &env,
        &out,
        prefix.join("share/bash-completion/completions/regent"),
        prefix.join("share/zsh/site-functions/_regent"),
        prefix.join("share/fish/vendor_completions.d/regent.fish"),
        prefix.join("share/man/man1"),
    );
    assert!(!env.data_home.join("man").exists(), "{out}");
}

#[test]
fn install_shell_files_refuses_a_missing_regent() {
    let env = TestEnv::new();
    let missing = env.root.join("no-regent");
    let out = env.run(
        env.command("bash")
            .arg(repo().join("scripts/install-shell-files"))
            .arg(&missing),
        Input::Null,
        DEFAULT_TIMEOUT,
    );
    assert_eq!(out.code(), Some(1), "{out}");
    assert!(
        out.stderr().contains(&missing.display().to_string()),
        "{out}"
    );
    assert!(!env.data_home.join("bash-completion").exists(), "{out}");
}

/// scripts/install itself, without its release build: a `cargo` on PATH
/// that builds nothing, and a target directory whose binaries run the ones
/// under test. `--no-setup --no-service`: only the binaries, completions and
/// man pages.
#[test]
fn install_puts_completions_and_man_pages_under_its_prefix() {
    let mut env = TestEnv::new();
    let fake_bin = env.root.join("fake-bin");
    let target = env.root.join("target");
    let script = |path: &Path, body: &str| {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    };
    script(&fake_bin.join("cargo"), "exit 0");
    let run = |bin: &Path| format!("exec '{}' \"$@\"", bin.display());
    script(&target.join("release/regent"), &run(&env.bins.regent));
    script(
        &target.join("helper/docker-credential-regent"),
        &run(&env.bins.helper),
    );
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![fake_bin];
    dirs.extend(std::env::split_paths(&path));
    env.set_env("PATH", Some(std::env::join_paths(dirs).unwrap()));
    env.set_env("CARGO_TARGET_DIR", Some(&target));
    // scripts/build-helper builds for the host: no rustup in this HOME.
    env.set_env("REGENT_HELPER_NATIVE", Some("1"));
    env.set_env("BINDIR", None::<&str>);
    env.set_env("PREFIX", None::<&str>);
    if which("cc").is_none() {
        return skip(
            &current_test(),
            "no cc on PATH, which scripts/install requires",
        );
    }

    let prefix = env.root.join("prefix");
    let out = env.run(
        env.command("bash")
            .arg(repo().join("scripts/install"))
            .args([
                "--prefix",
                prefix.to_str().unwrap(),
                "--no-setup",
                "--no-service",
            ]),
        Input::Null,
        DEFAULT_TIMEOUT,
    );
    check_installed(
        &env,
        &out,
        prefix.join("share/bash-completion/completions/regent"),
        prefix.join("share/zsh/site-functions/_regent"),
        prefix.join("share/fish/vendor_completions.d/regent.fish"),
        prefix.join("share/man/man1"),
    );
    assert!(prefix.join("bin/regent").is_file(), "{out}");
    assert!(!env.data_home.join("man").exists(), "{out}");
    assert!(!env.config_home.join("fish").exists(), "{out}");
}
