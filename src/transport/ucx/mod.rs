//! Transport `ucx`: UCP between two workers, on host or CUDA memory, in the
//! three ways KV connectors use it (`--ucx-op`):
//! - put: the sender writes into the receiver's buffer, as Mooncake and
//!   P2pNccl's PUT mode push; it flushes, then signals the request done;
//! - get: the receiver reads the sender's buffer, as NixlConnector pulls,
//!   then signals the sender that it may reuse the buffer;
//! - send: tagged send/receive, one tag per message.
//!
//! Both sides map their buffer and exchange worker addresses and memory keys
//! over the control connection, then open endpoints to each other. The start
//! and end signals are bodiless tagged messages on those endpoints, so a
//! round pays no control-socket hop. At most `--in-flight` operations are
//! outstanding; every wait progresses the worker against the deadline, the
//! endpoint's failure callback and the peer's heartbeat.

mod lanes;
#[allow(clippy::all)]
mod sys;
pub mod ucp;

use super::tag::{self, check_request, Tag};
use super::{
    hex, unhex, Completions, GpuCopier, PeerLink, Ready, RecvSide, RoundTiming, SendSide, Setup, SetupWatch,
    TransportInfo, TransportSpec,
};
use crate::error::{Error, Result};
use crate::memory::Buffer;
use crate::plan::{Descriptor, RequestLayout};
use crate::units::fmt_bytes;
pub use lanes::Lanes;
use serde::{Deserialize, Serialize};
use std::ffi::c_void;
use std::time::{Duration, Instant};
use ucp::{MemType, Node, Op, Poll, Request, Ucp};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UcxOp {
    #[default]
    Put,
    Get,
    Send,
}

impl UcxOp {
    /// Which side posts the data operations: put and send push, get pulls.
    fn receiver_drives(self) -> bool {
        self == UcxOp::Get
    }
}

/// The endpoints' error handling (`--ucx-err-mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UcxErrMode {
    /// UCX detects a failed peer, and leaves out transports that cannot
    /// (UCX 1.13's shared-memory ones, for instance).
    #[default]
    Peer,
    /// Every transport; a failed peer is caught by kvxfer's own deadlines
    /// and heartbeats only.
    None,
}

crate::words::named_by_words!(UcxOp, "UCX operation", { Put => "put", Get => "get", Send => "send" });
crate::words::named_by_words!(UcxErrMode, "UCX error mode", { Peer => "peer", None => "none" });

/// How often a waiting side looks at the control connection.
const WATCH_EVERY: Duration = Duration::from_millis(5);
/// The setup's first round, which wires up the lanes and registrations.
const WARM_UP_BYTES: usize = 64 << 20;
/// The request id of that round; plan ids never reach it.
const WARM_UP_REQUEST: u64 = 0xffff_ffff;

/// One side's UCX state and what it reports.
struct Side {
    node: Node,
    op: UcxOp,
    in_flight: usize,
    /// The peer's buffer address, for put and get.
    remote_base: u64,
    device: Option<std::sync::Arc<crate::gpu::Device>>,
    info: TransportInfo,
    /// When each message of the round was posted, for its latency.
    posted_at: Vec<Instant>,
    /// The endpoint's lanes, read once wired up.
    lanes: Lanes,
    /// Whether this side posts the data operations.
    drives: bool,
    /// UCX's account of the protocol that carried messages of each size.
    protocols: std::collections::BTreeMap<usize, String>,
    /// `--ucx-err-mode peer`: UCX then leaves out transports that cannot
    /// report a failed peer, shared memory among them.
    peer_errors: bool,
}

pub struct UcxSender(Side);
pub struct UcxReceiver(Side);

/// A wait on UCX work: progresses the worker, and fails on the deadline, a
/// failed endpoint, or a peer the control connection says is gone.
struct Waiter<'a> {
    deadline: Instant,
    peer: &'a mut dyn PeerLink,
    next_watch: Instant,
    /// Progress calls that found nothing to do.
    idle: u64,
}

impl<'a> Waiter<'a> {
    fn new(deadline: Instant, peer: &'a mut dyn PeerLink) -> Self {
        Waiter { deadline, peer, next_watch: Instant::now() + WATCH_EVERY, idle: 0 }
    }

    fn tick(&mut self, node: &Node, what: &dyn Fn() -> String) -> Result<()> {
        if node.progress() == 0 {
            // Spin, but let a peer sharing this core run (a loaded CI box).
            self.idle += 1;
            if self.idle.is_multiple_of(64) {
                std::thread::yield_now();
            }
        }
        if let Some(why) = node.peer_failure() {
            let peer = node.peer;
            return Err(Error::connection_lost(format!("UCX lost the {peer} while {}: {why}", what())));
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

    /// Progresses until `req` finishes; returns a receive's tag and length.
    fn finish(
        &mut self,
        node: &Node,
        req: Request,
        tagged: bool,
        what: &dyn Fn() -> String,
    ) -> Result<Option<(Tag, usize)>> {
        loop {
            if let Poll::Done(info) = node.poll(req, tagged, &what())? {
                return Ok(info);
            }
            self.tick(node, what)?;
        }
    }

    fn finish_op(&mut self, node: &Node, op: Op, what: &dyn Fn() -> String) -> Result<()> {
        if let Op::Pending(req) = op {
            self.finish(node, req, false, what)?;
        }
        Ok(())
    }
}

/// Data operations in flight: how many, and when each message was posted.
struct Window<'a> {
    node: &'a Node,
    outstanding: usize,
    limit: usize,
    posted_at: &'a mut Vec<Instant>,
}

impl<'a> Window<'a> {
    fn new(node: &'a Node, limit: usize, posted_at: &'a mut Vec<Instant>) -> Self {
        node.clear_finished();
        posted_at.clear();
        Window { node, outstanding: 0, limit, posted_at }
    }

    fn full(&self) -> bool {
        self.outstanding >= self.limit
    }

    /// Records message `index` as posted just now (messages are posted in order).
    fn post(&mut self, index: usize) {
        debug_assert_eq!(index, self.posted_at.len());
        self.posted_at.push(Instant::now());
        self.outstanding += 1;
    }

    /// An operation UCX finished as it was posted.
    fn finished_at_once(&mut self, index: usize, done: &mut Done) -> Result<()> {
        self.outstanding -= 1;
        done(index, super::nanos(self.posted_at[index].elapsed()), None)
    }

    /// Reports the operations whose callbacks have run since the last call.
    fn reap(&mut self, what: &str, done: &mut Done) -> Result<()> {
        let (posted_at, outstanding) = (&*self.posted_at, &mut self.outstanding);
        self.node.drain(what, &mut |index, tag| {
            *outstanding -= 1;
            done(index, super::nanos(posted_at[index].elapsed()), tag)
        })
    }
}

/// Told of each finished message: index, latency since posted, matched tag.
type Done<'d> = dyn FnMut(usize, u64, Option<(Tag, usize)>) -> Result<()> + 'd;

impl Side {
    fn open(
        spec: &TransportSpec,
        setup: &mut Setup,
        buf: &Buffer,
        lib: Option<&str>,
        sender: bool,
    ) -> Result<Side> {
        let ucp = Ucp::open(lib)?;
        let device = buf.device().cloned();
        if let Some(d) = &device {
            d.bind()?;
        }
        let (base, mem) = match buf.gpu_mem() {
            Some(m) => (m.ptr as *mut c_void, MemType::Cuda),
            None => (buf.host_slice().expect("host memory").as_ptr() as *mut c_void, MemType::Host),
        };
        let mut node = Node::new(ucp, base, buf.len(), mem, if sender { "receiver" } else { "sender" })?;
        tracing::debug!(
            "UCX {} ({}): worker open, {} bytes mapped ({mem:?})",
            ucp.version,
            ucp.path,
            buf.len()
        );
        setup.send(serde_json::json!({
            "ucx_version": ucp.version,
            "worker_address": hex(&node.address()?),
            "rkey": hex(&node.packed_rkey()?),
            "base": node.base(),
        }))?;
        let theirs = setup.recv("waiting for the peer's UCX worker address")?;
        let field = |name: &str| {
            theirs[name].as_str().and_then(unhex).ok_or_else(|| {
                Error::run(format!("protocol error: bad UCX setup from the peer (no {name}): {theirs}"))
            })
        };
        node.connect(&field("worker_address")?, spec.ucx_err_mode == UcxErrMode::Peer)?;
        node.use_remote_key(&field("rkey")?)?;
        tracing::debug!("UCX endpoint to the peer's worker connected, its rkey unpacked");
        let remote_base =
            theirs["base"].as_u64().ok_or_else(|| Error::run("protocol error: no buffer address"))?;
        let peer_version = theirs["ucx_version"].as_str().unwrap_or("?").to_string();
        let mut side = Side {
            node,
            op: spec.ucx_op,
            in_flight: spec.in_flight as usize,
            remote_base,
            device,
            info: TransportInfo::default(),
            posted_at: Vec::new(),
            lanes: Lanes::default(),
            drives: false,
            protocols: Default::default(),
            peer_errors: spec.ucx_err_mode == UcxErrMode::Peer,
        };
        side.info.details.insert("ucx_library".into(), ucp.path.clone());
        side.info.details.insert("ucx_version".into(), ucp.version.clone());
        side.info.details.insert("peer_ucx_version".into(), peer_version);
        for (k, v) in std::env::vars().filter(|(k, _)| k.starts_with("UCX_")) {
            side.info.details.insert(k, v);
        }
        Ok(side)
    }

    /// Both endpoints carry a signal each way, then the side that drives the
    /// data moves one warm-up round; its lanes are then settled.
    fn warm_up(&mut self, setup: &mut Setup, sender: bool, buf_len: usize) -> Result<()> {
        let deadline = Instant::now() + setup.ctrl.timeout();
        let what = || "wiring up the UCX endpoints".to_string();
        let mut watch = SetupWatch { setup, what: "wiring up the UCX endpoints" };
        {
            let mut w = Waiter::new(deadline, &mut watch);
            let hello = tag::make(tag::HELLO, 0, 0);
            let node = &self.node;
            let pending = node.recv_signal(hello, Tag::MAX)?;
            if sender {
                w.finish_op(node, node.signal(hello)?, &what)?;
                w.finish(node, pending, true, &what)?;
            } else {
                w.finish(node, pending, true, &what)?;
                w.finish_op(node, node.signal(hello)?, &what)?;
            }
        }
        tracing::debug!("UCX endpoints wired up (a signal each way); warm-up round");
        let len = buf_len.clamp(1, WARM_UP_BYTES);
        let one = [Descriptor { first: 0, count: 1, sender: 0, receiver: 0, len }];
        let mut ignore = |_: usize, _: u64| Ok(());
        if sender {
            self.send_round(WARM_UP_REQUEST, &one, deadline, &mut watch, &super::AtOnce)
        } else {
            self.recv_round(
                WARM_UP_REQUEST,
                &one,
                deadline,
                &mut watch,
                &mut ignore,
                &super::Landed::default(),
            )
        }
    }

    fn describe(&mut self, spec: &TransportSpec, drives: bool, setup: Duration) -> Result<()> {
        let report = self.node.endpoint_report();
        let lanes = Lanes::parse(&report);
        let ucp = self.node.ucp();
        let role = if drives { "posts the operations" } else { "serves the peer's operations" };
        self.info.summary = format!(
            "ucx {} ({}): {}, {} in flight, error mode {}, this side {role}, ready in {:.1} ms",
            ucp.version,
            ucp.path,
            self.op,
            self.in_flight,
            spec.ucx_err_mode,
            setup.as_secs_f64() * 1e3
        );
        self.info.details.insert("ucx_endpoint".into(), report.trim().to_string());
        if drives {
            lanes.require(self.op, self.node.mem(), &spec.require_transport).map_err(|e| {
                // Peer error handling keeps shared memory out (UCX 1.13): the usual cause on one host.
                let shared = ["cma", "sysv", "posix", "xpmem", "knem"];
                match spec.ucx_err_mode == UcxErrMode::Peer
                    && spec.require_transport.iter().any(|t| shared.contains(&t.as_str()))
                {
                    true => Error::run(format!(
                        "{}; with --ucx-err-mode peer (the default) UCX leaves shared-memory transports out: \
                         --ucx-err-mode none lets it use them",
                        e.message
                    )),
                    false => e,
                }
            })?;
        }
        (self.lanes, self.drives) = (lanes, drives);
        Ok(())
    }

    /// The report's details: on the driving side the path, from the lanes
    /// and from the protocols UCX said it ran (they can differ: a get with
    /// a cuda_ipc lane ran as software emulation over shared memory on one
    /// GPU, at 0.7 GB/s).
    fn report(&self) -> TransportInfo {
        let mut info = self.info.clone();
        if self.drives {
            let mut path = self.lanes.path(self.op, self.node.mem());
            // One clause per protocol, with the message sizes it carried.
            let mut by_protocol: Vec<(String, Vec<String>)> = Vec::new();
            for (bytes, said) in &self.protocols {
                let words = lanes::protocol_words(said);
                let size = fmt_bytes(*bytes as u64);
                match by_protocol.iter_mut().find(|(w, _)| *w == words) {
                    Some((_, sizes)) => sizes.push(size),
                    None => by_protocol.push((words, vec![size])),
                }
            }
            for (words, sizes) in by_protocol {
                path += &format!("; UCX ran {words} for {}", sizes.join(", "));
            }
            // Over loopback (both sides on one host), peer error handling is
            // what keeps shared memory out; between hosts there is none to use.
            if self.peer_errors && path.contains("tcp/lo") && self.node.mem() == MemType::Host {
                path +=
                    "; --ucx-err-mode none lets UCX use shared memory, which peer error handling rules out (UCX 1.23 \
                     keeps cma with UCX_RNDV_THRESH=inf, as NIXL sets it)";
            }
            info.path = Some(path);
        }
        for (bytes, said) in &self.protocols {
            info.details.insert(format!("ucx_protocol_{bytes}"), said.clone());
        }
        info
    }

    /// Over cuda_ipc the initiator copies: the sender for put and for a
    /// tagged send (UCX 1.22's rendezvous over cuda_ipc is a "flushed write
    /// to remote"), the receiver for get.
    fn gpu_copier(&self) -> GpuCopier {
        use crate::topology::Role;
        (self.node.mem() == MemType::Cuda).then_some(match self.op {
            UcxOp::Put | UcxOp::Send => Role::Sender,
            UcxOp::Get => Role::Receiver,
        })
    }

    /// Asks UCX which protocol carries a message of `bytes`, once per size.
    fn note_protocol(
        protocols: &mut std::collections::BTreeMap<usize, String>,
        node: &Node,
        bytes: usize,
        op: &Op,
    ) {
        if let (Op::Pending(req), false) = (op, protocols.contains_key(&bytes)) {
            if let Some(said) = node.protocol_of(*req) {
                protocols.insert(bytes, said);
            }
        }
    }

    /// The pushing side's round: waits for the receiver's go, then puts and
    /// flushes (signalling done) or sends tagged messages, one operation
    /// per descriptor of `ops`, each once `ready` lets its messages go.
    fn send_round(
        &mut self,
        request: u64,
        ops: &[Descriptor],
        deadline: Instant,
        peer: &mut dyn PeerLink,
        ready: &dyn Ready,
    ) -> Result<()> {
        let count = ops.len();
        let (op, remote_base, limit) = (self.op, self.remote_base, self.in_flight);
        let (node, protocols) = (&self.node, &mut self.protocols);
        let what = || format!("sending {} over UCX", crate::plan::Req(request));
        let mut w = Waiter::new(deadline, peer);
        let going = || format!("waiting for the receiver's go for {}", crate::plan::Req(request));
        if op.receiver_drives() {
            // get: serve the receiver's reads until it says done.
            let done = node.recv_signal(tag::make(tag::DONE, 0, 0), tag::KIND)?;
            if ready.computes() {
                // The decode side reads once told that prefill has ended.
                let go = node.recv_signal(tag::make(tag::GO, 0, 0), tag::KIND)?;
                w.finish(node, go, true, &going)?;
                ready.go();
                let last = ops.last().map_or(0, |d| d.first + d.count - 1);
                while !ready.ready(last)? {
                    w.tick(node, &what)?;
                }
                w.finish_op(node, node.signal(tag::make(tag::COMPUTED, request, 0))?, &what)?;
            }
            let (t, _) = w.finish(node, done, true, &what)?.expect("a tag");
            return check_request(tag::request(t), request, "finished reading");
        }
        let go = node.recv_signal(tag::make(tag::GO, 0, 0), tag::KIND)?;
        w.finish(node, go, true, &going)?;
        tracing::debug!("request {request}: go received; posting {count} operations");
        ready.go();
        let mut window = Window::new(node, limit, &mut self.posted_at);
        let mut ignore = |_: usize, _: u64, _: Option<(Tag, usize)>| Ok(());
        let doing = what();
        for (i, d) in ops.iter().enumerate() {
            while window.full() || !ready.ready(d.first + d.count - 1)? {
                window.reap(&doing, &mut ignore)?;
                w.tick(node, &what)?;
            }
            window.post(i);
            let posted = match op {
                UcxOp::Put => node.put(i, d.sender, d.len, remote_base + d.receiver as u64)?,
                _ => node.send(i, d.sender, d.len, tag::make(tag::DATA, request, i))?,
            };
            Side::note_protocol(protocols, node, d.len, &posted);
            if let Op::Done = posted {
                window.finished_at_once(i, &mut ignore)?;
            }
        }
        if op == UcxOp::Put {
            // The flush completes once every put has landed at the peer.
            w.finish_op(node, node.flush()?, &what)?;
            tracing::debug!("request {request}: {count} puts flushed");
        }
        while window.outstanding > 0 {
            window.reap(&doing, &mut ignore)?;
            w.tick(node, &what)?;
        }
        if op == UcxOp::Put {
            w.finish_op(node, node.signal(tag::make(tag::DONE, request, count))?, &what)?;
            tracing::debug!("request {request}: done signalled");
        }
        Ok(())
    }

    /// The receiving side's round, one operation per descriptor of `ops`;
    /// reports each message to `arrived` with its operation's latency.
    fn recv_round(
        &mut self,
        request: u64,
        ops: &[Descriptor],
        deadline: Instant,
        peer: &mut dyn PeerLink,
        arrived: &mut dyn FnMut(usize, u64) -> Result<()>,
        landed: &super::Landed,
    ) -> Result<()> {
        let count = ops.len();
        // An operation that finished brought all its messages.
        let mut arrived =
            |k: usize, ns: u64| (ops[k].first..ops[k].first + ops[k].count).try_for_each(|m| arrived(m, ns));
        let (op, remote_base, limit) = (self.op, self.remote_base, self.in_flight);
        let (node, protocols) = (&self.node, &mut self.protocols);
        let t0 = Instant::now();
        let what = || format!("receiving {} over UCX", crate::plan::Req(request));
        let doing = what();
        let computes = peer.computes();
        let mut w = Waiter::new(deadline, peer);
        if op == UcxOp::Get && computes {
            // Pull after prefill: go, then read once the sender says it has ended.
            let computed = node.recv_signal(tag::make(tag::COMPUTED, 0, 0), tag::KIND)?;
            w.finish_op(node, node.signal(tag::make(tag::GO, request, 0))?, &what)?;
            let (t, _) = w.finish(node, computed, true, &what)?.expect("a tag");
            check_request(tag::request(t), request, "computed")?;
        }
        if op == UcxOp::Put {
            let done = node.recv_signal(tag::make(tag::DONE, 0, 0), tag::KIND)?;
            w.finish_op(node, node.signal(tag::make(tag::GO, request, 0))?, &what)?;
            let (t, _) = w.finish(node, done, true, &what)?.expect("a tag");
            check_request(tag::request(t), request, "wrote")?;
            if tag::index(t) != count {
                return Err(Error::integrity(format!(
                    "the sender put {} operations of {request_named}, expected {count}",
                    tag::index(t),
                    request_named = crate::plan::Req(request)
                )));
            }
            // One-sided: the messages are known to be here only now.
            landed.set(Some(Instant::now()));
            let latency = super::nanos(t0.elapsed());
            return (0..count).try_for_each(|k| arrived(k, latency));
        }
        let mut window = Window::new(node, limit, &mut self.posted_at);
        let mut check = |i: usize, ns: u64, info: Option<(Tag, usize)>| {
            if let (UcxOp::Send, Some((t, len))) = (op, info) {
                if t != tag::make(tag::DATA, request, i) || len != ops[i].len {
                    let got = format!(
                        "{} operation {} ({len} bytes)",
                        crate::plan::Req(tag::request(t)),
                        tag::index(t)
                    );
                    return Err(Error::integrity(format!(
                        "operation {i} of {count} of {request_named} ({} bytes): received {got}",
                        ops[i].len,
                        request_named = crate::plan::Req(request)
                    )));
                }
            }
            arrived(i, ns)
        };
        let mut next = 0;
        let mut post = |window: &mut Window, i: usize, check: &mut Done| -> Result<()> {
            window.post(i);
            let d = &ops[i];
            if op == UcxOp::Send {
                return node.recv(i, d.receiver, d.len, tag::make(tag::DATA, 0, 0), tag::KIND);
            }
            let posted = node.get(i, d.receiver, d.len, remote_base + d.sender as u64)?;
            Side::note_protocol(protocols, node, d.len, &posted);
            if let Op::Done = posted {
                window.finished_at_once(i, check)?;
            }
            Ok(())
        };
        if op == UcxOp::Send {
            // Receives first, so that no message waits unexpected.
            while next < count && !window.full() {
                post(&mut window, next, &mut check)?;
                next += 1;
            }
            w.finish_op(node, node.signal(tag::make(tag::GO, request, 0))?, &what)?;
        }
        while next < count || window.outstanding > 0 {
            while next < count && !window.full() {
                post(&mut window, next, &mut check)?;
                next += 1;
            }
            window.reap(&doing, &mut check)?;
            w.tick(node, &what)?;
        }
        if op == UcxOp::Get {
            w.finish_op(node, node.signal(tag::make(tag::DONE, request, count))?, &what)?;
        }
        Ok(())
    }
}

impl Side {
    /// Opens, wires up and describes one side; `drives` is whether it posts
    /// the data operations.
    fn start(
        spec: &TransportSpec,
        mut setup: Setup,
        buf: &Buffer,
        lib: Option<&str>,
        sender: bool,
    ) -> Result<Side> {
        let began = Instant::now();
        let mut side = Side::open(spec, &mut setup, buf, lib, sender)?;
        side.warm_up(&mut setup, sender, buf.len())?;
        let drives = sender != spec.ucx_op.receiver_drives();
        side.describe(spec, drives, began.elapsed())?;
        Ok(side)
    }
}

impl UcxSender {
    pub fn connect(spec: &TransportSpec, setup: Setup, buf: &Buffer, lib: Option<&str>) -> Result<Self> {
        Side::start(spec, setup, buf, lib, true).map(UcxSender)
    }
}

impl UcxReceiver {
    pub fn accept(spec: &TransportSpec, setup: Setup, buf: &Buffer, lib: Option<&str>) -> Result<Self> {
        Side::start(spec, setup, buf, lib, false).map(UcxReceiver)
    }
}

impl SendSide for UcxSender {
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
        if let Some(d) = &self.0.device {
            d.bind()?;
        }
        let ops = layout.descriptors();
        let result = self.0.send_round(request, &ops, deadline, peer, ready);
        self.0.node.failed |= result.is_err();
        result
    }
}

impl RecvSide for UcxReceiver {
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
        if let Some(d) = &self.0.device {
            d.bind()?;
        }
        let ops = layout.descriptors();
        let side = &mut self.0;
        super::host_timed_round(buf, layout, done, |arrived, landed| {
            let result = side.recv_round(request, &ops, deadline, peer, arrived, landed);
            side.node.failed |= result.is_err();
            result
        })
    }
}

/// Fails early, with the library named, where UCX cannot be loaded.
pub fn check_library(lib: Option<&str>) -> Result<()> {
    Ucp::open(lib).map(drop)
}
