//! Which transports UCX chose, read from `ucp_ep_print_info`: one line per
//! endpoint lane, naming its transport and device and what it carries, e.g.
//! `lane[2]:  5:cma/memory.0 md[4]  -> md[4]/cma/sysdev[255] rma_bw#0`.

use super::ucp::MemType;
use super::UcxOp;
use crate::error::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lane {
    pub transport: String,
    pub device: String,
    pub roles: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lanes(pub Vec<Lane>);

/// How UCX moves an operation's bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Carried {
    /// On lanes that reach the buffer.
    Direct,
    /// put/get as active messages, for want of an RMA lane.
    Emulated,
    /// Over RMA lanes that reach only host memory, GPU memory copied
    /// through host buffers on the way.
    Staged,
}

const ROLES: [&str; 10] =
    ["am", "am_bw", "rma", "rma_bw", "amo", "tag", "rkey_ptr", "wireup", "cm", "keepalive"];

/// Transports that reach only host memory, and only GPU memory: an endpoint
/// has lanes for both kinds, and only one kind carries a side's buffer.
const HOST_ONLY: [&str; 6] = ["cma", "sysv", "posix", "knem", "xpmem", "self"];
const GPU_ONLY: [&str; 4] = ["cuda_ipc", "cuda_copy", "gdr_copy", "rocm_ipc"];

impl Lane {
    fn name(&self) -> String {
        format!("{}/{}", self.transport, self.device)
    }

    fn reaches(&self, mem: MemType) -> bool {
        let t = self.transport.as_str();
        match mem {
            MemType::Host => !GPU_ONLY.contains(&t),
            MemType::Cuda => !HOST_ONLY.contains(&t),
        }
    }

    fn has(&self, roles: &[&str]) -> bool {
        self.roles.iter().any(|r| roles.contains(&r.as_str()))
    }
}

impl Lanes {
    pub fn parse(report: &str) -> Lanes {
        Lanes(report.lines().filter_map(parse_line).collect())
    }

    fn with(&self, roles: &[&str]) -> Vec<&Lane> {
        self.0.iter().filter(|l| l.has(roles)).collect()
    }

    /// The lanes that carry the operation's bytes from or to `mem`, and how.
    fn data_lanes(&self, op: UcxOp, mem: MemType) -> (Vec<&Lane>, Carried) {
        let (lanes, how) = match op {
            UcxOp::Put | UcxOp::Get => match self.with(&["rma_bw", "rma"]) {
                rma if rma.is_empty() => (self.with(&["am_bw", "am"]), Carried::Emulated),
                rma => (rma, Carried::Direct),
            },
            // Eager messages ride the active-message lanes, rendezvous the RMA ones.
            UcxOp::Send => (self.with(&["am_bw", "am", "rma_bw", "tag"]), Carried::Direct),
        };
        if how == Carried::Emulated {
            return (lanes, how);
        }
        // Active messages stage GPU memory through host buffers anyway: only
        // RMA lanes must reach the buffer themselves.
        let reaching: Vec<&Lane> =
            lanes.iter().copied().filter(|l| l.reaches(mem) || !l.has(&["rma_bw", "rma"])).collect();
        match reaching.iter().any(|l| l.has(&["rma_bw", "rma"])) || op == UcxOp::Send {
            true => (reaching, how),
            // Host memory no RMA lane reaches (only cuda_ipc offers RMA, as
            // with error mode peer): UCX falls back to active messages.
            false if mem == MemType::Host => (self.with(&["am_bw", "am"]), Carried::Emulated),
            false => (lanes, Carried::Staged),
        }
    }

    /// One line for the report: the transports that carry the data.
    pub fn path(&self, op: UcxOp, mem: MemType) -> String {
        if self.0.is_empty() {
            return "UCX did not describe its lanes".to_string();
        }
        let (lanes, how) = self.data_lanes(op, mem);
        let names = lanes.iter().map(|l| format!("{} ({})", l.name(), l.roles.join(" "))).collect::<Vec<_>>();
        let names = names.join(", ");
        match how {
            Carried::Direct => format!("{op} over {names}"),
            Carried::Emulated => {
                format!("{op} emulated with active messages (no RMA lane reaches the buffer) over {names}")
            }
            Carried::Staged => {
                format!("{op} staged through host memory (no lane reaches GPU memory) over {names}")
            }
        }
    }

    /// Fails unless every required transport carries the operation's data.
    /// `rc` matches `rc_mlx5` and `rc_verbs`.
    pub fn require(&self, op: UcxOp, mem: MemType, required: &[String]) -> Result<()> {
        let (lanes, _) = self.data_lanes(op, mem);
        let carries = |name: &str| {
            lanes.iter().any(|l| l.transport == name || l.transport.starts_with(&format!("{name}_")))
        };
        let missing: Vec<&str> = required.iter().map(String::as_str).filter(|n| !carries(n)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(Error::run(format!(
            "--require-transport {}: UCX chose otherwise: {}. Check UCX_TLS and UCX_NET_DEVICES, and that the UCX \
             library (--ucx-lib) was built with that transport",
            missing.join(","),
            self.path(op, mem)
        )))
    }
}

/// The protocol in UCX's request info string (proto v2, UCX 1.16 and
/// newer): what follows "length N", without the performance estimate UCX
/// appends ("software emulation sysv/memory", "zero-copy cuda_ipc/cuda").
/// Older UCX describes a request by its functions: kept whole.
pub fn protocol_words(info: &str) -> String {
    let Some(at) = info.find(" length ") else { return info.to_string() };
    let rest = info[at + " length ".len()..].trim_start_matches(|c: char| c.is_ascii_digit()).trim();
    if rest.contains("()") {
        return info.to_string();
    }
    let mut words: Vec<&str> = rest.split_whitespace().collect();
    if words.ends_with(&["-", "not", "available"]) {
        words.truncate(words.len() - 3);
    }
    // "... 1234.5 MB/s 12.34 us": UCX's estimate, not a measurement.
    let n = words.len();
    if n >= 4 && words[n - 3] == "MB/s" && words[n - 1] == "us" {
        words.truncate(n - 4);
    }
    words.join(" ")
}

fn parse_line(line: &str) -> Option<Lane> {
    let rest = &line[line.find("lane[")?..];
    let rest = &rest[rest.find("]:")? + 2..];
    let mut words = rest.split_whitespace();
    let (transport, device) = words.next()?.split_once(':')?.1.split_once('/')?;
    // "lo.0": the device and UCX's path index on it.
    let device = match device.rsplit_once('.') {
        Some((d, path)) if path.chars().all(|c| c.is_ascii_digit()) => d,
        _ => device,
    };
    let roles = words
        .map(|w| w.split('#').next().unwrap_or(w))
        .filter(|w| ROLES.contains(w))
        .map(str::to_string)
        .collect();
    Some(Lane { transport: transport.to_string(), device: device.to_string(), roles })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As UCX 1.13 printed them here: shared memory, then tcp only (peer
    /// error handling).
    const SHM: &str = "#
# UCP endpoint
#
#               peer: <no debug data>
#                 lane[0]:  3:sysv/memory.0 md[2]           -> md[2]/sysv/sysdev[255] am am_bw#0
#                 lane[1]:  4:posix/memory.0 md[3]          -> md[3]/posix/sysdev[255]
#                 lane[2]:  5:cma/memory.0 md[4]            -> md[4]/cma/sysdev[255] rma_bw#0
#
#                tag_send: 0..<egr/short>..92..<egr/bcopy>..8192..<rndv>..(inf)
";
    const TCP: &str = "#                 lane[0]:  1:tcp/lo.0 md[1]                -> md[1]/tcp/sysdev[255] am am_bw#0 keepalive wireup
#                  rma_bw: mds rndv_rkey_size 9
";

    #[test]
    fn lanes_name_transport_device_and_roles() {
        let l = Lanes::parse(SHM);
        assert_eq!(l.0.len(), 3);
        assert_eq!(
            l.0[2],
            Lane { transport: "cma".into(), device: "memory".into(), roles: vec!["rma_bw".into()] }
        );
        assert_eq!(l.0[1].roles, Vec::<String>::new());
        assert_eq!(Lanes::parse(TCP).0[0].device, "lo");
    }

    #[test]
    fn path_names_the_data_lanes_and_emulation() {
        assert_eq!(Lanes::parse(SHM).path(UcxOp::Put, MemType::Host), "put over cma/memory (rma_bw)");
        assert_eq!(
            Lanes::parse(TCP).path(UcxOp::Get, MemType::Host),
            "get emulated with active messages (no RMA lane reaches the buffer) over tcp/lo (am am_bw keepalive wireup)"
        );
        assert!(Lanes::parse(SHM).path(UcxOp::Send, MemType::Host).contains("sysv/memory"));
    }

    #[test]
    fn require_refuses_a_fallback() {
        let shm = Lanes::parse(SHM);
        assert!(shm.require(UcxOp::Put, MemType::Host, &["cma".into()]).is_ok());
        let e = shm.require(UcxOp::Put, MemType::Host, &["cuda_ipc".into(), "cma".into()]).unwrap_err();
        assert!(
            e.message.contains("--require-transport cuda_ipc: UCX chose otherwise: put over cma/memory"),
            "{e}"
        );
        assert!(Lanes::parse(TCP).require(UcxOp::Put, MemType::Host, &["cma".into()]).is_err());
        let rc = Lanes::parse("#  lane[0]:  2:rc_mlx5/mlx5_0:1.0 md[0] -> md[0]/ib rma_bw#0 am");
        assert!(rc.require(UcxOp::Put, MemType::Host, &["rc".into()]).is_ok());
    }

    /// As UCX 1.22 with CUDA printed them on the H200 pair (error mode none).
    const GPU: &str = "#                 lane[0]:  3:sysv/memory.0 md[2]           -> md[2]/sysv/sysdev[255] seg 4294967295 am
#                 lane[1]:  4:posix/memory.0 md[3]          -> md[3]/posix/sysdev[255] seg 4294967295
#                 lane[2]:  7:cma/memory.0 md[6]            -> md[6]/cma/sysdev[255] seg 4294967295 rma_bw#1
#                 lane[3]:  6:cuda_ipc/cuda.0 md[5]         -> md[5]/cuda_ipc/sysdev[1] seg 4294967295 rma_bw#0
";

    #[test]
    fn the_buffer_memory_picks_the_lanes_that_can_reach_it() {
        let l = Lanes::parse(GPU);
        assert_eq!(l.path(UcxOp::Put, MemType::Cuda), "put over cuda_ipc/cuda (rma_bw)");
        assert_eq!(l.path(UcxOp::Get, MemType::Host), "get over cma/memory (rma_bw)");
        assert!(l.require(UcxOp::Put, MemType::Cuda, &["cma".into()]).is_err());
        assert!(l.require(UcxOp::Put, MemType::Cuda, &["cuda_ipc".into()]).is_ok());
        assert_eq!(l.path(UcxOp::Send, MemType::Cuda), "send over sysv/memory (am), cuda_ipc/cuda (rma_bw)");
        // Two workers of one process: UCX offered no cuda_ipc lane.
        let shm = Lanes::parse(SHM);
        assert_eq!(
            shm.path(UcxOp::Put, MemType::Cuda),
            "put staged through host memory (no lane reaches GPU memory) over cma/memory (rma_bw)"
        );
        assert!(shm.require(UcxOp::Put, MemType::Cuda, &["cuda_ipc".into()]).is_err());
        // Error mode peer on the H200 pair: RMA only over cuda_ipc, so a
        // host buffer's put goes over tcp's active messages.
        let peer = Lanes::parse(PEER);
        assert_eq!(
            peer.path(UcxOp::Put, MemType::Host),
            "put emulated with active messages (no RMA lane reaches the buffer) over tcp/lo (am keepalive wireup)"
        );
        assert!(peer.require(UcxOp::Put, MemType::Host, &["tcp".into()]).is_ok());
        assert_eq!(peer.path(UcxOp::Put, MemType::Cuda), "put over cuda_ipc/cuda (rma_bw)");
    }

    #[test]
    fn the_protocol_ucx_ran_is_read_from_its_request_info() {
        // ucp_request_query's strings, UCX 1.22 with CUDA, both sides on one H200.
        let get = "{proto|cb|init} get into cuda/GPU0 length 268435456 software emulation sysv/memory 1128.8 MB/s 226785.74 us";
        assert_eq!(protocol_words(get), "software emulation sysv/memory");
        let put = "{proto|cb|init} put from cuda/GPU0 length 1073741824 zero-copy cuda_ipc/cuda 399094.2 MB/s 2565.81 us";
        assert_eq!(protocol_words(put), "zero-copy cuda_ipc/cuda");
        let send =
            "{proto|cb|init|rk_use} tag_send from cuda/GPU0 length 1073741824 rendezvous zero-copy flushed \
                    write to remote cuda_ipc/cuda 402957.5 MB/s 2541.21 us";
        assert_eq!(protocol_words(send), "rendezvous zero-copy flushed write to remote cuda_ipc/cuda");
        assert_eq!(
            protocol_words("{proto} put length 8 short posix/memory - not available"),
            "short posix/memory"
        );
        // UCX before protocols v2 names functions: kept whole.
        let v1 = "{send} send length 4096 ucp_rma_put_progress() comp:cb()";
        assert_eq!(protocol_words(v1), v1);
    }

    /// As UCX 1.22 with CUDA printed them on the H200 pair (error mode peer).
    const PEER: &str = "#                 lane[0]:  2:tcp/lo.0 md[1]                -> md[1]/tcp/sysdev[255] seg 4294967295 am keepalive wireup
#                 lane[1]:  6:cuda_ipc/cuda.0 md[5]         -> md[5]/cuda_ipc/sysdev[255] seg 4294967295 rma_bw#0
";
}
