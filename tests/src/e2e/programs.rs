//! The system programs the end-to-end tests run: finding them (system
//! paths first), and the Debian packages to name when they are missing.

use std::path::{Path, PathBuf};

/// An executable from the system, by absolute path first (so that e.g.
/// pyenv shims or a newer client in /usr/local/bin do not change what runs),
/// then on `PATH`.
pub fn program(preferred: &[&str], name: &str) -> Option<PathBuf> {
    const SYSTEM: [&str; 6] = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    preferred
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| crate::which(name))
        .or_else(|| {
            SYSTEM
                .iter()
                .map(|d| Path::new(d).join(name))
                .find(|p| p.is_file())
        })
}

/// Every program a test needs, or the skip reason naming the missing ones
/// and their Debian packages.
pub fn require(programs: &[(&str, &str)]) -> Result<(), String> {
    let missing: Vec<String> = programs
        .iter()
        .filter(|(p, _)| program(&[], p).is_none())
        .map(|(p, pkg)| format!("{p} (Debian package {pkg})"))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "not installed: {}; scripts/test installs them as root",
            missing.join(", ")
        ))
    }
}

/// The programs used below.
pub const DOCKER_REGISTRY: (&str, &str) = ("/usr/bin/docker-registry", "docker-registry");
pub const HTPASSWD: (&str, &str) = ("htpasswd", "apache2-utils");
pub const DOCKERD: (&str, &str) = ("dockerd", "docker.io");
pub const DOCKER: (&str, &str) = ("docker", "docker.io");
pub const PODMAN: (&str, &str) = ("podman", "podman");
pub const BUILDAH: (&str, &str) = ("buildah", "buildah");
pub const SKOPEO: (&str, &str) = ("skopeo", "skopeo");
pub const TAR: (&str, &str) = ("tar", "tar");
pub const PYTHON3: (&str, &str) = ("/usr/bin/python3", "python3");
