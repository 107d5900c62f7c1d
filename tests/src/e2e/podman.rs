//! podman, buildah and skopeo in an [`E2e`]: running them, logging in,
//! and checking that podman works here at all.

use std::sync::Mutex;

use super::{E2e, PODMAN, USER, require, skip};
use crate::Outcome;

/// Held around `podman info`. On a machine where podman never ran, the
/// first podman creates its shared-memory lock file (`/dev/shm/libpod_lock`
/// as root); two first podmans at once race, and the loser fails with
/// "failed to create 2048 locks in /libpod_lock: file exists". Tests of
/// one binary run in parallel, so the first probes take turns.
static FIRST_USE: Mutex<()> = Mutex::new(());

impl E2e {
    pub fn podman(&self, args: &[&str]) -> Outcome {
        self.client("podman", args, None)
    }

    pub fn buildah(&self, args: &[&str]) -> Outcome {
        self.client("buildah", args, None)
    }

    pub fn skopeo(&self, args: &[&str]) -> Outcome {
        self.client("skopeo", args, None)
    }

    /// `<tool> login -u USER --password-stdin <addr>` (podman, buildah,
    /// skopeo).
    pub fn login(&self, tool: &str, addr: &str, password: &str) -> Outcome {
        let stdin = format!("{password}\n");
        self.client(
            tool,
            &["login", "-u", USER, "--password-stdin", addr],
            Some(stdin.as_bytes()),
        )
    }

    /// Checks that podman can run at all here (`podman info`); skips when not.
    pub fn podman_works(&self) -> bool {
        if let Err(why) = require(&[PODMAN]) {
            skip(self.name, &why);
            return false;
        }
        let out = {
            let _turn = FIRST_USE.lock().unwrap_or_else(|e| e.into_inner());
            self.podman(&["info"])
        };
        if !out.success() {
            skip(self.name, &format!("`podman info` fails here:\n{out}"));
            return false;
        }
        true
    }

    /// Imports the tiny tarball into podman's storage as `image`.
    pub fn podman_import(&self, image: &str) {
        let tar = self.tiny_tar.to_string_lossy().into_owned();
        let out = self.podman(&["import", &tar, image]);
        self.ok(&out, &format!("podman import {image}"));
    }
}
