//! Transport `nixl`: NVIDIA's NIXL, the library vLLM's NixlConnector,
//! Dynamo and SGLang move KV through, over any backend plugin it has
//! (`--nixl-backend UCX|LIBFABRIC|...`), driven as NixlConnector drives it
//! (vLLM 0.34's kv_connector/v1/nixl: base_worker.py, pull_worker.py,
//! push_worker.py):
//! - one agent per side, progress thread on, telemetry captured, UCX with
//!   `num_threads` 4 (the connector's default);
//! - each side registers its KV memory once, as one region (vLLM 0.34
//!   registers the cache's one backing allocation);
//! - agent metadata crosses kvxfer's control connection (vLLM's side
//!   channel), then `load_remote_md`;
//! - the initiator prepares descriptor lists once per geometry over every
//!   block of the pool (`prep_xfer_dlist`), local and remote;
//! - per request: descriptor indices from the request's block ids,
//!   `make_xfer_req` with the notification `"<request>:1"` (the
//!   connector's "request id:consumers"), `post_xfer_req`, `get_xfer_status`
//!   until DONE, telemetry, release; NIXL merges adjacent descriptors
//!   unless `--coalesce off` (`skip_desc_merge`);
//! - `--nixl-op read` (NixlConnector, the default): decode READs the
//!   prefill side's blocks, and the notification tells prefill it may free
//!   them; `--nixl-op write` (NixlPushConnector): decode asks with a
//!   notification, prefill WRITEs and the notification tells decode the
//!   KV has landed.
//!
//! With emulated prefill, decode reads once prefill says it has ended
//! (a notification). Each request's steps are timed (`figures`).

mod agent;
pub mod lib;
pub mod proto;
#[allow(clippy::all)]
mod sys;

use super::{
    hex, unhex, Completions, GpuCopier, PeerLink, Ready, RecvSide, RoundTiming, SendSide, Setup, SetupWatch,
    TransportInfo, TransportSpec,
};
use crate::clock::mono_ns;
use crate::error::{Error, Result};
pub use crate::figures::nixl::{NixlFigures, NixlRecords, Record};
use crate::memory::Buffer;
use crate::plan::{DescSpace, RequestLayout, Side as BufSide};
use agent::{Agent, Mem, Prepped, State, XferOp};
use lib::Nixl;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// READ (pull, NixlConnector) or WRITE (push, NixlPushConnector).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum NixlOp {
    #[default]
    Read,
    Write,
}

crate::words::named_by_words!(NixlOp, "NIXL operation", { Read => "read" | "pull", Write => "write" | "push" });

impl NixlOp {
    fn xfer(self) -> XferOp {
        match self {
            NixlOp::Read => XferOp::Read,
            NixlOp::Write => XferOp::Write,
        }
    }

    /// The decode side (receiver) posts reads; the prefill side writes.
    fn initiator_is_receiver(self) -> bool {
        self == NixlOp::Read
    }

    fn connector(self) -> &'static str {
        match self {
            NixlOp::Read => "NixlConnector: decode reads",
            NixlOp::Write => "NixlPushConnector: prefill writes",
        }
    }
}

/// The backend NixlConnector uses unless told otherwise.
pub const DEFAULT_BACKEND: &str = "UCX";
/// NixlConnector's `num_threads` for UCX (kv_connector_extra_config).
const UCX_THREADS: u32 = 4;
/// How often a waiting side looks at the control connection.
const WATCH_EVERY: Duration = Duration::from_millis(5);
/// How long a failed transfer waits for the control connection to say the
/// peer has gone.
const PEER_LOSS_GRACE: Duration = Duration::from_millis(500);
/// The setup's transfer, which wires up the connection.
const WARM_UP_BYTES: usize = 32 << 20;
/// Prepared lists kept at once; conversations at layer granularity make
/// a new geometry per turn.
const MAX_PREPPED: usize = 256;
/// Requests whose steps a side keeps for the report.
const MAX_RECORDS: usize = 1 << 16;

/// What a side sends the other at setup.
#[derive(Serialize, Deserialize)]
struct SetupData {
    agent: String,
    metadata: String,
    base: u64,
    memory: String,
    device: u64,
    backend: String,
    nixl: String,
}

struct Side {
    agent: Agent,
    /// The peer's agent name, as NIXL knows it.
    peer: String,
    op: NixlOp,
    backend: String,
    /// Whether this side posts the transfers.
    initiator: bool,
    mem: Mem,
    device: u64,
    base: usize,
    remote_mem: Mem,
    remote_device: u64,
    remote_base: usize,
    gpu: Option<std::sync::Arc<crate::gpu::Device>>,
    /// Prepared lists by (this side's or the peer's, geometry).
    prepped: HashMap<(bool, DescSpace), Prepped>,
    /// Notifications from the peer not yet waited for, with when they came.
    inbox: VecDeque<(Vec<u8>, u64)>,
    records: Vec<Record>,
    dropped: u64,
    /// The test fault `neighbour-block`.
    fault: bool,
    /// Rounds so far: a conversation's turns share a request id, so
    /// notifications name the round too (both sides count alike).
    rounds: u64,
    info: TransportInfo,
    /// UCX's protocol tables for this side's transfers (UCX backend), as
    /// set up.
    rows: Vec<proto::Row>,
    /// Where UCX's tables are caught; let go after the agent.
    capture: Option<proto::Capture>,
}

pub struct NixlSender(Side);
pub struct NixlReceiver(Side);

/// A wait on NIXL: fails on the deadline or a peer the control connection says is gone.
struct Waiter<'a> {
    deadline: Instant,
    peer: &'a mut dyn PeerLink,
    next_watch: Instant,
    idle: u64,
}

impl<'a> Waiter<'a> {
    fn new(deadline: Instant, peer: &'a mut dyn PeerLink) -> Self {
        Waiter { deadline, peer, next_watch: Instant::now() + WATCH_EVERY, idle: 0 }
    }

    fn tick(&mut self, what: &dyn Fn() -> String) -> Result<()> {
        // Spin, but let the peer and NIXL's threads run on a loaded host.
        self.idle += 1;
        if self.idle.is_multiple_of(64) {
            std::thread::yield_now();
        }
        let now = Instant::now();
        if now >= self.next_watch {
            self.next_watch = now + WATCH_EVERY;
            self.peer.watch()?;
            if now >= self.deadline {
                return Err(Error::run(format!("timed out {}", what())));
            }
        }
        Ok(())
    }
}

/// The control connection's word that the peer has gone, if it comes
/// within a moment: a round NIXL failed is most often a peer that has
/// gone, which NIXL's UCX can see before the socket's reset has been read,
/// and which the control connection names better than NIXL's status does.
fn peer_lost(peer: &mut dyn PeerLink) -> Option<Error> {
    let until = Instant::now() + PEER_LOSS_GRACE;
    loop {
        if let Err(lost) = peer.watch() {
            return Some(lost);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(WATCH_EVERY);
    }
}

/// A step's duration from `t` to now, in ns.
fn since(t: Instant) -> u64 {
    super::nanos(t.elapsed())
}

impl Side {
    fn start(
        spec: &TransportSpec,
        mut setup: Setup,
        buf: &Buffer,
        lib: Option<&str>,
        sender: bool,
    ) -> Result<Side> {
        let began = Instant::now();
        let nixl = Nixl::open(lib)?;
        let gpu = buf.device().cloned();
        if let Some(d) = &gpu {
            d.bind()?;
        }
        let initiator = sender != spec.nixl_op.initiator_is_receiver();
        let backend = spec.nixl_backend.clone();
        let name = agent_name(sender);
        let t = Instant::now();
        let mut agent = Agent::new(nixl, &name, spec.nixl_progress_thread)?;
        let agent_ns = since(t);
        has_plugin(nixl, &agent, &backend)?;
        // UCX prints its protocol tables where the initiator's transfers select them.
        let ucx = backend == "UCX";
        let capture = (ucx && initiator).then(proto::Capture::begin);
        let params = backend_params(spec, initiator);
        let t = Instant::now();
        let used =
            agent.create_backend(&backend, &params).map_err(|e| match nixl.plugin_load_error(&backend) {
                Some(why) => Error::run(format!("{e}: its plugin does not load here: {why}")),
                None => e,
            })?;
        let backend_ns = since(t);
        let (mem, device, base) = match buf.gpu_mem() {
            Some(m) => (Mem::Vram, m.device.ordinal as u64, m.ptr as usize),
            None => (Mem::Dram, 0, buf.host_slice().expect("host memory").as_ptr() as usize),
        };
        let t = Instant::now();
        agent.register(mem, base, buf.len().max(1), device)?;
        let register_ns = since(t);
        let t = Instant::now();
        let mine = SetupData {
            agent: name.clone(),
            metadata: hex(&agent.local_md()?),
            base: base as u64,
            memory: mem.name().to_string(),
            device,
            backend: backend.clone(),
            nixl: nixl.version.clone().unwrap_or_default(),
        };
        tracing::debug!(
            "NIXL agent {name}: backend {backend}, {} bytes of {} registered",
            buf.len(),
            mem.name()
        );
        let (peer, theirs) = exchange_metadata(&agent, &mut setup, &mine)?;
        let metadata_ns = since(t);
        let remote_mem = if theirs.memory == "VRAM" { Mem::Vram } else { Mem::Dram };
        let mut side = Side {
            agent,
            peer,
            op: spec.nixl_op,
            backend,
            initiator,
            mem,
            device,
            base,
            remote_mem,
            remote_device: theirs.device,
            remote_base: theirs.base as usize,
            gpu,
            prepped: HashMap::new(),
            inbox: VecDeque::new(),
            records: Vec::new(),
            dropped: 0,
            fault: spec.nixl_fault,
            rounds: 0,
            info: TransportInfo::default(),
            rows: Vec::new(),
            capture,
        };
        let t = Instant::now();
        side.warm_up(&mut setup, buf.len(), &used)?;
        let warm_up_ns = since(t);
        side.rows = side.protocols();
        let steps = [
            ("agent", agent_ns),
            ("backend", backend_ns),
            ("register", register_ns),
            ("metadata", metadata_ns),
            ("first_transfer", warm_up_ns),
        ];
        side.note_setup(nixl, spec, &name, theirs.nixl, &used, &steps);
        side.describe(spec, began.elapsed())?;
        Ok(side)
    }

    /// The report's details of the setup: the library, the backend and
    /// its parameters, each setup step's time, and UCX_ and NIXL_ variables.
    fn note_setup(
        &mut self,
        nixl: &Nixl,
        spec: &TransportSpec,
        name: &str,
        peer_version: String,
        params: &[(String, String)],
        steps: &[(&str, u64)],
    ) {
        let d = &mut self.info.details;
        d.insert("nixl_library".into(), nixl.path.clone());
        d.insert("nixl_version".into(), nixl.version.clone().unwrap_or_else(|| "?".into()));
        d.insert("peer_nixl_version".into(), peer_version);
        d.insert("nixl_backend".into(), self.backend.clone());
        d.insert("nixl_plugin_dir".into(), nixl.plugin_dir().display().to_string());
        d.insert("nixl_agent".into(), name.to_string());
        d.insert("nixl_progress_thread".into(), spec.nixl_progress_thread.to_string());
        let params: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
        d.insert("nixl_backend_params".into(), params.join(","));
        for (step, ns) in steps {
            d.insert(format!("nixl_setup_{step}_ns"), ns.to_string());
        }
        for (k, v) in std::env::vars().filter(|(k, _)| k.starts_with("UCX_") || k.starts_with("NIXL_")) {
            d.insert(k, v);
        }
    }

    fn describe(&mut self, spec: &TransportSpec, setup: Duration) -> Result<()> {
        let role = if self.initiator { "posts the transfers" } else { "is the transfers' target" };
        self.info.summary = format!(
            "nixl {} {} {} ({}), this side {role}, ready in {:.1} ms",
            self.info.details.get("nixl_version").map_or("?", String::as_str),
            self.backend,
            self.op,
            self.op.connector(),
            setup.as_secs_f64() * 1e3
        );
        if self.initiator {
            let read = self.op == NixlOp::Read;
            self.info.path = Some(self.path(&self.rows));
            if !spec.require_transport.is_empty() {
                proto::require(&self.rows, read, &spec.require_transport)?;
            }
        }
        Ok(())
    }

    /// The protocols UCX printed for this side's transfers so far.
    fn protocols(&self) -> Vec<proto::Row> {
        match &self.capture {
            Some(c) => proto::of_memory(
                proto::parse(&c.text(), &self.agent.name, self.op == NixlOp::Read),
                self.mem == Mem::Vram,
            ),
            None => Vec::new(),
        }
    }

    /// One transfer, unmerged, with its notification: wires up the
    /// connection and selects UCX's protocols for the run's operation
    /// before anything is timed, on every thread of the backend (a batch
    /// of `split_batch_size` descriptors per thread).
    fn warm_up(&mut self, setup: &mut Setup, buf_len: usize, params: &[(String, String)]) -> Result<()> {
        let deadline = Instant::now() + setup.ctrl.timeout();
        let mut watch = SetupWatch { setup, what: "wiring up NIXL" };
        let what = || "moving NIXL's first transfer".to_string();
        if !self.initiator {
            let mut w = Waiter::new(deadline, &mut watch);
            return self.wait_notification(b"warm-up", &mut w, &what).map(drop);
        }
        let param =
            |k: &str| params.iter().find(|(key, _)| key == k).and_then(|(_, v)| v.parse::<usize>().ok());
        let threads = param("num_threads").unwrap_or(0);
        let count = if threads > 0 { threads * param("split_batch_size").unwrap_or(1024) } else { 2 };
        let len = (buf_len / count).clamp(1, WARM_UP_BYTES / count.max(1));
        // A buffer too small for them all: descriptors overlap, which a warm-up may.
        let at = |i: usize| (i * len) % (buf_len.saturating_sub(len) + 1);
        let local: Vec<agent::Desc> = (0..count).map(|i| (self.base + at(i), len, self.device)).collect();
        let remote: Vec<agent::Desc> =
            (0..count).map(|i| (self.remote_base + at(i), len, self.remote_device)).collect();
        let l = self.agent.prep(None, self.mem, &local)?;
        let peer = self.peer.clone();
        let r = self.agent.prep(Some(&peer), self.remote_mem, &remote)?;
        let ids: Vec<i32> = (0..count as i32).collect();
        let x = self.agent.make(self.op.xfer(), &l, &ids, &r, &ids, Some(b"warm-up"), true)?;
        let mut w = Waiter::new(deadline, &mut watch);
        let result = (|| -> Result<()> {
            let mut state = self.agent.post(&x)?;
            while state == State::InProgress {
                w.tick(&what)?;
                state = self.agent.poll(&x)?;
            }
            Ok(())
        })();
        self.agent.release(x);
        result
    }

    /// Waits for the peer's notification `want`; returns when it came.
    fn wait_notification(&mut self, want: &[u8], w: &mut Waiter, what: &dyn Fn() -> String) -> Result<u64> {
        loop {
            if let Some(at) = self.inbox.iter().position(|(m, _)| m == want) {
                return Ok(self.inbox.remove(at).expect("found").1);
            }
            for (from, msg) in self.agent.notifications()? {
                if from == self.peer {
                    self.inbox.push_back((msg, mono_ns()));
                } else {
                    tracing::debug!("NIXL: a notification from {from}, not the peer: ignored");
                }
            }
            if self.inbox.iter().any(|(m, _)| m == want) {
                continue;
            }
            if self.inbox.len() > 4096 {
                let oldest = String::from_utf8_lossy(&self.inbox[0].0).into_owned();
                return Err(Error::run(format!(
                    "{}: the peer sent 4096 notifications kvxfer did not expect (the oldest: '{oldest}')",
                    what()
                )));
            }
            w.tick(what)?;
        }
    }

    /// The prepared lists for `layout`'s geometry, local and remote,
    /// prepared the first time it is seen (outside any request's clock).
    fn prepare(&mut self, layout: &RequestLayout) -> Result<(Prepped, Prepped)> {
        let (mine, theirs) = self.buffer_sides();
        // Room for both before either is taken: a list handed out stays valid.
        if self.prepped.len() + 2 > MAX_PREPPED {
            for (_, p) in self.prepped.drain() {
                self.agent.unprep(p);
            }
        }
        let mut get = |local: bool, side: BufSide| -> Result<Prepped> {
            let space = layout.desc_space(side);
            if let Some(p) = self.prepped.get(&(local, space.clone())) {
                return Ok(*p);
            }
            if space.count() > i32::MAX as usize {
                return Err(Error::usage(format!(
                    "{} descriptors in a pool: NIXL indexes them with 32-bit ints",
                    space.count()
                )));
            }
            let t = Instant::now();
            let (base, mem, dev) = match local {
                true => (self.base, self.mem, self.device),
                false => (self.remote_base, self.remote_mem, self.remote_device),
            };
            let descs: Vec<agent::Desc> =
                (0..space.count()).map(|i| (base + space.offset(i), space.len_of(i), dev)).collect();
            let peer = self.peer.clone();
            let p = self.agent.prep((!local).then_some(peer.as_str()), mem, &descs)?;
            tracing::debug!(
                "NIXL: {} descriptors of {} prepared in {:.0} us",
                descs.len(),
                if local { "this side" } else { "the peer" },
                t.elapsed().as_secs_f64() * 1e6
            );
            self.prepped.insert((local, space), p);
            Ok(p)
        };
        Ok((get(true, mine)?, get(false, theirs)?))
    }

    /// Which side of the layout this side's buffer is, and the peer's.
    fn buffer_sides(&self) -> (BufSide, BufSide) {
        let sender = self.initiator != self.op.initiator_is_receiver();
        match sender {
            true => (BufSide::Sender, BufSide::Receiver),
            false => (BufSide::Receiver, BufSide::Sender),
        }
    }

    /// The descriptor indices of a request's messages, local and remote;
    /// with the test fault, the first message's source points at the block
    /// beside its own.
    fn indices(&self, layout: &RequestLayout) -> Result<(Vec<i32>, Vec<i32>)> {
        let (mine, theirs) = self.buffer_sides();
        let ids = |side| layout.desc_indices(side).into_iter().map(|d| d as i32).collect::<Vec<_>>();
        let (mut local, mut remote) = (ids(mine), ids(theirs));
        if self.fault {
            let source = if mine == BufSide::Sender { &mut local } else { &mut remote };
            let space = layout.desc_space(BufSide::Sender);
            let step = space.step();
            if space.count() <= step {
                return Err(Error::usage("--fault neighbour-block needs a pool of more than one block"));
            }
            source[0] = ((source[0] as usize + step) % space.count()) as i32;
        }
        Ok((local, remote))
    }

    /// Moves one request as the initiator: indices, make, post, poll to
    /// DONE; the notification goes with the transfer.
    fn transfer(
        &mut self,
        layout: &RequestLayout,
        id: Round,
        w: &mut Waiter,
        lists: (Prepped, Prepped),
    ) -> Result<Record> {
        let request = id.request;
        let what = || {
            format!(
                "moving {request_named} over NIXL {}",
                self.backend,
                request_named = crate::plan::Req(request)
            )
        };
        let t = Instant::now();
        let (local, remote) = self.indices(layout)?;
        let ids_ns = since(t);
        let t = Instant::now();
        let x = self.agent.make(
            self.op.xfer(),
            &lists.0,
            &local,
            &lists.1,
            &remote,
            Some(&id.done()),
            !layout.coalesce,
        )?;
        let make_ns = since(t);
        let t = Instant::now();
        let result = (|| -> Result<(u64, u64)> {
            let mut state = self.agent.post(&x)?;
            let post_ns = since(t);
            let t = Instant::now();
            while state == State::InProgress {
                w.tick(&what)?;
                state = self.agent.poll(&x)?;
            }
            Ok((post_ns, since(t)))
        })();
        let done_at = mono_ns();
        let telemetry = self.agent.telemetry(&x).unwrap_or_default();
        self.agent.release(x);
        let (post_ns, transfer_ns) =
            result.map_err(|e| e.context(format!("{}", crate::plan::Req(request))))?;
        Ok(Record {
            request,
            round: id.round,
            ids_ns,
            make_ns,
            post_ns,
            transfer_ns,
            done_at,
            nixl_post_us: telemetry.post_us,
            nixl_xfer_us: telemetry.xfer_us,
            descriptors: layout.message_count as u64,
            merged: telemetry.descriptors,
            notified_at: 0,
        })
    }

    /// The report's path line: for UCX, the protocols it chose.
    fn path(&self, rows: &[proto::Row]) -> String {
        match self.backend.as_str() {
            "UCX" => format!("NIXL UCX {}", proto::path(rows, self.op == NixlOp::Read)),
            other => format!("NIXL {other} {} (NIXL does not say which provider or path)", self.op),
        }
    }

    /// The prefill side's round: its notifications, and WRITE's transfer.
    fn send_round(
        &mut self,
        layout: &RequestLayout,
        id: Round,
        deadline: Instant,
        peer: &mut dyn PeerLink,
        ready: &dyn Ready,
    ) -> Result<()> {
        let request = id.request;
        let going = || format!("waiting for the receiver's go for {}", crate::plan::Req(request));
        let what = || format!("sending {} over NIXL", crate::plan::Req(request));
        let lists = if self.initiator { Some(self.prepare(layout)?) } else { None };
        let mut w = Waiter::new(deadline, peer);
        let last = layout.message_count.saturating_sub(1);
        if self.op == NixlOp::Read {
            if ready.computes() {
                // Decode reads once prefill has ended: go, compute, then say so.
                self.wait_notification(&id.go(), &mut w, &going)?;
                ready.go();
                while !ready.ready(last)? {
                    w.tick(&what)?;
                }
                self.agent.notify(&self.peer, &id.computed())?;
            }
            // Prefill frees its blocks when decode's notification comes.
            let notified_at = self.wait_notification(&id.done(), &mut w, &what)?;
            self.record(Record { request: id.request, round: id.round, notified_at, ..Default::default() });
            return Ok(());
        }
        // Push: decode asks for the request, prefill writes it whole once computed.
        self.wait_notification(&id.go(), &mut w, &going)?;
        ready.go();
        while !ready.ready(last)? {
            w.tick(&what)?;
        }
        let record = self.transfer(layout, id, &mut w, lists.expect("the initiator's lists"))?;
        self.record(record);
        Ok(())
    }

    /// The decode side's round: READ's transfer, or WRITE's go and wait.
    fn recv_round(
        &mut self,
        layout: &RequestLayout,
        id: Round,
        deadline: Instant,
        peer: &mut dyn PeerLink,
        computes: bool,
        lists: Option<(Prepped, Prepped)>,
    ) -> Result<Record> {
        let request = id.request;
        let what = || format!("receiving {} over NIXL", crate::plan::Req(request));
        let mut w = Waiter::new(deadline, peer);
        Ok(match self.op {
            NixlOp::Read => {
                if computes {
                    self.agent.notify(&self.peer, &id.go())?;
                    self.wait_notification(&id.computed(), &mut w, &what)?;
                }
                self.transfer(layout, id, &mut w, lists.expect("the initiator's lists"))?
            }
            NixlOp::Write => {
                self.agent.notify(&self.peer, &id.go())?;
                let notified_at = self.wait_notification(&id.done(), &mut w, &what)?;
                Record { request: id.request, round: id.round, notified_at, ..Default::default() }
            }
        })
    }

    /// The next round's names, for a request.
    fn next_round(&mut self, request: u64) -> Round {
        self.rounds += 1;
        Round { request, round: self.rounds }
    }

    fn record(&mut self, r: Record) {
        match self.records.len() < MAX_RECORDS {
            true => self.records.push(r),
            false => self.dropped += 1,
        }
    }

    fn report(&self) -> TransportInfo {
        let mut info = self.info.clone();
        if self.initiator {
            // What UCX chose over the whole run, not only at setup.
            info.path = Some(self.path(&self.protocols()));
        }
        info.nixl = (!self.records.is_empty() || self.dropped > 0).then(|| NixlRecords {
            initiator: self.initiator,
            records: self.records.clone(),
            dropped: self.dropped,
        });
        info
    }

    /// Over GPU memory the initiator's side runs the copies (cuda_ipc).
    fn gpu_copier(&self) -> GpuCopier {
        use crate::topology::Role;
        (self.mem == Mem::Vram).then_some(match self.op {
            NixlOp::Read => Role::Receiver,
            NixlOp::Write => Role::Sender,
        })
    }

    fn bind(&self) -> Result<()> {
        match &self.gpu {
            Some(d) => d.bind(),
            None => Ok(()),
        }
    }
}

/// One round of one request, and the notifications that name it. The
/// transfer's own is NixlConnector's "request id:consumers".
#[derive(Clone, Copy)]
struct Round {
    request: u64,
    round: u64,
}

impl Round {
    fn done(self) -> Vec<u8> {
        format!("{}.{}:1", self.request, self.round).into_bytes()
    }

    fn go(self) -> Vec<u8> {
        format!("go:{}.{}", self.request, self.round).into_bytes()
    }

    fn computed(self) -> Vec<u8> {
        format!("computed:{}.{}", self.request, self.round).into_bytes()
    }
}

/// Fails, naming the plugins NIXL has, where it has none for `backend`.
fn has_plugin(nixl: &Nixl, agent: &Agent, backend: &str) -> Result<()> {
    let plugins = agent.plugins()?;
    if !plugins.iter().any(|p| p == backend) {
        return Err(Error::usage(format!(
            "{} has no backend plugin '{backend}': it has {} (in {})",
            nixl.describe(),
            plugins.join(", "),
            nixl.plugin_dir().display()
        )));
    }
    Ok(())
}

/// Sends this side's agent metadata and buffer over the control connection
/// (vLLM's side channel) and loads the peer's: its agent's name and setup.
fn exchange_metadata(agent: &Agent, setup: &mut Setup, mine: &SetupData) -> Result<(String, SetupData)> {
    setup.send(serde_json::to_value(mine).expect("setup data serialises"))?;
    let theirs = setup.recv("waiting for the peer's NIXL agent metadata")?;
    let theirs: SetupData = serde_json::from_value(theirs)
        .map_err(|e| Error::run(format!("protocol error: bad NIXL setup from the peer: {e}")))?;
    let md = unhex(&theirs.metadata).ok_or_else(|| Error::run("protocol error: NIXL metadata is not hex"))?;
    let peer = agent.load_remote_md(&md)?;
    tracing::debug!("NIXL: the peer's agent {peer} loaded ({} bytes of metadata)", md.len());
    Ok((peer, theirs))
}

/// Agent names are unique in the process and across a pair's two sides.
fn agent_name(sender: bool) -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    format!("kvxfer-{}-{host}-{}-{n}", if sender { "send" } else { "recv" }, std::process::id())
}

/// The backend's parameters: NIXL's defaults, NixlConnector's thread
/// count for UCX, `--nixl-param`s, and for the initiator's UCX the option
/// that has UCX print its protocol tables.
fn backend_params(spec: &TransportSpec, initiator: bool) -> Vec<(String, String)> {
    let mut params: Vec<(String, String)> = Vec::new();
    let threads = match (spec.nixl_threads, spec.nixl_backend.as_str()) {
        (Some(n), _) => Some(n),
        (None, "UCX") => Some(UCX_THREADS),
        (None, _) => None,
    };
    if let Some(n) = threads.filter(|n| *n > 0) {
        params.push(("num_threads".into(), n.to_string()));
    }
    for p in &spec.nixl_params {
        let (k, v) = p.split_once('=').unwrap_or((p, ""));
        params.retain(|(key, _)| key != k);
        params.push((k.to_string(), v.to_string()));
    }
    if spec.nixl_backend == "UCX" && initiator {
        match params.iter_mut().find(|(k, _)| k == "engine_config") {
            Some((_, v)) if !v.is_empty() => *v = format!("{v},{}", proto::PROTO_INFO),
            Some((_, v)) => *v = proto::PROTO_INFO.to_string(),
            None => params.push(("engine_config".into(), proto::PROTO_INFO.to_string())),
        }
    }
    params
}

impl NixlSender {
    pub fn connect(spec: &TransportSpec, setup: Setup, buf: &Buffer, lib: Option<&str>) -> Result<Self> {
        Side::start(spec, setup, buf, lib, true).map(NixlSender)
    }
}

impl NixlReceiver {
    pub fn accept(spec: &TransportSpec, setup: Setup, buf: &Buffer, lib: Option<&str>) -> Result<Self> {
        Side::start(spec, setup, buf, lib, false).map(NixlReceiver)
    }
}

impl SendSide for NixlSender {
    fn info(&self) -> TransportInfo {
        self.0.report()
    }

    fn gpu_copier(&self) -> GpuCopier {
        self.0.gpu_copier()
    }

    fn go_in_band(&self) -> bool {
        true
    }

    fn send(
        &mut self,
        _buf: &Buffer,
        layout: &RequestLayout,
        request: u64,
        deadline: Instant,
        peer: &mut dyn PeerLink,
        ready: &dyn Ready,
    ) -> Result<()> {
        let s = &mut self.0;
        s.bind()?;
        let id = s.next_round(request);
        s.send_round(layout, id, deadline, &mut *peer, ready).map_err(|e| peer_lost(peer).unwrap_or(e))
    }
}

impl RecvSide for NixlReceiver {
    fn info(&self) -> TransportInfo {
        self.0.report()
    }

    fn gpu_copier(&self) -> GpuCopier {
        self.0.gpu_copier()
    }

    fn go_in_band(&self) -> bool {
        true
    }

    fn recv(
        &mut self,
        buf: &mut Buffer,
        layout: &RequestLayout,
        request: u64,
        deadline: Instant,
        peer: &mut dyn PeerLink,
        done: &dyn Completions,
    ) -> Result<RoundTiming> {
        let s = &mut self.0;
        s.bind()?;
        let id = s.next_round(request);
        let lists = if s.initiator { Some(s.prepare(layout)?) } else { None };
        let computes = peer.computes();
        super::host_timed_round(buf, layout, done, |arrived, landed| {
            let t0 = Instant::now();
            let record = s
                .recv_round(layout, id, deadline, &mut *peer, computes, lists)
                .map_err(|e| peer_lost(peer).unwrap_or(e))?;
            s.record(record);
            // One-sided: the messages are known to be here only now.
            landed.set(Some(Instant::now()));
            let latency = super::nanos(t0.elapsed());
            (0..layout.message_count).try_for_each(|i| arrived(i, latency))
        })
    }
}

/// Fails early, with the fix named, where NIXL cannot be loaded.
pub fn check_library(lib: Option<&str>) -> Result<()> {
    Nixl::open(lib).map(drop)
}

/// What `kvxfer doctor` found of one backend plugin.
#[derive(Clone, Debug)]
pub struct PluginProbe {
    pub name: String,
    /// Why it does not load here, if it does not.
    pub load_error: Option<String>,
    /// The memory it takes (DRAM, VRAM, FILE, ...).
    pub memory: Vec<String>,
    /// Whether a backend was created, as a run creates one (UCX and
    /// LIBFABRIC only), and why not.
    pub created: Option<bool>,
    pub create_error: Option<String>,
    /// UCX: why its CUDA module does not load, if it does not.
    pub cuda: Option<String>,
}

impl PluginProbe {
    pub fn describe(&self) -> String {
        if let Some(why) = &self.load_error {
            return format!("does not load: {why}");
        }
        let memory =
            format!("takes {}", if self.memory.is_empty() { "?".into() } else { self.memory.join(", ") });
        let created = match (self.created, &self.create_error) {
            (Some(true), _) => "; backend created".to_string(),
            (Some(false), why) => format!("; backend not created: {}", why.as_deref().unwrap_or("?")),
            (None, _) => String::new(),
        };
        let cuda = match (&self.cuda, self.name.as_str()) {
            (Some(why), _) => format!("; its UCX's CUDA module does not load: {why}"),
            (None, "UCX") if self.created == Some(true) => "; its UCX's CUDA module loads".to_string(),
            _ => String::new(),
        };
        format!("{memory}{created}{cuda}")
    }
}

/// Each plugin NIXL finds: whether it loads (the loader's words where
/// not), the memory it takes, and for UCX and LIBFABRIC whether a backend
/// can be created here.
pub fn probe(nixl: &'static Nixl) -> Result<Vec<PluginProbe>> {
    let lister = Agent::new(nixl, &agent_name(false), true)?;
    let mut out = Vec::new();
    for name in lister.plugins()? {
        let mut p = PluginProbe {
            name: name.clone(),
            load_error: nixl.plugin_load_error(&name),
            memory: Vec::new(),
            created: None,
            create_error: None,
            cuda: None,
        };
        if p.load_error.is_none() {
            match lister.plugin_params(&name) {
                Ok((memory, _)) => p.memory = memory,
                Err(e) => p.load_error = Some(e.message),
            }
        }
        if p.load_error.is_none() && (name == "UCX" || name == "LIBFABRIC") {
            let mut agent = Agent::new(nixl, &agent_name(false), true)?;
            match agent.create_backend(&name, &[]) {
                Ok(_) => p.created = Some(true),
                Err(e) => (p.created, p.create_error) = (Some(false), Some(e.message)),
            }
            if name == "UCX" {
                p.cuda = ucx_cuda_module_error();
            }
        }
        out.push(p);
    }
    Ok(out)
}

/// Why the CUDA module of the UCX that NIXL loaded does not load, if it
/// does not: it sits in ucx/ beside that libucp.
fn ucx_cuda_module_error() -> Option<String> {
    let ucp = crate::env::mapped_file(|p| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        (name.starts_with("libucp-") || name.starts_with("libucp.so")) && p.to_string_lossy().contains("nixl")
    })?;
    let dir = ucp.parent()?.join("ucx");
    let module = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libuct_cuda.so")));
    let Some(module) = module else { return Some(format!("{} has no libuct_cuda", dir.display())) };
    lib::load_error(&module)
}
