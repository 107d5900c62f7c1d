//! Test harness: run the real `docker-credential-regent` and `regent` binaries
//! against a real agent, hermetically.
//!
//! Every [`TestEnv`] owns a [`World`]: a temporary directory that holds
//! `HOME`, the XDG directories (the runtime dir is 0700) and the agent
//! socket. It picks the store backend from `REGENT_TEST_STORE` (`memory`, the
//! default, `file`, `keyring` or `keyutils`), logs at `REGENT_LOG=trace`, and
//! uses its own `REGENT_KEYRING_SERVICE` so that tests running at the same
//! time never share a keyring entry. Inherited `REGENT_*` and `XDG_*`
//! variables never reach a child. Dropping the env stops every agent it
//! started.
//!
//! The binaries are looked up next to the test executable
//! (`target/<profile>/deps/..`), or in `REGENT_BIN_DIR`. Cargo does not build
//! other packages' binaries for `cargo test -p regent-tests`: run
//! `cargo build --workspace --bins` first. With
//! `REGENT_TEST_HELPER_PROFILE=helper` (what scripts/test sets) the helper is
//! the one built as shipped, by `scripts/build-helper`.
//!
//! Every child runs with a hard timeout: a hang kills it and fails the test
//! with what it printed so far and the agent log.
//!
//! A test that cannot run here calls [`skip`]: the skip is written to
//! `REGENT_TEST_SKIP_LOG` for scripts/test's summary, and in [`strict`] mode
//! (`REGENT_TEST_STRICT=1`, CI) it fails the test. No check may turn into a
//! silent pass.
//!
//! The modules, each re-exported here but for the last three:
//!
//! - [`world`]: the hermetic world (directories, environment, an agent),
//!   shared with the benchmark;
//! - [`env`]: [`TestEnv`], a world with the binaries under test;
//! - [`helper`]: the helper's verbs and their success checks;
//! - [`agent`]: waiting for, stopping and finding the agents of an env;
//! - [`bins`]: where the binaries under test are;
//! - [`process`]: running a child with a timeout, pids and signals;
//! - [`data`]: made-up secrets and hosts, checks on bytes;
//! - [`skip`]: counted skips and strict mode;
//! - [`fakes`]: loopback fakes of the services regent talks to;
//! - [`secret_service`]: a private Secret Service;
//! - [`e2e`]: real docker, podman & co against a real registry.

pub mod agent;
pub mod bins;
pub mod data;
pub mod e2e;
pub mod env;
pub mod fakes;
pub mod helper;
pub mod process;
pub mod secret_service;
pub mod skip;
pub mod tls;
pub mod world;

pub use bins::{Bins, HELPER, HELPER_PROFILE_ENV, REGENT};
pub use data::{clip, contains, random_bytes, random_secret, unique_host};
pub use env::{DEFAULT_TIMEOUT, MARKER_ENV, TestEnv};
pub use helper::{Creds, NO_SERVER_URL, NO_USERNAME, NOT_FOUND};
pub use process::{
    Hang, Input, Outcome, all_at_once, is_alive, is_root, kill, run_with_timeout, spawn_retrying,
    wait_until, which,
};
pub use skip::{current_test, not_applicable, skip, strict};
pub use world::{AWS_CALLER_VARIABLES, CLOSED_METADATA, CLOUD_CALLER_VARIABLES, StoreKind, World};
