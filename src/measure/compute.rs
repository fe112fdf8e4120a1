//! The sender's emulated prefill, layer after layer, and the readiness of a
//! request's messages that follows from it (see plan::prefill).
//!
//! On host memory a layer is a timed busy wait on a worker thread of the
//! sender: one core kept busy, as a prefill keeps its GPU. Each layer ends
//! at the start plus the asked times so far, so short layers do not drift.

use crate::error::{Error, Result};
use crate::memory::Buffer;
use crate::plan::prefill::layer_of;
use crate::plan::{Overlap, RequestLayout};
use crate::session::Control;
use crate::transport::Ready;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Nanoseconds of CLOCK_MONOTONIC: the same clock for every process of a
/// host, so two sides on one host compare their instants directly.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec to write.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A request's layers, computed one after another.
pub trait Compute: Send + Sync {
    /// Starts computing layers of `layer_ns` each, now.
    fn start(&self, layer_ns: &[u64]);
    /// Layers finished so far, the first ones.
    fn finished(&self) -> Result<usize>;
    /// Waits until `layers` are finished or `until` passes; returns the
    /// layers finished. This one spins: a compute that can wake a waiter
    /// (the host's) blocks instead, leaving the core to the other side.
    fn wait_finished(&self, layers: usize, until: Instant) -> Result<usize> {
        loop {
            let done = self.finished()?;
            if done >= layers || Instant::now() >= until {
                return Ok(done);
            }
            std::hint::spin_loop();
        }
    }
    /// When the last started run began and ended (CLOCK_MONOTONIC ns),
    /// known once every layer counts as finished.
    fn span(&self) -> Option<(u64, u64)>;
    /// What computes, for the report.
    fn describe(&self) -> String;
}

/// Layers as timed busy waits on a worker thread.
pub struct HostCompute {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    job: Mutex<Option<Vec<u64>>>,
    wake: Condvar,
    /// Told after each layer, under `job`'s lock.
    layer_done: Condvar,
    finished: AtomicUsize,
    began: AtomicU64,
    ended: AtomicU64,
    quit: AtomicBool,
}

impl HostCompute {
    pub fn new() -> HostCompute {
        let shared = Arc::new(Shared::default());
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("kvxfer-prefill".into())
            .spawn(move || worker.serve())
            .expect("a thread for the emulated prefill");
        HostCompute { shared }
    }
}

impl Default for HostCompute {
    fn default() -> Self {
        Self::new()
    }
}

impl Shared {
    fn serve(&self) {
        loop {
            let layers = {
                let mut job = self.job.lock().unwrap_or_else(|e| e.into_inner());
                while job.is_none() && !self.quit.load(SeqCst) {
                    job = self.wake.wait(job).unwrap_or_else(|e| e.into_inner());
                }
                match job.take() {
                    Some(layers) => layers,
                    None => return,
                }
            };
            let start = Instant::now();
            let mut end = start;
            for (l, ns) in layers.iter().enumerate() {
                end += Duration::from_nanos(*ns);
                while Instant::now() < end {
                    std::hint::spin_loop();
                }
                if l + 1 == layers.len() {
                    // Before the count, so that a finished run has its span.
                    self.ended.store(mono_ns(), SeqCst);
                }
                let _held = self.job.lock().unwrap_or_else(|e| e.into_inner());
                self.finished.fetch_add(1, SeqCst);
                self.layer_done.notify_all();
            }
        }
    }
}

impl Compute for HostCompute {
    fn start(&self, layer_ns: &[u64]) {
        self.shared.finished.store(0, SeqCst);
        self.shared.ended.store(0, SeqCst);
        self.shared.began.store(mono_ns(), SeqCst);
        *self.shared.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(layer_ns.to_vec());
        self.shared.wake.notify_one();
    }

    fn finished(&self) -> Result<usize> {
        Ok(self.shared.finished.load(SeqCst))
    }

    fn wait_finished(&self, layers: usize, until: Instant) -> Result<usize> {
        let mut held = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let done = self.shared.finished.load(SeqCst);
            let now = Instant::now();
            if done >= layers || now >= until {
                return Ok(done);
            }
            held =
                self.shared.layer_done.wait_timeout(held, until - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn span(&self) -> Option<(u64, u64)> {
        let ended = self.shared.ended.load(SeqCst);
        (ended != 0).then(|| (self.shared.began.load(SeqCst), ended))
    }

    fn describe(&self) -> String {
        "a timed busy wait on a thread of the sender, layer after layer".into()
    }
}

impl Drop for HostCompute {
    fn drop(&mut self) {
        self.shared.quit.store(true, SeqCst);
        self.shared.wake.notify_one();
    }
}

/// The compute for the sender's buffer: a busy wait for host memory.
pub fn for_buffer(buf: &Buffer) -> Result<Box<dyn Compute>> {
    match buf.gpu_mem() {
        Some(_) => Err(Error::usage("emulated prefill on GPU memory is not built yet")),
        None => Ok(Box::new(HostCompute::new())),
    }
}

/// The longest single wait on the compute, between looks at the deadline.
const WAIT_SLICE: Duration = Duration::from_millis(10);

/// Runs of the compute alone before a point's computing requests.
const ALONE_RUNS: usize = 3;

/// Times the compute alone, `ALONE_RUNS` times, answering the peer meanwhile.
pub fn alone(compute: &dyn Compute, layer_ns: &[u64], ctrl: &mut Control) -> Result<Vec<u64>> {
    let asked: u64 = layer_ns.iter().sum();
    let mut runs = Vec::with_capacity(ALONE_RUNS);
    for _ in 0..ALONE_RUNS {
        let deadline =
            Instant::now() + Duration::from_nanos(asked.saturating_mul(3)) + Duration::from_secs(1);
        compute.start(layer_ns);
        let span = loop {
            if compute.wait_finished(layer_ns.len(), Instant::now() + WAIT_SLICE)? == layer_ns.len() {
                if let Some(span) = compute.span() {
                    break span;
                }
            }
            ctrl.watch("timing the emulated prefill alone")?;
            if Instant::now() > deadline {
                return Err(Error::run("the emulated prefill, alone, outlasted three times its asked time"));
            }
        };
        runs.push(span.1 - span.0);
    }
    Ok(runs)
}

/// One request's readiness: the transport may move message i once the
/// layer it needs has been computed (or, without overlap, all of them).
pub struct Computing<'a> {
    pub compute: &'a dyn Compute,
    pub layout: &'a RequestLayout,
    pub layer_ns: &'a [u64],
    pub overlap: Overlap,
    started: AtomicBool,
}

impl<'a> Computing<'a> {
    pub fn new(
        compute: &'a dyn Compute,
        layout: &'a RequestLayout,
        layer_ns: &'a [u64],
        overlap: Overlap,
    ) -> Self {
        Computing { compute, layout, layer_ns, overlap, started: AtomicBool::new(false) }
    }

    /// What the compute may take beyond the transfer: three times the
    /// asked time (a GPU kernel slows under a transfer), and a second.
    pub fn allowance(&self) -> Duration {
        Duration::from_nanos(self.layer_ns.iter().sum::<u64>().saturating_mul(3)) + Duration::from_secs(1)
    }

    /// Waits, never past `deadline`, until `layers` layers are computed.
    fn wait_layers(&self, layers: usize, deadline: Instant) -> Result<()> {
        while self.compute.wait_finished(layers, (Instant::now() + WAIT_SLICE).min(deadline))? < layers {
            if Instant::now() >= deadline {
                return Err(Error::run(format!(
                    "the emulated prefill did not finish layer {} before the deadline",
                    layers - 1
                )));
            }
        }
        Ok(())
    }

    /// Layers computed before message `message` may move.
    fn layers_for(&self, message: usize) -> usize {
        match self.overlap {
            Overlap::Layer => layer_of(self.layout, message) + 1,
            Overlap::None => self.layer_ns.len(),
        }
    }

    /// Waits for the whole prefill; returns its (begin, end).
    pub fn finish(&self, deadline: Instant) -> Result<(u64, u64)> {
        self.go();
        self.wait_layers(self.layer_ns.len(), deadline)?;
        self.compute.span().ok_or_else(|| Error::run("internal error: a finished prefill without its span"))
    }
}

impl Ready for Computing<'_> {
    fn computes(&self) -> bool {
        true
    }

    fn go(&self) {
        if !self.started.swap(true, SeqCst) {
            self.compute.start(self.layer_ns);
        }
    }

    fn ready(&self, message: usize) -> Result<bool> {
        Ok(self.compute.finished()? >= self.layers_for(message))
    }

    fn wait(&self, message: usize, deadline: Instant) -> Result<()> {
        self.wait_layers(self.layers_for(message), deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{presets, KvShape};
    use crate::plan::Granularity;

    #[test]
    fn layers_end_on_time_and_messages_wait_for_theirs() {
        let shape = KvShape::new(presets::lookup("llama-3.1-8b").unwrap(), 1, 16).unwrap();
        let layout = RequestLayout::new(&shape, 64, Granularity::Layer);
        let compute = HostCompute::new();
        let layer_ns = vec![2_000_000u64; 32]; // 64 ms in all
        let ready = Computing::new(&compute, &layout, &layer_ns, Overlap::Layer);
        let t0 = Instant::now();
        ready.go();
        ready.wait(0, t0 + Duration::from_secs(5)).unwrap();
        let first = t0.elapsed();
        ready.wait(31, t0 + Duration::from_secs(5)).unwrap();
        let all = t0.elapsed();
        assert!(first >= Duration::from_millis(2) && first < Duration::from_millis(30), "{first:?}");
        assert!(all >= Duration::from_millis(64) && all < Duration::from_millis(120), "{all:?}");
        let (began, ended) = ready.finish(t0 + Duration::from_secs(5)).unwrap();
        assert!(ended - began >= 64_000_000, "{}", ended - began);
        // Without overlap, the first message waits for every layer.
        let ready = Computing::new(&compute, &layout, &layer_ns, Overlap::None);
        let t0 = Instant::now();
        ready.go();
        ready.wait(0, t0 + Duration::from_secs(5)).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(64), "{:?}", t0.elapsed());
        // A deadline ends a wait.
        let ready = Computing::new(&compute, &layout, &layer_ns, Overlap::None);
        ready.go();
        let e = ready.wait(31, Instant::now() + Duration::from_millis(5)).unwrap_err();
        assert!(e.message.contains("did not finish layer 31"), "{e}");
    }
}
