//! What is read from the system: a process's memory, the load average, and
//! whether a binary is stripped.

use std::fs;
use std::path::Path;

#[derive(Clone, Copy)]
pub struct AgentMemory {
    pub rss: u64,
    pub peak: u64,
}

/// VmRSS and VmHWM of a process, bytes (Linux /proc only).
pub fn agent_memory(pid: u32) -> Option<AgentMemory> {
    Some(AgentMemory {
        rss: process_status_bytes(pid, "VmRSS:")?,
        peak: process_status_bytes(pid, "VmHWM:")?,
    })
}

/// A `kB` field of `/proc/<pid>/status`, in bytes.
pub fn process_status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

pub fn loadavg() -> Option<String> {
    let s = fs::read_to_string("/proc/loadavg").ok()?;
    Some(s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// For an ELF file: whether it has no `.symtab` section left. `None` when
/// it is not ELF or cannot be read.
pub fn is_stripped(path: &Path) -> Option<bool> {
    let bytes = fs::read(path).ok()?;
    if !bytes.starts_with(b"\x7fELF") {
        return None;
    }
    Some(!bytes.windows(8).any(|w| w == b".symtab\0"))
}
