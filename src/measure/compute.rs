//! The sender's emulated prefill, layer after layer, and the readiness of a
//! request's messages that follows from it (see plan::prefill).
//!
//! On GPU memory a layer is a launch of a calibrated kernel on every
//! multiprocessor (gpu::prefill); on host memory, a timed busy wait. Either
//! runs on a worker thread of the sender.

use crate::error::{Error, Result};
use crate::gpu::prefill::PrefillKernel;
use crate::memory::Buffer;
use crate::plan::prefill::layer_of;
use crate::plan::{Overlap, Plan, Point, RequestLayout};
use crate::session::Control;
use crate::transport::Ready;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::OnceLock;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::clock::mono_ns;

/// One request's run of layers, as the compute numbers them.
pub type Job = u64;

/// A prefill instance's compute: requests' layers, one request after
/// another in the order they were started (a prefill GPU computes one
/// request at a time; a request started while another computes waits).
pub trait Compute: Send + Sync {
    /// Queues a request's layers of `layer_ns` each; they start now, or
    /// once the runs started before them have ended.
    fn start(&self, layer_ns: &[u64]) -> Job;
    /// Layers of `job` finished so far, the first ones.
    fn finished(&self, job: Job) -> Result<usize>;
    /// Waits until `layers` of `job` are finished or `until` passes;
    /// returns the layers finished.
    fn wait_finished(&self, job: Job, layers: usize, until: Instant) -> Result<usize>;
    /// When `job` began and ended (CLOCK_MONOTONIC ns), known once every
    /// layer counts as finished.
    fn span(&self, job: Job) -> Option<(u64, u64)>;
    /// The job's figures are read: the compute forgets it.
    fn forget(&self, job: Job);
    /// After a run alone of `layer_ns`: see `Layers::retune`.
    fn retune(&self, _layer_ns: &[u64], _took_ns: u64) -> bool {
        false
    }
    /// What computes, for the report.
    fn describe(&self) -> String;
}

/// What runs a request's layers, on the worker thread of a `LayerWorker`.
pub trait Layers: Send {
    /// Runs `layer_ns`' layers one after another, calling `layer_done` as
    /// each ends, in order, with the run's (begin, end) in CLOCK_MONOTONIC
    /// ns on the last. Returns early once `quit` is set.
    fn run(
        &mut self,
        layer_ns: &[u64],
        quit: &AtomicBool,
        layer_done: &mut dyn FnMut(Option<(u64, u64)>),
    ) -> Result<()>;
    /// Told that a run alone of `layer_ns` took `took_ns`; adjusts itself
    /// for layers of that length and says whether another run alone should
    /// check the adjustment.
    fn retune(&mut self, _layer_ns: &[u64], _took_ns: u64) -> bool {
        false
    }
    /// Whether the layers keep a core of the sender busy: then a waiter
    /// sleeps until woken, leaving the other cores to the transfer; else it
    /// spins, and sees a layer end without a thread wake-up's delay.
    fn uses_a_core(&self) -> bool;
    fn describe(&self) -> String;
}

/// The GPU's layers: a calibrated kernel (gpu::prefill), which keeps no
/// core busy.
impl Layers for PrefillKernel {
    fn run(
        &mut self,
        layer_ns: &[u64],
        quit: &AtomicBool,
        layer_done: &mut dyn FnMut(Option<(u64, u64)>),
    ) -> Result<()> {
        self.run_layers(layer_ns, quit, layer_done)
    }

    fn retune(&mut self, layer_ns: &[u64], took_ns: u64) -> bool {
        PrefillKernel::retune(self, layer_ns, took_ns)
    }

    fn uses_a_core(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        PrefillKernel::describe(self)
    }
}

/// Layers as timed busy waits: one core kept busy, as a prefill keeps its
/// GPU. Each layer ends at the start plus the asked times so far, so short
/// layers do not drift.
pub struct BusyWait;

impl Layers for BusyWait {
    fn run(
        &mut self,
        layer_ns: &[u64],
        quit: &AtomicBool,
        layer_done: &mut dyn FnMut(Option<(u64, u64)>),
    ) -> Result<()> {
        let (began, start) = (mono_ns(), Instant::now());
        let mut end = start;
        for (l, ns) in layer_ns.iter().enumerate() {
            end += Duration::from_nanos(*ns);
            while Instant::now() < end {
                if quit.load(SeqCst) {
                    return Ok(());
                }
                std::hint::spin_loop();
            }
            layer_done((l + 1 == layer_ns.len()).then(|| (began, mono_ns())));
        }
        Ok(())
    }

    fn uses_a_core(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        "a timed busy wait on a thread of the sender, layer after layer".into()
    }
}

/// A `Compute` whose layers run on a worker thread, so the sending threads
/// stay free to move what they have made.
pub struct LayerWorker {
    shared: Arc<Shared>,
}

/// What the worker and the requests' threads share, under one lock.
#[derive(Default)]
struct Jobs {
    next: Job,
    /// Started and not yet begun, in order.
    queue: VecDeque<(Job, Vec<u64>)>,
    /// Every job not forgotten: its layers finished, span and failure.
    progress: HashMap<Job, Progress>,
}

#[derive(Default)]
struct Progress {
    finished: usize,
    span: Option<(u64, u64)>,
    failed: Option<Error>,
}

struct Shared {
    jobs: Mutex<Jobs>,
    /// Told when a job is queued, and on quitting.
    wake: Condvar,
    /// Told after each layer, and when a run fails.
    layer_done: Condvar,
    quit: AtomicBool,
    /// Waiters sleep (the layers use a core) or spin.
    sleep: bool,
    layers: Mutex<Box<dyn Layers>>,
}

impl LayerWorker {
    pub fn new(layers: Box<dyn Layers>) -> LayerWorker {
        let shared = Arc::new(Shared {
            sleep: layers.uses_a_core(),
            jobs: Mutex::new(Jobs::default()),
            wake: Condvar::new(),
            layer_done: Condvar::new(),
            quit: AtomicBool::new(false),
            layers: Mutex::new(layers),
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("kvxfer-prefill".into())
            .spawn(move || worker.serve())
            .expect("a thread for the emulated prefill");
        LayerWorker { shared }
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn serve(&self) {
        loop {
            let (job, layer_ns) = {
                let mut jobs = lock(&self.jobs);
                while jobs.queue.is_empty() && !self.quit.load(SeqCst) {
                    jobs = self.wake.wait(jobs).unwrap_or_else(|e| e.into_inner());
                }
                match jobs.queue.pop_front() {
                    Some(next) if !self.quit.load(SeqCst) => next,
                    _ => return,
                }
            };
            let mut layers = lock(&self.layers);
            let run = layers.run(&layer_ns, &self.quit, &mut |span| {
                let mut jobs = lock(&self.jobs);
                if let Some(p) = jobs.progress.get_mut(&job) {
                    // With the count, so that a finished run has its span.
                    p.span = span.or(p.span);
                    p.finished += 1;
                }
                self.layer_done.notify_all();
            });
            if let Err(e) = run {
                if let Some(p) = lock(&self.jobs).progress.get_mut(&job) {
                    p.failed = Some(e);
                }
                self.layer_done.notify_all();
            }
        }
    }

    /// Layers of `job` finished, or what stopped it.
    fn finished(jobs: &Jobs, job: Job) -> Result<usize> {
        match jobs.progress.get(&job) {
            Some(Progress { failed: Some(e), .. }) => {
                Err(Error::run(format!("the emulated prefill failed: {}", e.message)))
            }
            Some(p) => Ok(p.finished),
            None => Err(Error::run("internal error: a prefill job read after it was forgotten")),
        }
    }
}

impl Compute for LayerWorker {
    fn start(&self, layer_ns: &[u64]) -> Job {
        let mut jobs = lock(&self.shared.jobs);
        let job = jobs.next;
        jobs.next += 1;
        jobs.progress.insert(job, Progress::default());
        jobs.queue.push_back((job, layer_ns.to_vec()));
        self.shared.wake.notify_one();
        job
    }

    fn finished(&self, job: Job) -> Result<usize> {
        Shared::finished(&lock(&self.shared.jobs), job)
    }

    fn wait_finished(&self, job: Job, layers: usize, until: Instant) -> Result<usize> {
        if !self.shared.sleep {
            loop {
                let done = self.finished(job)?;
                if done >= layers || Instant::now() >= until {
                    return Ok(done);
                }
                std::hint::spin_loop();
            }
        }
        let mut jobs = lock(&self.shared.jobs);
        loop {
            let done = Shared::finished(&jobs, job)?;
            let now = Instant::now();
            if done >= layers || now >= until {
                return Ok(done);
            }
            jobs =
                self.shared.layer_done.wait_timeout(jobs, until - now).unwrap_or_else(|e| e.into_inner()).0;
        }
    }

    fn span(&self, job: Job) -> Option<(u64, u64)> {
        lock(&self.shared.jobs).progress.get(&job).and_then(|p| p.span)
    }

    fn forget(&self, job: Job) {
        lock(&self.shared.jobs).progress.remove(&job);
    }

    fn retune(&self, layer_ns: &[u64], took_ns: u64) -> bool {
        lock(&self.shared.layers).retune(layer_ns, took_ns)
    }

    fn describe(&self) -> String {
        lock(&self.shared.layers).describe()
    }
}

impl Drop for LayerWorker {
    fn drop(&mut self) {
        self.shared.quit.store(true, SeqCst);
        let _held = lock(&self.shared.jobs);
        self.shared.wake.notify_one();
    }
}

/// The compute for the sender's buffer: a calibrated kernel on the GPU
/// that holds GPU memory, a busy wait for host and pinned memory.
pub fn for_buffer(buf: &Buffer) -> Result<Box<dyn Compute>> {
    match buf.gpu_mem() {
        Some(mem) => Ok(Box::new(LayerWorker::new(Box::new(PrefillKernel::load(&mem.device)?)))),
        None => Ok(Box::new(LayerWorker::new(Box::new(BusyWait)))),
    }
}

/// The longest single wait on the compute, between looks at the deadline.
const WAIT_SLICE: Duration = Duration::from_millis(10);

/// Runs of the compute alone before a point's computing requests.
const ALONE_RUNS: usize = 3;

/// Runs alone that may go to tuning the compute, before those timed.
const TUNING_RUNS: usize = 4;

/// The most runs alone a point makes, for the peer's wait: the tuning,
/// the timed runs, and those again once if they drifted.
pub const MOST_RUNS_ALONE: usize = TUNING_RUNS + 2 * ALONE_RUNS;

/// How far the timed runs' median may stray from the asked time before the
/// compute is tuned on it and timed again.
const MOST_DRIFT: f64 = 0.02;

/// Times the compute alone, `ALONE_RUNS` times, answering the peer
/// meanwhile. First single runs tune it on these layers until one lands
/// within 1% (the GPU kernel's length depends on clocks); if the timed runs'
/// median then strays past `MOST_DRIFT` (clocks that rose after an idle
/// spell), it is tuned on that median and timed once more.
pub fn alone(compute: &dyn Compute, layer_ns: &[u64], ctrl: &mut Control) -> Result<Vec<u64>> {
    let asked: u64 = layer_ns.iter().sum();
    let once = |ctrl: &mut Control| -> Result<u64> {
        let deadline =
            Instant::now() + Duration::from_nanos(asked.saturating_mul(3)) + Duration::from_secs(1);
        let job = compute.start(layer_ns);
        let took = loop {
            if compute.wait_finished(job, layer_ns.len(), Instant::now() + WAIT_SLICE)? == layer_ns.len() {
                if let Some(span) = compute.span(job) {
                    break Ok(span.1 - span.0);
                }
            }
            if let Err(e) = ctrl.watch("timing the emulated prefill alone") {
                break Err(e);
            }
            if Instant::now() > deadline {
                break Err(Error::run("the emulated prefill, alone, outlasted three times its asked time"));
            }
        };
        compute.forget(job);
        took
    };
    for _ in 0..TUNING_RUNS {
        if !compute.retune(layer_ns, once(ctrl)?) {
            break;
        }
    }
    let mut retimed = false;
    loop {
        let runs = (0..ALONE_RUNS).map(|_| once(ctrl)).collect::<Result<Vec<u64>>>()?;
        match drifted(&runs, asked) {
            Some(median) if !retimed && compute.retune(layer_ns, median) => retimed = true,
            _ => return Ok(runs),
        }
    }
}

/// A point's compute alone: the longest prompt's runs, timed and returned;
/// then each shorter length of a mix tunes the compute on its own layers (a
/// GPU kernel's tuning holds for layers of one length; a shorter length's
/// starts from the longest's).
pub fn alone_for_point(
    compute: &dyn Compute,
    plan: &Plan,
    point: &Point,
    ctrl: &mut Control,
) -> Result<Vec<u64>> {
    let longest = point.prefill_ns.as_deref().unwrap_or_default();
    let mut others: Vec<Vec<u64>> = match (&plan.prefill, &point.load) {
        (Some(p), Some(l)) => {
            l.layouts.iter().filter_map(|x| p.layer_ns(&plan.shape, x.tokens).ok()).collect()
        }
        _ => Vec::new(),
    };
    others.retain(|l| l.as_slice() != longest);
    others.dedup();
    let runs = alone(compute, longest, ctrl)?;
    for layer_ns in others.iter().rev() {
        alone(compute, layer_ns, ctrl)?;
    }
    Ok(runs)
}

/// The runs' median where it strays from `asked` by more than `MOST_DRIFT`.
fn drifted(runs: &[u64], asked: u64) -> Option<u64> {
    let mut sorted = runs.to_vec();
    sorted.sort_unstable();
    let median = *sorted.get(sorted.len() / 2)?;
    ((median as f64 / asked as f64 - 1.0).abs() > MOST_DRIFT).then_some(median)
}

/// One prefill instance (or rank) that feeds several receivers: one
/// compute for all its pairs, each request computed once for the pairs
/// that carry a share of it (P x D), its compute alone timed once a point.
pub struct SharedCompute {
    compute: OnceLock<Arc<dyn Compute>>,
    /// Pairs that carry a share of each request (P x D), else 1.
    shares: usize,
    /// By request key: its job and the shares done with it.
    jobs: Mutex<HashMap<u64, (Job, usize)>>,
    /// By point: its runs alone, once timed (None while being timed).
    alone: Mutex<HashMap<usize, Option<Vec<u64>>>>,
    timed: Condvar,
}

impl SharedCompute {
    pub fn new(shares: usize) -> Self {
        SharedCompute {
            compute: OnceLock::new(),
            shares,
            jobs: Mutex::new(HashMap::new()),
            alone: Mutex::new(HashMap::new()),
            timed: Condvar::new(),
        }
    }

    /// The instance's compute; the first pair makes it for its buffer.
    pub fn compute(&self, buf: &Buffer) -> Result<Arc<dyn Compute>> {
        if let Some(c) = self.compute.get() {
            return Ok(c.clone());
        }
        let made: Arc<dyn Compute> = Arc::from(for_buffer(buf)?);
        Ok(self.compute.get_or_init(|| made).clone())
    }

    /// Request `key`'s job: started by the first share to go.
    fn job(&self, key: u64, start: impl FnOnce() -> Job) -> Job {
        lock(&self.jobs).entry(key).or_insert_with(|| (start(), 0)).0
    }

    /// A share is done with request `key`: the last forgets its job.
    fn release(&self, key: u64, compute: &dyn Compute) {
        let mut jobs = lock(&self.jobs);
        let Some(entry) = jobs.get_mut(&key) else { return };
        entry.1 += 1;
        if entry.1 >= self.shares {
            compute.forget(entry.0);
            jobs.remove(&key);
        }
    }

    /// Point `p`'s runs alone: the first pair times them (`time`), the
    /// others wait for its runs, answering their peers meanwhile.
    pub fn alone(
        &self,
        p: usize,
        ctrl: &mut Control,
        time: impl FnOnce(&mut Control) -> Result<Vec<u64>>,
    ) -> Result<Vec<u64>> {
        let mut alone = lock(&self.alone);
        if let std::collections::hash_map::Entry::Vacant(e) = alone.entry(p) {
            e.insert(None);
            drop(alone);
            let runs = time(ctrl);
            let mut alone = lock(&self.alone);
            match &runs {
                Ok(r) => alone.insert(p, Some(r.clone())),
                Err(_) => alone.remove(&p),
            };
            self.timed.notify_all();
            return runs;
        }
        loop {
            match alone.get(&p) {
                Some(Some(runs)) => return Ok(runs.clone()),
                // The pair that timed it failed: this one times it.
                None => {
                    drop(alone);
                    return self.alone(p, ctrl, time);
                }
                Some(None) => {}
            }
            alone = self.timed.wait_timeout(alone, WAIT_SLICE).unwrap_or_else(|e| e.into_inner()).0;
            drop(alone);
            ctrl.watch("waiting for the emulated prefill to be timed alone")?;
            alone = lock(&self.alone);
        }
    }
}

/// One request's readiness: the transport may move message i once the
/// layer it needs has been computed (or, without overlap, all of them).
/// Its compute starts at the go, behind any the instance computes already.
pub struct Computing<'a> {
    pub compute: &'a dyn Compute,
    pub layout: &'a RequestLayout,
    pub layer_ns: Vec<u64>,
    pub overlap: Overlap,
    /// Requests that may be computing ahead of this one (lanes of the instance).
    ahead: u32,
    /// An instance that feeds several receivers: its requests by key.
    shared: Option<(&'a SharedCompute, u64)>,
    job: OnceLock<Job>,
}

impl<'a> Computing<'a> {
    pub fn new(
        compute: &'a dyn Compute,
        layout: &'a RequestLayout,
        layer_ns: Vec<u64>,
        overlap: Overlap,
    ) -> Self {
        Computing { compute, layout, layer_ns, overlap, ahead: 0, shared: None, job: OnceLock::new() }
    }

    /// Up to `ahead` other requests of the instance may compute before this one.
    pub fn behind(mut self, ahead: u32) -> Self {
        self.ahead = ahead;
        self
    }

    /// What the compute may take beyond the transfer: three times the
    /// asked time (a GPU kernel slows under a transfer), and a second, for
    /// this request and each that may compute ahead of it.
    pub fn allowance(&self) -> Duration {
        let own = Duration::from_nanos(self.layer_ns.iter().sum::<u64>().saturating_mul(3))
            + Duration::from_secs(1);
        own * (self.ahead + 1)
    }

    /// Request `key` of an instance that feeds several receivers: computed
    /// once, for every share of it.
    pub fn keyed(mut self, shared: &'a SharedCompute, key: u64) -> Self {
        self.shared = Some((shared, key));
        self
    }

    fn job(&self) -> Job {
        *self.job.get_or_init(|| {
            let start = || self.compute.start(&self.layer_ns);
            match self.shared {
                Some((s, key)) => s.job(key, start),
                None => start(),
            }
        })
    }

    /// Waits, never past `deadline`, until `layers` layers are computed.
    fn wait_layers(&self, layers: usize, deadline: Instant) -> Result<()> {
        let job = self.job();
        while self.compute.wait_finished(job, layers, (Instant::now() + WAIT_SLICE).min(deadline))? < layers {
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
        self.wait_layers(self.layer_ns.len(), deadline)?;
        self.compute
            .span(self.job())
            .ok_or_else(|| Error::run("internal error: a finished prefill without its span"))
    }
}

impl Drop for Computing<'_> {
    fn drop(&mut self) {
        match (self.job.get(), self.shared) {
            (Some(_), Some((s, key))) => s.release(key, self.compute),
            (Some(job), None) => self.compute.forget(*job),
            (None, _) => {}
        }
    }
}

impl Ready for Computing<'_> {
    fn computes(&self) -> bool {
        true
    }

    fn go(&self) {
        self.job();
    }

    fn ready(&self, message: usize) -> Result<bool> {
        Ok(self.compute.finished(self.job())? >= self.layers_for(message))
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
    fn runs_that_strayed_past_two_percent_are_retimed_on_their_median() {
        // One H200 run: the first run after an idle spell slow, the rest 6% fast.
        assert_eq!(drifted(&[18_579_455, 17_285_120, 17_301_503], 18_394_944), Some(17_301_503));
        assert_eq!(drifted(&[18_366_464, 18_382_847, 18_399_231], 18_394_944), None);
        assert_eq!(drifted(&[100, 103, 98], 100), None);
        assert_eq!(drifted(&[100, 103, 103], 100), Some(103));
        assert_eq!(drifted(&[], 100), None);
    }

    #[test]
    fn layers_end_on_time_and_messages_wait_for_theirs() {
        let shape = KvShape::new(presets::lookup("llama-3.1-8b").unwrap(), 1, 16).unwrap();
        let layout = RequestLayout::new(&shape, 64, Granularity::Layer);
        let compute = LayerWorker::new(Box::new(BusyWait));
        let layer_ns = vec![2_000_000u64; 32]; // 64 ms in all
        let ready = Computing::new(&compute, &layout, layer_ns.clone(), Overlap::Layer);
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
        let ready = Computing::new(&compute, &layout, layer_ns.clone(), Overlap::None);
        let t0 = Instant::now();
        ready.go();
        ready.wait(0, t0 + Duration::from_secs(5)).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(64), "{:?}", t0.elapsed());
        // A deadline ends a wait.
        let ready = Computing::new(&compute, &layout, layer_ns.clone(), Overlap::None);
        ready.go();
        let e = ready.wait(31, Instant::now() + Duration::from_millis(5)).unwrap_err();
        assert!(e.message.contains("did not finish layer 31"), "{e}");
    }

    #[test]
    fn an_instance_computes_one_request_after_another() {
        let shape = KvShape::new(presets::lookup("llama-3.1-8b").unwrap(), 1, 16).unwrap();
        let layout = RequestLayout::new(&shape, 64, Granularity::Layer);
        let compute = LayerWorker::new(Box::new(BusyWait));
        let layer_ns = vec![1_000_000u64; 32]; // 32 ms each
        let first = Computing::new(&compute, &layout, layer_ns.clone(), Overlap::Layer);
        let second = Computing::new(&compute, &layout, layer_ns.clone(), Overlap::Layer).behind(1);
        assert_eq!(second.allowance(), first.allowance() * 2);
        let t0 = Instant::now();
        first.go();
        second.go();
        // The second's first layer comes after the first's last.
        second.wait(0, t0 + Duration::from_secs(5)).unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(33), "{:?}", t0.elapsed());
        let (a, b) = (
            first.finish(t0 + Duration::from_secs(5)).unwrap(),
            second.finish(t0 + Duration::from_secs(5)).unwrap(),
        );
        assert!(b.0 >= a.1, "{a:?} then {b:?}");
        assert!(b.1 - b.0 >= 32_000_000 && b.1 - b.0 < 60_000_000, "{b:?}");
        // Read and dropped: forgotten.
        drop((first, second));
        assert!(lock(&compute.shared.jobs).progress.is_empty());
    }
}
