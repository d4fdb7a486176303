//! What memory this host can give the process: `MemAvailable` from /proc/meminfo, bounded by the cgroup
//! (v2 `memory.max` − `memory.current`, or v1 `limit_in_bytes` − `usage_in_bytes`) when the process runs
//! in a container. Used to refuse, before allocating, a KV pool (and later weights) that cannot fit.

use std::path::Path;

/// Bytes the process can still allocate on the host, when known.
pub fn host_available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let mem = meminfo.as_deref().and_then(mem_available);
    let cgroup = cgroup_headroom(Path::new("/sys/fs/cgroup"));
    match (mem, cgroup) {
        (Some(m), Some(c)) => Some(m.min(c)),
        (m, c) => m.or(c),
    }
}

/// A `Key:   123 kB` line of a /proc text (meminfo, status), in bytes.
fn kib_field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// `MemAvailable` of a /proc/meminfo text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    kib_field(meminfo, "MemAvailable")
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Limit minus usage of the process's cgroup, when it has a limit.
fn cgroup_headroom(root: &Path) -> Option<u64> {
    let v2 = (
        read_u64(&root.join("memory.max")),
        read_u64(&root.join("memory.current")),
    );
    if let (Some(max), Some(cur)) = v2 {
        return Some(max.saturating_sub(cur));
    }
    let v1 = (
        read_u64(&root.join("memory/memory.limit_in_bytes")),
        read_u64(&root.join("memory/memory.usage_in_bytes")),
    );
    match v1 {
        // v1 reports "no limit" as a huge number.
        (Some(max), Some(cur)) if max < (1 << 60) => Some(max.saturating_sub(cur)),
        _ => None,
    }
}

/// This process's resident memory (VmRSS), for the plan-vs-measured log line.
pub fn process_rss_bytes() -> Option<u64> {
    kib_field(&std::fs::read_to_string("/proc/self/status").ok()?, "VmRSS")
}

/// `n` bytes in MiB, for messages.
pub fn mib(n: u64) -> u64 {
    n.div_ceil(1024 * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mem_available() {
        let text = "MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(mem_available(text), Some(2048 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn cgroup_v2_headroom_and_unlimited() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.max"), "1000\n").unwrap();
        std::fs::write(dir.path().join("memory.current"), "400\n").unwrap();
        assert_eq!(cgroup_headroom(dir.path()), Some(600));
        // "max" (no limit) does not parse as a number: no headroom from the cgroup.
        std::fs::write(dir.path().join("memory.max"), "max\n").unwrap();
        assert_eq!(cgroup_headroom(dir.path()), None);
    }

    #[test]
    fn this_host_reports_something() {
        assert!(host_available_bytes().is_some_and(|b| b > 0));
    }
}
