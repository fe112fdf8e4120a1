//! Transport `ofi`: libfabric directly, on a reliable datagram (RDM)
//! endpoint, in the three ways NIXL's LIBFABRIC backend and others use it
//! (`--ofi-op`):
//! - write: the sender writes into the receiver's registered buffer
//!   (fi_writemsg), then sends a done message once the writes are complete
//!   at the target (FI_DELIVERY_COMPLETE, or sends ordered after writes);
//! - read: the receiver reads the sender's buffer (fi_read), then tells it
//!   it may reuse the buffer;
//! - send: tagged send/receive (fi_tsend/fi_trecv), one tag per message.
//!
//! Endpoint addresses and memory keys travel over the control connection;
//! the go and done signals are tagged messages on the endpoints. At most
//! `--in-flight` operations are outstanding; every wait reads the completion
//! queue (which is also what progresses the provider) against the deadline
//! and the peer's heartbeat. `--ofi-provider` picks the provider (tcp, shm,
//! efa, verbs, ...), FI_* variables pass through to libfabric, and
//! `--require-provider` fails the run unless the named one was chosen.

mod fabric;
pub mod lib;
#[allow(clippy::all)]
mod sys;

use super::tag::{self, check_request, Tag};
use super::{
    hex, unhex, AtOnce, Completions, GpuCopier, PeerLink, Ready, RecvSide, RoundTiming, SendSide, Setup,
    SetupWatch, TransportInfo, TransportSpec,
};
use crate::error::{Error, Result};
use crate::memory::Buffer;
use crate::plan::{Descriptor, RequestLayout, Side as End};
use fabric::{Endpoint, Finished, Iface, Region, Wanted, Watchdog};
use lib::Ofi;
use serde::{Deserialize, Serialize};
use std::ffi::c_void;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OfiOp {
    #[default]
    Write,
    Read,
    Send,
}

crate::words::named_by_words!(OfiOp, "libfabric operation", { Write => "write", Read => "read", Send => "send" });

/// How often a waiting side looks at the control connection.
const WATCH_EVERY: Duration = Duration::from_millis(5);
/// How long a wait spins before it sleeps (on providers that can sleep).
const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(50);
/// Keys this side asks for where the provider does not pick them.
const DATA_KEY: u64 = 0x6b76_0001;
const SIGNAL_KEY: u64 = 0x6b76_0002;

/// One side's endpoint, registrations and round state.
struct Side {
    /// Left open after a failed round: a provider may wait forever in its
    /// close for a peer stopped mid-operation (seen with shm); the process
    /// is about to exit and the system reclaims it all but the shm file.
    ep: std::mem::ManuallyDrop<Endpoint>,
    failed: bool,
    /// The endpoint's /dev/shm file (shm), removed where close is skipped.
    shm_file: Option<std::ffi::CString>,
    watchdog: Watchdog,
    op: OfiOp,
    in_flight: usize,
    peer: sys::fi_addr_t,
    base: *mut u8,
    data: Region,
    /// The peer's buffer: where RMA goes (its address or 0) and its key.
    remote_base: u64,
    remote_key: u64,
    /// Two words for the signals' payload: [receive, send].
    signals: Box<[u64; 2]>,
    signal_region: Region,
    /// One context per message, then the signal receive's and send's.
    contexts: Vec<sys::fi_context2>,
    posted_at: Vec<Instant>,
    /// Completions read while doing something else, for the next wait.
    early: Vec<Finished>,
    info: TransportInfo,
    peer_role: crate::topology::Role,
    /// Where libfabric copies GPU memory itself (shm's CUDA IPC protocol),
    /// the GPU whose legacy stream holds the copy: its cudaMemcpy between
    /// device buffers returns, and the operation completes, before the
    /// bytes have moved. The side that ran the copy waits for it (`landed`).
    fence: Option<std::sync::Arc<crate::gpu::Device>>,
}

// SAFETY: the raw pointers are this side's own buffer and registrations,
// used by the one thread that owns the side.
unsafe impl Send for Side {}

pub struct OfiSender(Side);
pub struct OfiReceiver(Side);

/// What a finished operation was.
enum Done {
    Message(usize),
    SignalIn,
    SignalOut,
}

impl Side {
    fn open(spec: &TransportSpec, setup: &mut Setup, buf: &Buffer, lib: Option<&str>) -> Result<Side> {
        let ofi = Ofi::open(lib)?;
        let (base, iface) = match buf.gpu_mem() {
            Some(m) => (m.ptr as *mut u8, Iface::Cuda(m.device.ordinal as i32)),
            None => (buf.host_slice().expect("host memory").as_ptr() as *mut u8, Iface::Host),
        };
        let mut ep = open_endpoint(ofi, spec, iface != Iface::Host, setup.ctrl.local_addr().ip())?;
        tracing::debug!(
            "libfabric {} ({}): provider {} chosen, fabric {}, domain {}",
            ofi.version,
            ofi.path,
            ep.chosen.provider,
            ep.chosen.fabric,
            ep.chosen.domain
        );
        if let Some(d) = buf.device() {
            d.bind()?;
        }
        let data = ep.register(base, buf.len().max(1), iface, DATA_KEY)?;
        let mut signals = Box::new([0u64; 2]);
        let signal_region = ep.register(signals.as_mut_ptr() as *mut u8, 16, Iface::Host, SIGNAL_KEY)?;
        tracing::debug!("libfabric memory registered: {} bytes ({iface:?}) and the signal words", buf.len());
        let virt = ep.virtual_addresses();
        setup.send(serde_json::json!({
            "libfabric": ofi.version,
            "provider": ep.chosen.provider,
            "name": hex(&ep.name()?),
            "base": if virt { base as u64 } else { 0 },
            "key": data.key,
        }))?;
        let theirs = setup.recv("waiting for the peer's libfabric endpoint")?;
        let bad = |what: &str| {
            Error::run(format!("protocol error: bad libfabric setup from the peer (no {what}): {theirs}"))
        };
        let their_provider = theirs["provider"].as_str().ok_or_else(|| bad("provider"))?;
        if their_provider != ep.chosen.provider {
            return Err(Error::run(format!(
                "the peer's libfabric chose provider {their_provider}, this side's {}: name one with --ofi-provider",
                ep.chosen.provider
            )));
        }
        let peer = ep.insert(&theirs["name"].as_str().and_then(unhex).ok_or_else(|| bad("name"))?)?;
        let remote_base = theirs["base"].as_u64().ok_or_else(|| bad("base"))?;
        let remote_key = theirs["key"].as_u64().ok_or_else(|| bad("key"))?;
        tracing::debug!("libfabric peer address inserted, its key {remote_key:#x}");
        let provider_name = ep.chosen.provider.clone();
        let mut info = TransportInfo::default();
        let c = &ep.chosen;
        for (k, v) in [
            ("ofi_library", ofi.path.clone()),
            ("ofi_version", ofi.version.clone()),
            ("peer_ofi_version", theirs["libfabric"].as_str().unwrap_or("?").to_string()),
            ("ofi_provider", c.provider.clone()),
            ("ofi_provider_version", c.provider_version.clone()),
            ("ofi_fabric", c.fabric.clone()),
            ("ofi_domain", c.domain.clone()),
            ("ofi_mr_mode", format!("{:#x}", c.mr_mode)),
            ("ofi_hmem", (iface != Iface::Host).to_string()),
            ("ofi_waits", if c.sleeps { "sleep" } else { "spin" }.to_string()),
        ] {
            info.details.insert(k.into(), v);
        }
        for (k, v) in std::env::vars().filter(|(k, _)| k.starts_with("FI_")) {
            info.details.insert(k, v);
        }
        let shm_file = ep.shm_file();
        let copies_itself = provider_is(&ep.chosen.provider, "shm") && iface != Iface::Host;
        Ok(Side {
            fence: buf.device().filter(|_| copies_itself).cloned(),
            peer_role: setup.ctrl.peer_role(),
            ep: std::mem::ManuallyDrop::new(ep),
            failed: false,
            // Past the peer's heartbeat timeout, a call still inside libfabric is stuck.
            watchdog: Watchdog::start(
                setup.ctrl.timeout() + Duration::from_secs(2),
                format!(
                    "provider {provider_name}, the {} at {}",
                    setup.ctrl.peer_role(),
                    setup.ctrl.peer_addr()
                ),
                shm_file.clone(),
            ),
            shm_file,
            op: spec.ofi_op,
            in_flight: spec.in_flight as usize,
            peer,
            base,
            data,
            remote_base,
            remote_key,
            signals,
            signal_region,
            contexts: Vec::new(),
            posted_at: Vec::new(),
            early: Vec::new(),
            info,
        })
    }

    fn context(&mut self, slot: usize) -> *mut c_void {
        &mut self.contexts[slot] as *mut sys::fi_context2 as *mut c_void
    }

    /// Which operation a finished context belongs to.
    fn which(&self, f: &Finished) -> Result<Done> {
        let first = self.contexts.as_ptr() as usize;
        let at = (f.context as usize).wrapping_sub(first) / std::mem::size_of::<sys::fi_context2>();
        match at {
            i if i + 2 < self.contexts.len() => Ok(Done::Message(i)),
            i if i + 2 == self.contexts.len() => Ok(Done::SignalIn),
            i if i + 1 == self.contexts.len() => Ok(Done::SignalOut),
            _ => Err(Error::run("libfabric: a completion for an operation kvxfer never posted")),
        }
    }

    /// Sizes the contexts for a round of `count` messages.
    fn begin(&mut self, count: usize) {
        // SAFETY: fi_context2 is scratch space for the provider; zero is fine.
        self.contexts.resize(count + 2, unsafe { std::mem::zeroed() });
        self.posted_at.clear();
        self.early.clear();
    }

    /// Posts a signal receive of `kind`, any request.
    fn signal_in(&mut self, kind: Tag, clock: &mut Clock, peer: &mut dyn PeerLink) -> Result<()> {
        let (buf, desc) = (self.signals.as_mut_ptr() as *mut u8, self.signal_region.desc);
        let ctx = self.context(self.contexts.len() - 2);
        self.post_now(clock, peer, &|ep| ep.trecv(buf, 8, desc, tag::make(kind, 0, 0), !tag::KIND, ctx))
    }

    /// Sends a signal and waits until it has left.
    fn send_signal(&mut self, t: Tag, clock: &mut Clock, peer: &mut dyn PeerLink) -> Result<()> {
        // SAFETY: the second of the two signal words.
        let (buf, desc) = (unsafe { (self.signals.as_mut_ptr() as *mut u8).add(8) }, self.signal_region.desc);
        let (ctx, to) = (self.context(self.contexts.len() - 1), self.peer);
        self.post_now(clock, peer, &|ep| ep.tsend(buf, 8, desc, to, t, ctx))?;
        self.wait(clock, peer, |d| matches!(d, Done::SignalOut)).map(drop)
    }

    /// Posts an operation, reading completions (which is what progresses
    /// the provider) while it says its queue is full.
    fn post_now(
        &mut self,
        clock: &mut Clock,
        peer: &mut dyn PeerLink,
        post: &dyn Fn(&Endpoint) -> Result<bool>,
    ) -> Result<()> {
        // A post can wait on the peer too (shm: on state it shares): under the watchdog.
        while !{
            let _inside = self.watchdog.enter();
            post(&self.ep)?
        } {
            let got = self.poll(clock, peer)?;
            self.early.extend(got);
        }
        Ok(())
    }

    /// One look at the completion queue (completions read earlier first);
    /// every few milliseconds also at the peer and the deadline.
    fn poll(&mut self, clock: &mut Clock, peer: &mut dyn PeerLink) -> Result<Vec<Finished>> {
        let mut got = std::mem::take(&mut self.early);
        // Spin a moment first (a completion is often microseconds away),
        // then sleep in the provider where it can (Chosen::sleeps).
        let quiet = clock.empty_since.is_some_and(|t| t.elapsed() >= SPIN_BEFORE_SLEEP);
        let sleep_ms = (quiet && got.is_empty()).then_some(1);
        if let Err(e) = self.ep.completions(&mut got, &self.watchdog, sleep_ms) {
            // A failed operation is often a peer that has gone: its control
            // connection says so a moment later, and names it.
            for _ in 0..20 {
                peer.watch()?;
                std::thread::sleep(Duration::from_millis(10));
            }
            return Err(e.context(format!("{} (the {} is still connected)", clock.what, self.peer_role)));
        }
        if got.is_empty() {
            clock.idle += 1;
            clock.empty_since.get_or_insert_with(Instant::now);
            if clock.idle.is_multiple_of(64) {
                std::thread::yield_now();
            }
        } else {
            clock.empty_since = None;
        }
        let now = Instant::now();
        if now >= clock.next_watch {
            clock.next_watch = now + WATCH_EVERY;
            peer.watch()?;
            if now >= clock.deadline {
                return Err(Error::run(format!("timed out {}", clock.what)));
            }
        }
        Ok(got)
    }

    /// Reads completions until one that `wanted` picks; keeps the others
    /// for later waits.
    fn wait(
        &mut self,
        clock: &mut Clock,
        peer: &mut dyn PeerLink,
        wanted: fn(&Done) -> bool,
    ) -> Result<Finished> {
        loop {
            let got = self.poll(clock, peer)?;
            let mut found = None;
            for f in got {
                match found.is_none() && wanted(&self.which(&f)?) {
                    true => found = Some(f),
                    false => self.early.push(f),
                }
            }
            if let Some(f) = found {
                return Ok(f);
            }
        }
    }

    /// Waits for the signal receive posted before; returns its tag.
    fn wait_signal(&mut self, clock: &mut Clock, peer: &mut dyn PeerLink) -> Result<Tag> {
        Ok(self.wait(clock, peer, |d| matches!(d, Done::SignalIn))?.tag)
    }

    /// Posts data operation `i`, descriptor `d`; false if the provider's
    /// queue is full for now.
    fn post(&mut self, i: usize, d: Descriptor, request: u64) -> Result<bool> {
        let (me, them) = match self.peer_role {
            crate::topology::Role::Receiver => (End::Sender, End::Receiver),
            crate::topology::Role::Sender => (End::Receiver, End::Sender),
        };
        let bytes = d.len;
        // SAFETY: the descriptor lies within the registered buffer (the layout's pool).
        let local = unsafe { self.base.add(d.offset(me)) };
        let (desc, peer, remote, key) =
            (self.data.desc, self.peer, self.remote_base + d.offset(them) as u64, self.remote_key);
        let ctx = self.context(i);
        let ep = &self.ep;
        let _inside = self.watchdog.enter();
        let posted = match self.op {
            OfiOp::Write => ep.write(local, bytes, desc, peer, remote, key, ctx),
            OfiOp::Read => ep.read(local, bytes, desc, peer, remote, key, ctx),
            OfiOp::Send if request == RECEIVE => {
                ep.trecv(local, bytes, desc, tag::make(tag::DATA, 0, 0), !tag::KIND, ctx)
            }
            OfiOp::Send => ep.tsend(local, bytes, desc, peer, tag::make(tag::DATA, request, i), ctx),
        }?;
        if posted {
            self.posted_at.push(Instant::now());
        }
        Ok(posted)
    }

    /// Posts one data operation per descriptor (receives, with `RECEIVE`),
    /// at most `in_flight` at once, until all have finished; each finished
    /// one goes to `arrived` with its latency. `go` is sent once the first
    /// are posted.
    #[allow(clippy::too_many_arguments)] // a round's state, each part used by some callers only
    fn move_all(
        &mut self,
        ops: &[Descriptor],
        request: u64,
        mut go: Option<Tag>,
        clock: &mut Clock,
        peer: &mut dyn PeerLink,
        ready: &dyn Ready,
        arrived: &mut dyn FnMut(usize, u64, &Finished) -> Result<()>,
    ) -> Result<()> {
        let (count, mut next, mut outstanding, mut finished) = (ops.len(), 0, 0, 0);
        while finished < count || go.is_some() {
            while next < count
                && outstanding < self.in_flight
                && ready.ready(ops[next].first + ops[next].count - 1)?
                && self.post(next, ops[next], request)?
            {
                (next, outstanding) = (next + 1, outstanding + 1);
            }
            if let Some(t) = go.take() {
                self.send_signal(t, clock, peer)?;
            }
            for f in self.poll(clock, peer)? {
                match self.which(&f)? {
                    Done::Message(i) => {
                        arrived(i, super::nanos(self.posted_at[i].elapsed()), &f)?;
                        (finished, outstanding) = (finished + 1, outstanding - 1);
                    }
                    _ => self.early.push(f),
                }
            }
        }
        Ok(())
    }

    /// The sender's round: write or send after the receiver's go, or serve
    /// the receiver's reads until it says done.
    fn send_round(
        &mut self,
        request: u64,
        ops: &[Descriptor],
        deadline: Instant,
        peer: &mut dyn PeerLink,
        ready: &dyn Ready,
    ) -> Result<()> {
        let count = ops.len();
        self.begin(count);
        let clock =
            &mut Clock::new(deadline, format!("sending {} over libfabric", crate::plan::Req(request)));
        if self.op == OfiOp::Read {
            if ready.computes() {
                // The decode side reads once told that prefill has ended.
                self.signal_in(tag::GO, clock, peer)?;
                let t = self.wait_signal(clock, peer)?;
                check_request(tag::request(t), request, "said go for")?;
                ready.go();
                let last = ops.last().map_or(0, |d| d.first + d.count - 1);
                while !ready.ready(last)? {
                    let got = self.poll(clock, peer)?;
                    self.early.extend(got);
                }
                self.send_signal(tag::make(tag::COMPUTED, request, 0), clock, peer)?;
            }
            self.signal_in(tag::DONE, clock, peer)?;
            let t = self.wait_signal(clock, peer)?;
            check_request(tag::request(t), request, "finished reading")?;
            // shm ran the reads' copies here, on this side's GPU.
            if self.fence.is_some() {
                self.landed(clock)?;
                self.send_signal(tag::make(tag::LANDED, request, count), clock, peer)?;
            }
            return Ok(());
        }
        self.signal_in(tag::GO, clock, peer)?;
        let t = self.wait_signal(clock, peer)?;
        check_request(tag::request(t), request, "said go for")?;
        ready.go();
        self.move_all(ops, request, None, clock, peer, ready, &mut |_, _, _| Ok(()))?;
        if self.op == OfiOp::Write {
            // Every write is complete at the target (or ordered before this).
            self.send_signal(tag::make(tag::DONE, request, count), clock, peer)?;
        }
        Ok(())
    }

    /// The receiver's round, one operation per descriptor; reports each
    /// message to `arrived` with its operation's latency.
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
        self.begin(count);
        let t0 = Instant::now();
        let clock =
            &mut Clock::new(deadline, format!("receiving {} over libfabric", crate::plan::Req(request)));
        if self.op == OfiOp::Read && peer.computes() {
            // Pull after prefill: go, then read once the sender says it has ended.
            self.signal_in(tag::COMPUTED, clock, peer)?;
            self.send_signal(tag::make(tag::GO, request, 0), clock, peer)?;
            let t = self.wait_signal(clock, peer)?;
            check_request(tag::request(t), request, "computed")?;
        }
        match self.op {
            OfiOp::Write => {
                self.signal_in(tag::DONE, clock, peer)?;
                self.send_signal(tag::make(tag::GO, request, 0), clock, peer)?;
                let t = self.wait_signal(clock, peer)?;
                check_request(tag::request(t), request, "wrote")?;
                if tag::index(t) != count {
                    return Err(Error::integrity(format!(
                        "the sender wrote {} operations of {request_named}, expected {count}",
                        tag::index(t),
                        request_named = crate::plan::Req(request)
                    )));
                }
                // shm ran the writes' copies here, on this side's GPU.
                self.landed(clock)?;
                // One-sided: the messages are known to be here only now.
                landed.set(Some(Instant::now()));
                let latency = super::nanos(t0.elapsed());
                (0..count).try_for_each(|i| arrived(i, latency))
            }
            OfiOp::Read if self.fence.is_some() => {
                // shm ran the copies in the sender's process: it says when they landed.
                self.move_all(ops, request, None, clock, peer, &AtOnce, &mut |_, _, _| Ok(()))?;
                self.signal_in(tag::LANDED, clock, peer)?;
                self.send_signal(tag::make(tag::DONE, request, count), clock, peer)?;
                let t = self.wait_signal(clock, peer)?;
                check_request(tag::request(t), request, "landed the reads of")?;
                landed.set(Some(Instant::now()));
                let latency = super::nanos(t0.elapsed());
                (0..count).try_for_each(|i| arrived(i, latency))
            }
            OfiOp::Read => {
                self.move_all(ops, request, None, clock, peer, &AtOnce, &mut |i, ns, _| arrived(i, ns))?;
                self.send_signal(tag::make(tag::DONE, request, count), clock, peer)
            }
            OfiOp::Send => {
                // Receives first, then the go. Messages from one sender
                // match receives in order: message i lands in receive i.
                let go = Some(tag::make(tag::GO, request, 0));
                let fenced = self.fence.is_some();
                self.move_all(ops, RECEIVE, go, clock, peer, &AtOnce, &mut |i, ns, f| {
                    if f.tag != tag::make(tag::DATA, request, i) || f.len != ops[i].len {
                        return Err(Error::integrity(format!(
                            "operation {i} of {count} of {request_named} ({} bytes): received {} operation {} ({} bytes)",
                            ops[i].len,
                            crate::plan::Req(tag::request(f.tag)),
                            tag::index(f.tag),
                            f.len,
                            request_named = crate::plan::Req(request)
                        )));
                    }
                    // Where shm's copies may still run, a message is here only once they have landed.
                    if fenced { Ok(()) } else { arrived(i, ns) }
                })?;
                if fenced {
                    self.landed(clock)?;
                    let latency = super::nanos(t0.elapsed());
                    (0..count).try_for_each(|i| arrived(i, latency))?;
                }
                Ok(())
            }
        }
    }

    /// shm runs the copies of GPU memory in the target's process: the
    /// receiver's for write and send, the sender's for read. A NIC's RDMA
    /// runs in no CUDA context.
    fn gpu_copier(&self) -> GpuCopier {
        use crate::topology::Role;
        self.fence.as_ref().map(|_| match self.op {
            OfiOp::Read => Role::Sender,
            OfiOp::Write | OfiOp::Send => Role::Receiver,
        })
    }

    /// Waits for the GPU copies libfabric started on this side, where it
    /// copies GPU memory itself (see `fence`).
    fn landed(&self, clock: &Clock) -> Result<()> {
        match &self.fence {
            Some(d) => d.fence(clock.deadline, &format!("the copies libfabric started while {}", clock.what)),
            None => Ok(()),
        }
    }

    /// Both sides exchange a hello, which opens the provider's connection
    /// before the first timed request.
    fn hello(&mut self, setup: &mut Setup, sender: bool) -> Result<()> {
        self.begin(0);
        let clock =
            &mut Clock::new(Instant::now() + setup.ctrl.timeout(), "opening the libfabric connection".into());
        let watch = &mut SetupWatch { setup, what: "opening the libfabric connection" };
        let hello = tag::make(tag::HELLO, 0, 0);
        self.signal_in(tag::HELLO, clock, watch)?;
        if sender {
            self.send_signal(hello, clock, watch)?;
            self.wait_signal(clock, watch).map(drop)
        } else {
            self.wait_signal(clock, watch)?;
            self.send_signal(hello, clock, watch)
        }
    }

    fn describe(&mut self, spec: &TransportSpec, drives: bool, hmem: bool, setup: Duration) -> Result<()> {
        let c = &self.ep.chosen;
        let ofi = self.ep.ofi;
        let role = if drives { "posts the operations" } else { "serves the peer's operations" };
        self.info.summary = format!(
            "ofi libfabric {} ({}): provider {} {}, fabric {}, domain {}, {}, {} in flight, this side {role}, {waits}, ready in {:.1} ms",
            ofi.version,
            ofi.path,
            c.provider,
            c.provider_version,
            c.fabric,
            c.domain,
            self.op,
            self.in_flight,
            setup.as_secs_f64() * 1e3,
            waits = match c.sleeps {
                true => "waits sleep in the completion queue after 50 us",
                false => "waits spin on the completion queue",
            }
        );
        let op = match self.op {
            OfiOp::Write if c.delivery_complete => "RMA write (fi_writemsg, FI_DELIVERY_COMPLETE)",
            OfiOp::Write => {
                "RMA write (fi_writemsg; the done message is ordered after the writes, FI_ORDER_SAW)"
            }
            OfiOp::Read => "RMA read (fi_read)",
            OfiOp::Send => "tagged send (fi_tsend/fi_trecv)",
        };
        let wire = rdma(&c.provider);
        let memory = match (hmem, c.provider.split(';').next() == Some("shm")) {
            (false, _) => "host memory",
            // What shm's protocol selection does with such memory (smr_select_proto).
            (true, true) => {
                "GPU memory through FI_HMEM (CUDA), registered device-only: shm moves it by CUDA IPC where \
                 libfabric enables CUDA IPC (one GPU, or all GPUs peers), else through host bounce buffers; \
                 shm's completions come before its GPU copies end (cudaMemcpy between device buffers returns \
                 early), so the side that ran them waits for them before a request counts as moved"
            }
            (true, false) => "GPU memory through FI_HMEM (CUDA), registered device-only",
        };
        self.info.path = Some(format!("{op} by {}: {wire}; {memory}", c.provider));
        if let Some(want) = &spec.require_provider {
            if !provider_is(&c.provider, want) {
                // Found while running, as --require-transport's: exit 1, not bad input's 2.
                return Err(Error::run(format!(
                    "--require-provider {want}: libfabric chose provider {} ({})",
                    c.provider, c.fabric
                )));
            }
        }
        Ok(())
    }

    fn start(
        spec: &TransportSpec,
        mut setup: Setup,
        buf: &Buffer,
        lib: Option<&str>,
        sender: bool,
    ) -> Result<Side> {
        let began = Instant::now();
        let mut side = Side::open(spec, &mut setup, buf, lib)?;
        side.hello(&mut setup, sender)?;
        let drives = sender != (spec.ofi_op == OfiOp::Read);
        side.describe(spec, drives, buf.gpu_mem().is_some(), began.elapsed())?;
        Ok(side)
    }
}

impl Drop for Side {
    fn drop(&mut self) {
        tracing::debug!(
            "teardown: libfabric endpoint {}",
            if self.failed { "left to the exit (a failed run)" } else { "closed" }
        );
        match self.failed {
            // SAFETY: dropped once, here, and never used after.
            false => unsafe { std::mem::ManuallyDrop::drop(&mut self.ep) },
            true => fabric::remove_shm_file(self.shm_file.as_ref()),
        }
    }
}

/// Marks the side failed when a round fails (see `Side::ep`).
fn noting_failure<T>(side: &mut Side, result: Result<T>) -> Result<T> {
    side.failed |= result.is_err();
    result
}

/// `post`'s request id for a receive.
const RECEIVE: u64 = u64::MAX;

/// A wait's deadline, what it waits for, and when to look at the peer next.
struct Clock {
    deadline: Instant,
    what: String,
    next_watch: Instant,
    /// Polls that found nothing.
    idle: u64,
    /// Since when polls have found nothing.
    empty_since: Option<Instant>,
}

impl Clock {
    fn new(deadline: Instant, what: String) -> Clock {
        Clock { deadline, what, next_watch: Instant::now() + WATCH_EVERY, idle: 0, empty_since: None }
    }
}

/// Whether the provider moves data with hardware RDMA, in words.
fn rdma(provider: &str) -> &'static str {
    let has = |p: &str| provider.split(';').any(|x| x == p);
    if has("efa") || has("verbs") || has("cxi") || has("psm3") || has("opx") {
        "hardware RDMA"
    } else if has("shm") {
        "no RDMA: shared memory between processes of one host"
    } else if fabric::over_sockets(provider) {
        "no RDMA: carried over sockets"
    } else {
        "RDMA unknown for this provider"
    }
}

/// "tcp" is "tcp;ofi_rxm", as is "tcp;ofi_rxm" itself.
fn provider_is(chosen: &str, want: &str) -> bool {
    chosen.eq_ignore_ascii_case(want) || chosen.split(';').any(|p| p.eq_ignore_ascii_case(want))
}

/// The endpoint, with writes that complete at the target where the provider
/// offers it, else with sends ordered after writes; a provider with neither
/// cannot tell the receiver when written data is there.
fn open_endpoint(
    ofi: &'static Ofi,
    spec: &TransportSpec,
    hmem: bool,
    source: std::net::IpAddr,
) -> Result<Endpoint> {
    let want = |delivery_complete, send_after_write| Wanted {
        provider: spec.ofi_provider.as_deref(),
        rma: spec.ofi_op != OfiOp::Send,
        hmem,
        delivery_complete,
        send_after_write,
        source: Some(source),
    };
    if spec.ofi_op != OfiOp::Write {
        return Endpoint::open(ofi, &want(false, false));
    }
    Endpoint::open(ofi, &want(true, false))
        .or_else(|_| Endpoint::open(ofi, &want(false, true)))
        .or_else(|_| {
            // Say which: no such provider at all, or one that cannot do this.
            let plain = Endpoint::open(ofi, &want(false, false))?;
            Err(Error::run(format!(
                "provider {} offers neither FI_DELIVERY_COMPLETE nor FI_ORDER_SAW: it cannot say when written data \
                 has arrived; use --ofi-op read or send",
                plain.chosen.provider
            )))
        })
}

impl OfiSender {
    pub fn connect(spec: &TransportSpec, setup: Setup, buf: &Buffer, lib: Option<&str>) -> Result<Self> {
        Side::start(spec, setup, buf, lib, true).map(OfiSender)
    }
}

impl OfiReceiver {
    pub fn accept(spec: &TransportSpec, setup: Setup, buf: &Buffer, lib: Option<&str>) -> Result<Self> {
        Side::start(spec, setup, buf, lib, false).map(OfiReceiver)
    }
}

impl SendSide for OfiSender {
    fn info(&self) -> TransportInfo {
        self.0.info.clone()
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
        let ops = layout.descriptors();
        let result = self.0.send_round(request, &ops, deadline, peer, ready);
        noting_failure(&mut self.0, result)
    }
}

impl RecvSide for OfiReceiver {
    fn info(&self) -> TransportInfo {
        self.0.info.clone()
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
        let ops = layout.descriptors();
        let side = &mut self.0;
        super::host_timed_round(buf, layout, done, |arrived, landed| {
            let result = side.recv_round(request, &ops, deadline, peer, arrived, landed);
            noting_failure(side, result)
        })
    }
}

/// Fails early, with the library named, where libfabric cannot be loaded.
pub fn check_library(lib: Option<&str>) -> Result<()> {
    Ofi::open(lib).map(drop)
}

/// The providers of reliable tagged endpoints (`kvxfer doctor`), each with
/// whether it offers RMA (write, read) and GPU memory (FI_HMEM), asked
/// with the hints a run uses.
pub fn providers(lib: Option<&str>) -> Result<Vec<(String, bool, bool)>> {
    let ofi = Ofi::open(lib)?;
    let want = |rma, hmem| fabric::Wanted {
        provider: None,
        rma,
        hmem,
        delivery_complete: false,
        send_after_write: false,
        source: None,
    };
    let (rma, hmem) = (
        fabric::Endpoint::offered(ofi, &want(true, false)),
        fabric::Endpoint::offered(ofi, &want(false, true)),
    );
    let all = fabric::Endpoint::offered(ofi, &want(false, false));
    Ok(all.into_iter().map(|p| (p.clone(), rma.contains(&p), hmem.contains(&p))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn providers_are_named_by_any_of_their_layers() {
        assert!(provider_is("tcp;ofi_rxm", "tcp") && provider_is("tcp;ofi_rxm", "TCP;ofi_rxm"));
        assert!(!provider_is("tcp;ofi_rxm", "efa") && !provider_is("shm", "sh"));
        assert_eq!(rdma("efa"), "hardware RDMA");
        assert!(rdma("tcp;ofi_rxm").contains("over sockets") && rdma("shm").contains("shared memory"));
    }
}
