//! One trait pair per role, many transports. A transport moves the messages of
//! one request from the sender's buffer into the receiver's; it knows nothing
//! of models, only of a `RequestLayout` (equal-sized messages tiling a buffer)
//! and the key of each message.
//!
//! The receiver measures. Each round it starts its clock, calls `go` once when
//! it is ready for the sender to start (a two-sided transport right away, a
//! stream-ordered one after posting its receives, a one-sided pull never needs
//! the sender at all), and reports every message's completion. The sender's
//! `send` returns once its part of the round is handed off. Setup data
//! (ports, ids, memory keys) travels over the control connection.

pub mod nccl;
pub mod nixl;
pub mod ofi;
mod tag;
pub mod tcp;
pub mod ucx;

use crate::error::{Error, Result};
use crate::memory::{Buffer, MemoryKind};
use crate::plan::RequestLayout;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    Tcp,
    Nccl,
    Ucx,
    Ofi,
    Nixl,
}

crate::words::named_by_words!(TransportKind, "transport", {
    Tcp => "tcp",
    Nccl => "nccl",
    Ucx => "ucx",
    Ofi => "ofi" | "libfabric",
    Nixl => "nixl",
});

/// The sender's choice of transport and its knobs; the receiver adopts it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportSpec {
    pub kind: TransportKind,
    /// Parallel connections (tcp): message i travels on stream i mod streams.
    pub streams: u32,
    /// SO_SNDBUF / SO_RCVBUF in bytes; None keeps the kernel's autotuning.
    pub socket_buffer: Option<u64>,
    /// Messages per ncclGroupStart/End (nccl); 1 is one call per message.
    pub nccl_group: u32,
    /// put, get or tagged send (ucx).
    #[serde(default)]
    pub ucx_op: ucx::UcxOp,
    /// The endpoints' error handling (ucx).
    #[serde(default)]
    pub ucx_err_mode: ucx::UcxErrMode,
    /// Operations outstanding at once (ucx).
    #[serde(default = "default_in_flight")]
    pub in_flight: u32,
    /// Transports UCX must use for the data, or the run fails (ucx).
    #[serde(default)]
    pub require_transport: Vec<String>,
    /// write, read or tagged send (ofi).
    #[serde(default)]
    pub ofi_op: ofi::OfiOp,
    /// The libfabric provider to ask for; None lets libfabric (or FI_PROVIDER) choose (ofi).
    #[serde(default)]
    pub ofi_provider: Option<String>,
    /// The provider libfabric must have chosen, or the run fails (ofi).
    #[serde(default)]
    pub require_provider: Option<String>,
    /// READ (NixlConnector) or WRITE (NixlPushConnector) (nixl).
    #[serde(default)]
    pub nixl_op: nixl::NixlOp,
    /// The NIXL backend plugin: UCX, LIBFABRIC, ... (nixl).
    #[serde(default = "default_nixl_backend")]
    pub nixl_backend: String,
    /// The backend's `num_threads`; None is NixlConnector's (4 for UCX) (nixl).
    #[serde(default)]
    pub nixl_threads: Option<u32>,
    /// Backend parameters, KEY=VALUE (nixl).
    #[serde(default)]
    pub nixl_params: Vec<String>,
    /// NIXL's progress thread in each agent (nixl; on, as vLLM runs it).
    #[serde(default = "default_true")]
    pub nixl_progress_thread: bool,
    /// Test fault: a request's first descriptor points at the block beside its own (nixl).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nixl_fault: bool,
}

fn default_true() -> bool {
    true
}

fn default_nixl_backend() -> String {
    nixl::DEFAULT_BACKEND.to_string()
}

pub const DEFAULT_IN_FLIGHT: u32 = 32;
/// A round may take the idle timeout plus what its bytes need at this rate:
/// generous, because stalls are caught by the per-read timeout anyway.
pub const SLOWEST_DATA_BYTES_PER_SEC: f64 = 10e6;
/// tcp data connections of one pair, at most.
pub const MAX_STREAMS: u32 = 64;
/// NIXL backend worker threads, at most.
pub const MAX_NIXL_THREADS: u32 = 1024;

fn default_in_flight() -> u32 {
    DEFAULT_IN_FLIGHT
}

impl TransportSpec {
    /// Refuses requirements the chosen transport cannot check: silently
    /// ignoring `--require-transport` would pass the gate it is meant to be.
    pub fn validate(&self) -> Result<()> {
        // The command line bounds these; a spec read off the wire is checked
        // again (0 streams indexed past the end, 2^32 of them sized a table).
        if !(1..=MAX_STREAMS).contains(&self.streams) {
            return Err(Error::usage(format!("{} tcp streams: from 1 to {MAX_STREAMS}", self.streams)));
        }
        if self.in_flight == 0 || self.nccl_group == 0 {
            return Err(Error::usage("operations in flight and messages per NCCL group must be at least 1"));
        }
        let ucx = self.kind == TransportKind::Ucx
            || (self.kind == TransportKind::Nixl && self.nixl_backend == "UCX");
        if !ucx && !self.require_transport.is_empty() {
            return Err(Error::usage(match self.kind {
                TransportKind::Nixl => format!(
                    "--require-transport names UCX transports; NIXL's backend {} is not UCX",
                    self.nixl_backend
                ),
                kind => format!(
                    "--require-transport names UCX transports; it needs -t ucx or -t nixl, not -t {kind}"
                ),
            }));
        }
        let nixl_default = self.nixl_op == nixl::NixlOp::default()
            && self.nixl_backend == nixl::DEFAULT_BACKEND
            && self.nixl_threads.is_none()
            && self.nixl_params.is_empty()
            && self.nixl_progress_thread;
        if self.kind != TransportKind::Nixl && !nixl_default {
            return Err(Error::usage(format!(
                "--nixl-op, --nixl-backend, --nixl-threads, --nixl-param and --nixl-progress-thread set NIXL up; they \
                 need -t nixl, not -t {}",
                self.kind
            )));
        }
        if self.nixl_fault && self.kind != TransportKind::Nixl {
            return Err(Error::usage(format!(
                "--fault neighbour-block is NIXL's: it needs -t nixl, not -t {}",
                self.kind
            )));
        }
        if self.nixl_backend.is_empty() || self.nixl_backend.len() > 64 || self.nixl_params.len() > 64 {
            return Err(Error::usage(
                "a NIXL backend is named by 1 to 64 characters, with at most 64 parameters",
            ));
        }
        // The command line bounds it; a spec read off the wire is checked again.
        if self.nixl_threads.is_some_and(|n| n > MAX_NIXL_THREADS) {
            return Err(Error::usage(format!("--nixl-threads: from 0 to {MAX_NIXL_THREADS}")));
        }
        if let Some(p) =
            self.nixl_params.iter().find(|p| !p.contains('=') || p.starts_with('=') || p.len() > 4096)
        {
            return Err(Error::usage(format!("--nixl-param '{p}': give KEY=VALUE")));
        }
        if self.kind != TransportKind::Ofi && (self.ofi_provider.is_some() || self.require_provider.is_some())
        {
            return Err(Error::usage(format!(
                "--ofi-provider and --require-provider name libfabric providers; they need -t ofi, not -t {}",
                self.kind
            )));
        }
        Ok(())
    }

    /// Whether this transport can move one side's memory; the sender checks
    /// its own before connecting, the receiver its own before accepting.
    pub fn check_memory(&self, memory: MemoryKind) -> Result<(), String> {
        match (self.kind, memory) {
            (TransportKind::Nccl, MemoryKind::Gpu)
            | (TransportKind::Ucx | TransportKind::Ofi | TransportKind::Nixl, _)
            | (TransportKind::Tcp, MemoryKind::Host | MemoryKind::Pinned) => Ok(()),
            (TransportKind::Nccl, m) => Err(format!(
                "transport nccl moves GPU memory, not {m} memory: use --memory gpu on both sides"
            )),
            (TransportKind::Tcp, _) if self.streams != 1 => {
                Err("tcp on GPU memory stages through pinned memory over one connection: use --streams 1"
                    .to_string())
            }
            (TransportKind::Tcp, _) => Ok(()),
        }
    }
}

/// Settings of one side that its peer need not know.
#[derive(Clone, Debug, Default)]
pub struct LocalOptions {
    /// The NCCL library to open (`--nccl-lib`).
    pub nccl_lib: Option<String>,
    /// The UCP library to open (`--ucx-lib`).
    pub ucx_lib: Option<String>,
    /// libfabric to open (`--ofi-lib`).
    pub ofi_lib: Option<String>,
    /// NIXL's C API library to open (`--nixl-lib`).
    pub nixl_lib: Option<String>,
}

/// What the transport really did, for the report ("transport truth").
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TransportInfo {
    pub summary: String,
    /// The path the library chose, known once data has moved (NCCL's channels).
    pub path: Option<String>,
    /// How long this side's setup took (connections, communicator).
    pub setup_ns: Option<u64>,
    /// The side's buffer: host, pinned, or which GPU.
    pub memory: String,
    /// The PCI bus id of the side's GPU (GPU or pinned memory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_bus_id: Option<String>,
    /// The peak the receiver found without `--link` (see `link::detect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detected_link: Option<crate::link::Link>,
    pub details: BTreeMap<String, String>,
    /// NIXL: each request's steps, until they become the points' figures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nixl: Option<nixl::NixlRecords>,
}

/// How the receiver's transport timed a round, when it knows better than the
/// host clock (GPU events); None means the engine's host clock stands.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoundTiming {
    pub elapsed_ns: Option<u64>,
    /// When the receiver knew the last byte had landed, where telling the
    /// completions of every message took time after that (one-sided rounds).
    pub landed: Option<Instant>,
}

/// Where a receiving transport reports each message as it completes.
pub trait Completions: Sync {
    /// Message `index` of the round arrived whole, `latency_ns` after the
    /// transport began waiting for it (or posted it). `data` is the message's
    /// bytes where they are in host memory.
    fn message_done(&self, index: usize, latency_ns: u64, data: Option<&[u8]>) -> Result<()>;
}

/// When the sender may hand each message of a request to the transport.
/// Without emulated prefill, at once; with it (measure::compute), once the
/// layer the message holds has been computed, or the whole prefill.
pub trait Ready: Sync {
    /// Whether the KV is computed as the request goes.
    fn computes(&self) -> bool {
        false
    }
    /// The receiver's go reached the sender: the compute starts now.
    /// Transports that take the go themselves call it; later calls do nothing.
    fn go(&self) {}
    /// Whether message `index` may move now.
    fn ready(&self, _index: usize) -> Result<bool> {
        Ok(true)
    }
    /// Waits, never past `deadline`, until message `index` may move.
    fn wait(&self, index: usize, deadline: Instant) -> Result<()> {
        let mut spins = 0u64;
        while !self.ready(index)? {
            spins += 1;
            if spins.is_multiple_of(256) {
                crate::signals::check()?;
                if Instant::now() > deadline {
                    return Err(Error::run(format!(
                        "message {index} was not computed before the request's deadline"
                    )));
                }
                std::thread::yield_now();
            }
            std::hint::spin_loop();
        }
        Ok(())
    }
}

/// The KV exists before the request starts (no emulated prefill).
pub struct AtOnce;

impl Ready for AtOnce {}

/// A transport's line to the peer during one request.
pub trait PeerLink {
    /// Receiver: whether the sender computes this request's KV as it goes
    /// (emulated prefill); a pulling receiver then waits for its word that
    /// the prefill has ended before reading.
    fn computes(&self) -> bool {
        false
    }
    /// Receiver: the sender may start now. Called exactly once per request.
    fn go(&mut self) -> Result<()>;
    /// Call every few milliseconds while waiting on work the host cannot see
    /// (GPU transfers): fails once the peer has gone, aborted, or answered no
    /// heartbeat for the timeout.
    fn watch(&mut self) -> Result<()>;
}

/// The side whose CUDA context runs a round's copies over GPU memory, where
/// one side alone does (`SendSide::gpu_copier`); on one GPU the engine has
/// it use the GPU last before each round (see measure::RunConfig).
pub type GpuCopier = Option<crate::topology::Role>;

pub trait SendSide: Send {
    fn info(&self) -> TransportInfo;
    /// Which side's CUDA context runs the copies of a round over GPU memory,
    /// if one side alone does; None where both do (tcp staging, NCCL) or
    /// none (host memory, RDMA by the NIC). Both sides answer alike.
    fn gpu_copier(&self) -> GpuCopier {
        None
    }
    /// Whether the receiver's go reaches this transport itself, so the
    /// engine neither waits for it on the control connection nor sends it.
    fn go_in_band(&self) -> bool {
        false
    }
    /// Moves every message of `layout`, keyed for `request`, from `buf`,
    /// each once `ready` lets it go.
    fn send(
        &mut self,
        buf: &Buffer,
        layout: &RequestLayout,
        request: u64,
        deadline: Instant,
        peer: &mut dyn PeerLink,
        ready: &dyn Ready,
    ) -> Result<()>;
}

pub trait RecvSide: Send {
    fn info(&self) -> TransportInfo;
    /// See `SendSide::gpu_copier`.
    fn gpu_copier(&self) -> GpuCopier {
        None
    }
    /// See `SendSide::go_in_band`; an in-band receiver never calls `peer.go()`.
    fn go_in_band(&self) -> bool {
        false
    }
    /// Receives every message of `layout` for `request` into `buf`, checking
    /// each key. Calls `peer.go()` once, when the sender may start.
    fn recv(
        &mut self,
        buf: &mut Buffer,
        layout: &RequestLayout,
        request: u64,
        deadline: Instant,
        peer: &mut dyn PeerLink,
        done: &dyn Completions,
    ) -> Result<RoundTiming>;
}

/// What a transport's setup needs of the control connection (the session
/// gives it): its opaque setup data each way, and a watch on the peer.
pub trait SetupChannel {
    fn send_setup(&mut self, data: serde_json::Value) -> Result<()>;
    fn recv_setup(&mut self, awaiting: &str) -> Result<serde_json::Value>;
    /// Fails once the peer has gone, aborted or fallen silent (see `PeerLink::watch`).
    fn watch(&mut self, doing: &str) -> Result<()>;
    /// The idle timeout both sides run under.
    fn timeout(&self) -> std::time::Duration;
    /// Where the peer's control connection comes from, and this side's end of it.
    fn peer_addr(&self) -> std::net::SocketAddr;
    fn local_addr(&self) -> std::net::SocketAddr;
    fn peer_role(&self) -> crate::topology::Role;
}

/// The control connection lent to a transport for its setup exchange.
pub struct Setup<'a> {
    pub ctrl: &'a mut dyn SetupChannel,
    pub cookie: u64,
}

impl Setup<'_> {
    pub fn send(&mut self, data: serde_json::Value) -> Result<()> {
        let keys = data.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "));
        tracing::debug!("transport setup: sending {}", keys.unwrap_or_default());
        self.ctrl.send_setup(data)
    }

    pub fn recv(&mut self, awaiting: &str) -> Result<serde_json::Value> {
        self.ctrl.recv_setup(awaiting)
    }
}

/// The control connection as the peer link while a transport is set up.
pub struct SetupWatch<'a, 'b> {
    pub setup: &'a mut Setup<'b>,
    pub what: &'static str,
}

impl PeerLink for SetupWatch<'_, '_> {
    fn go(&mut self) -> Result<()> {
        Err(Error::run("internal error: go during setup"))
    }

    fn watch(&mut self) -> Result<()> {
        self.setup.ctrl.watch(self.what)
    }
}

/// Setup data (ids, addresses, keys) travels as hex in the JSON messages.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len()).step_by(2).map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok())).collect()
}

/// Fails early, with the library named, where the transport's library
/// cannot be loaded or cannot carry the plan.
pub fn check_library(spec: &TransportSpec, plan: &crate::plan::Plan, local: &LocalOptions) -> Result<()> {
    match spec.kind {
        TransportKind::Tcp => Ok(()),
        TransportKind::Nccl => nccl::check_library(local.nccl_lib.as_deref()),
        TransportKind::Ucx => {
            tag::check_messages(plan.max_messages(), "ucx")?;
            ucx::check_library(local.ucx_lib.as_deref())
        }
        TransportKind::Ofi => {
            tag::check_messages(plan.max_messages(), "ofi")?;
            ofi::check_library(local.ofi_lib.as_deref())
        }
        TransportKind::Nixl => nixl::check_library(local.nixl_lib.as_deref()),
    }
}

pub fn open_sender(
    spec: &TransportSpec,
    setup: Setup,
    buf: &Buffer,
    local: &LocalOptions,
) -> Result<Box<dyn SendSide>> {
    spec.check_memory(buf.kind()).map_err(Error::usage)?;
    crate::hold::at("setup", true)?;
    Ok(match spec.kind {
        TransportKind::Tcp => Box::new(tcp::TcpSender::connect(spec, setup, buf)?),
        TransportKind::Nccl => {
            Box::new(nccl::NcclSender::connect(spec, setup, buf, local.nccl_lib.as_deref())?)
        }
        TransportKind::Ucx => Box::new(ucx::UcxSender::connect(spec, setup, buf, local.ucx_lib.as_deref())?),
        TransportKind::Ofi => Box::new(ofi::OfiSender::connect(spec, setup, buf, local.ofi_lib.as_deref())?),
        TransportKind::Nixl => {
            Box::new(nixl::NixlSender::connect(spec, setup, buf, local.nixl_lib.as_deref())?)
        }
    })
}

pub fn open_receiver(
    spec: &TransportSpec,
    setup: Setup,
    buf: &mut Buffer,
    local: &LocalOptions,
) -> Result<Box<dyn RecvSide>> {
    spec.check_memory(buf.kind()).map_err(Error::usage)?;
    crate::hold::at("setup", true)?;
    Ok(match spec.kind {
        TransportKind::Tcp => Box::new(tcp::TcpReceiver::accept(spec, setup, buf)?),
        TransportKind::Nccl => {
            Box::new(nccl::NcclReceiver::accept(spec, setup, buf, local.nccl_lib.as_deref())?)
        }
        TransportKind::Ucx => Box::new(ucx::UcxReceiver::accept(spec, setup, buf, local.ucx_lib.as_deref())?),
        TransportKind::Ofi => Box::new(ofi::OfiReceiver::accept(spec, setup, buf, local.ofi_lib.as_deref())?),
        TransportKind::Nixl => {
            Box::new(nixl::NixlReceiver::accept(spec, setup, buf, local.nixl_lib.as_deref())?)
        }
    })
}

/// The error for a message that arrived under the wrong key or size.
pub fn key_mismatch(index: usize, layout: &RequestLayout, request: u64, got: &str) -> Error {
    Error::integrity(format!(
        "message {index} of {} of {request_named}: expected {} ({} bytes), received {got}",
        layout.message_count,
        layout.key(request, index),
        layout.message_len(index),
        request_named = crate::plan::Req(request)
    ))
}

pub fn nanos(d: std::time::Duration) -> u64 {
    d.as_nanos() as u64
}

/// A receiving round of a transport that learns of each message by index
/// and latency (ucx, ofi): hands each to `done` with its bytes where they
/// are in host memory, and times the round by the host clock, to the
/// instant the round sets in its `Landed` where it sets one.
pub fn host_timed_round(
    buf: &Buffer,
    layout: &RequestLayout,
    done: &dyn Completions,
    round: impl FnOnce(&mut dyn FnMut(usize, u64) -> Result<()>, &Landed) -> Result<()>,
) -> Result<RoundTiming> {
    let host = buf.host_slice();
    let mut arrived = |i: usize, ns: u64| {
        let slot = layout.slot(crate::plan::Side::Receiver, i);
        done.message_done(i, ns, host.map(|h| &h[slot.offset..slot.offset + slot.len]))
    };
    let t0 = Instant::now();
    let landed = Landed::default();
    round(&mut arrived, &landed)?;
    let landed = landed.get();
    Ok(RoundTiming { elapsed_ns: Some(nanos(landed.unwrap_or_else(Instant::now) - t0)), landed })
}

/// Where a one-sided round notes when it learned that every byte landed,
/// before it tells the completions of each message (thousands of blocks
/// take a while to tell, and are not the transfer's time).
pub type Landed = std::cell::Cell<Option<Instant>>;
