//! Who ran what where: recorded by each side and exchanged in the handshake,
//! so a result file names both machines and both binaries.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BuildInfo {
    pub version: String,
    pub git_commit: String,
    pub rustc: String,
}

impl BuildInfo {
    pub fn current() -> BuildInfo {
        BuildInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            git_commit: env!("KVXFER_GIT_COMMIT").to_string(),
            rustc: env!("KVXFER_RUSTC").to_string(),
        }
    }

    pub fn line(&self) -> String {
        format!("kvxfer {} ({})", self.version, self.git_commit)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnvInfo {
    pub hostname: String,
    pub os: String,
    pub cpu: String,
    pub cpus: usize,
    pub memory_bytes: u64,
    pub build: BuildInfo,
    pub command_line: Vec<String>,
    pub pid: u32,
    /// The kernel's boot id: two processes that share it share
    /// CLOCK_MONOTONIC, so their instants compare directly.
    #[serde(default)]
    pub boot_id: Option<String>,
}

impl EnvInfo {
    pub fn collect() -> EnvInfo {
        EnvInfo {
            hostname: gethostname::gethostname().to_string_lossy().into_owned(),
            os: os_line(),
            cpu: cpu_model(),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes: meminfo_kib("MemTotal").unwrap_or(0) * 1024,
            build: BuildInfo::current(),
            command_line: std::env::args().collect(),
            pid: std::process::id(),
            boot_id: boot_id(),
        }
    }
}

fn os_line() -> String {
    // uname(2) rather than a subprocess: kernel release and machine.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return std::env::consts::OS.to_string();
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!("{} {} {}", field(&u.sysname), field(&u.release), field(&u.machine))
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// A field of /proc/meminfo, in KiB.
pub fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok().map(|s| s.trim().to_string())
}

pub fn meminfo_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The first file mapped into this process that `matches` (a loaded
/// library's real path, where dlopen was given a bare soname), from
/// /proc/self/maps.
pub fn mapped_file(matches: impl Fn(&std::path::Path) -> bool) -> Option<std::path::PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(std::path::Path::new)
        .find(|p| matches(p))
        .map(std::path::Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_this_machine() {
        let e = EnvInfo::collect();
        assert!(!e.hostname.is_empty());
        assert!(e.os.contains("Linux"));
        assert!(e.cpus >= 1);
        assert!(e.memory_bytes > 0);
        assert_eq!(e.build.version, env!("CARGO_PKG_VERSION"));
    }
}
