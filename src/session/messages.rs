//! What travels on the control connection, after the fixed preamble.

use crate::env::EnvInfo;
use crate::figures::PointResult;
use crate::link::Link;
use crate::plan::Plan;
pub use crate::topology::Role;
use crate::transport::{TransportInfo, TransportSpec};
use serde::{Deserialize, Serialize};

/// The sender's proposal: the receiver adopts all of it or refuses.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub role: Role,
    pub env: EnvInfo,
    pub plan: Plan,
    pub plan_digest: String,
    pub transport: TransportSpec,
    pub link: Option<Link>,
    /// Presented again by every data connection of this session.
    pub cookie: u64,
    /// One pair of a sender's one-to-many fan: the receiver then reports
    /// each request's time back, for the sender's aggregate.
    #[serde(default)]
    pub seat: Option<crate::topology::Seat>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Msg {
    Hello(Box<Hello>),
    Welcome {
        env: Box<EnvInfo>,
        /// One pair of the receiver's many-to-one fan.
        #[serde(default)]
        seat: Option<crate::topology::Seat>,
    },
    Refuse {
        reason: String,
    },
    /// Opaque setup data of a transport (addresses, ids, keys).
    Setup {
        data: serde_json::Value,
    },
    /// What a side's transport actually set up, for both reports.
    TransportInfo {
        info: Box<TransportInfo>,
    },
    /// Round-trip probes right after the handshake.
    Probe {
        seq: u32,
    },
    ProbeReply {
        seq: u32,
    },
    /// Heartbeats while a transport waits; answered wherever they arrive.
    Ping,
    Pong,
    /// Sender: the request's buffer holds its pattern; waiting for Go.
    Ready {
        point: usize,
        request: u64,
    },
    /// Receiver: timing has started, send the request now.
    Go {
        point: usize,
        request: u64,
    },
    /// Receiver, requests in flight at once (--concurrency): lane `lane`
    /// takes request `it` of the point next, which goes within `in_ns` (its
    /// arrival, as far as the receiver knows);
    /// None: the lane has no more requests in this point.
    Take {
        lane: u32,
        point: usize,
        it: Option<u32>,
        in_ns: u64,
    },
    /// Sender: lane `lane`'s buffer holds request `request`'s pattern.
    LaneReady {
        lane: u32,
        request: u64,
    },
    /// Receiver: lane `lane` is timing request `request`: send it now.
    LaneGo {
        lane: u32,
        request: u64,
    },
    /// Receiver, both sides on one GPU: the request's check is done, the
    /// sender may write the next pattern (see measure::RunConfig::copier).
    Checked {
        request: u64,
    },
    /// Sender, emulated prefill: the compute alone, run before the point's
    /// computing requests, ns per run.
    ComputeAlone {
        point: usize,
        runs_ns: Vec<u64>,
        /// What computes (a kernel, a busy wait), for the report.
        compute: String,
        /// The sender's least control round trip: the receiver places the
        /// sender's instants on its own clock with it across hosts.
        control_rtt_ns: u64,
    },
    /// Sender, emulated prefill: when a request's compute began and ended
    /// (CLOCK_MONOTONIC ns, the sender's).
    Computed {
        request: u64,
        began: u64,
        ended: u64,
    },
    /// Sender, bidirectional conversations: the KV decode sent back arrived
    /// in `ns`, and its check found this.
    Pulled {
        request: u64,
        ns: u64,
        verified_bytes: u64,
        wrong_bytes: u64,
        first: Option<String>,
    },
    /// Receiver of a one-to-many fan: how long a request took, as it timed it.
    Took {
        request: u64,
        ns: u64,
    },
    /// Receiver: the measured figures of one sweep point.
    PointDone {
        result: Box<PointResult>,
    },
    /// Either side: the run ends now, for this reason, with this exit code.
    Abort {
        reason: String,
        code: i32,
    },
    /// Receiver: every point is done.
    Finish,
}

impl Msg {
    /// Heartbeats and round-trip probes: logged only at -vv.
    pub fn is_chatter(&self) -> bool {
        matches!(self, Msg::Ping | Msg::Pong | Msg::Probe { .. } | Msg::ProbeReply { .. })
    }

    /// The name with the request it is about, for `-v`'s log.
    pub fn brief(&self) -> String {
        match self {
            Msg::Ready { point, request } | Msg::Go { point, request } => {
                format!("{} (point {point}, request {request})", self.name())
            }
            Msg::LaneReady { lane, request } | Msg::LaneGo { lane, request } => {
                format!("{} (lane {lane}, request {request})", self.name())
            }
            Msg::Checked { request }
            | Msg::Computed { request, .. }
            | Msg::Pulled { request, .. }
            | Msg::Took { request, .. } => format!("{} (request {request})", self.name()),
            Msg::PointDone { result } => format!("{} (point {})", self.name(), result.point),
            Msg::Abort { reason, .. } | Msg::Refuse { reason } => format!("{} ({reason})", self.name()),
            _ => self.name().to_string(),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Msg::Hello(_) => "hello",
            Msg::Welcome { .. } => "welcome",
            Msg::Refuse { .. } => "refuse",
            Msg::Setup { .. } => "setup",
            Msg::TransportInfo { .. } => "transport-info",
            Msg::Probe { .. } => "probe",
            Msg::ProbeReply { .. } => "probe-reply",
            Msg::Ping => "ping",
            Msg::Pong => "pong",
            Msg::Ready { .. } => "ready",
            Msg::Go { .. } => "go",
            Msg::Checked { .. } => "checked",
            Msg::Take { .. } => "take",
            Msg::LaneReady { .. } => "lane-ready",
            Msg::LaneGo { .. } => "lane-go",
            Msg::ComputeAlone { .. } => "compute-alone",
            Msg::Computed { .. } => "computed",
            Msg::Took { .. } => "took",
            Msg::Pulled { .. } => "pulled",
            Msg::PointDone { .. } => "point-done",
            Msg::Abort { .. } => "abort",
            Msg::Finish => "finish",
        }
    }
}
