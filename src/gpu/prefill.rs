//! The emulated prefill on a GPU: one launch of prefill.cu's kernel per
//! layer, on every multiprocessor, its length set in rounds. Calibrated at
//! load on the idle GPU (a straight line through two lengths, after a warm-up
//! that brings the clocks up), then tuned on each point's own layers, so a
//! layer alone takes its asked time; under a transfer it takes what the
//! transfer leaves it.

use super::{Device, DeviceMem, Event, Stream};
use crate::clock::mono_ns;
use crate::error::{Error, Result};
use cudarc::driver::{result, sys};
use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Generated from prefill.cu by scripts/gen-ptx.sh.
pub const PTX: &str = include_str!("prefill.ptx");
const THREADS: u32 = 256;
/// Blocks per multiprocessor: 2048 threads, the most one holds (the kernel
/// uses 32 registers), so loads have warps to hide behind.
const BLOCKS_PER_SM: u32 = 8;
/// Per round and warp: 32 products of m16n8k16 (4096 FLOPs each).
const FLOPS_PER_WARP_ROUND: f64 = 32.0 * 4096.0;
/// Per round and thread: one 16-byte load.
const BYTES_PER_THREAD_ROUND: f64 = 16.0;
/// The longest one layer may take before the run counts as stuck.
const LAYER_LIMIT: Duration = Duration::from_secs(30);

pub struct PrefillKernel {
    device: Arc<Device>,
    module: sys::CUmodule,
    function: sys::CUfunction,
    stream: Stream,
    scratch: DeviceMem,
    sink: DeviceMem,
    grid: u32,
    multiprocessors: i32,
    /// The calibrated line and what tuning learnt on top of it.
    tuning: Tuning,
    start: Event,
    ends: Vec<Event>,
}

// SAFETY: module, function and events belong to the device's primary
// context, which every method binds first.
unsafe impl Send for PrefillKernel {}

impl PrefillKernel {
    /// Loads the kernel on `device` and calibrates it there.
    pub fn load(device: &Arc<Device>) -> Result<PrefillKernel> {
        device.bind()?;
        let major =
            device.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        if major < 8 {
            return Err(Error::usage(format!(
                "the emulated prefill on GPU memory uses bf16 tensor-core products, which need compute \
                 capability 8.0 or newer; {} is {major}.x (use --memory host for a busy wait instead)",
                device.describe()
            )));
        }
        let image = CString::new(PTX).expect("PTX has no NUL byte");
        // SAFETY: a NUL-terminated PTX image.
        let module = unsafe { result::module::load_data(image.as_ptr().cast()) }.map_err(|e| {
            Error::run(format!("CUDA: loading the prefill kernel on {}: {e}", device.describe()))
        })?;
        // SAFETY: the module is loaded.
        let function =
            unsafe { result::module::get_function(module, CString::new("kvx_prefill_layer").unwrap()) }
                .map_err(|e| Error::run(format!("CUDA: kernel kvx_prefill_layer: {e}")))?;
        let multiprocessors =
            device.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let l2 = device.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?;
        // Four times L2 and at least 256 MiB, so the reads come from HBM.
        let scratch_bytes = (4 * l2.max(0) as usize).max(256 << 20);
        let scratch = DeviceMem::new(device, scratch_bytes)?;
        // SAFETY: scratch holds scratch_bytes; its values only feed a checksum.
        unsafe { result::memset_d8_sync(scratch.ptr, 0x5a, scratch_bytes) }
            .map_err(|e| Error::run(format!("CUDA: clearing the prefill's scratch: {e}")))?;
        let mut kernel = PrefillKernel {
            module,
            function,
            stream: Stream::new(device)?,
            scratch,
            sink: DeviceMem::new(device, 16)?,
            grid: multiprocessors.max(1) as u32 * BLOCKS_PER_SM,
            multiprocessors,
            tuning: Tuning::default(),
            start: Event::new(device)?,
            ends: Vec::new(),
            device: device.clone(),
        };
        kernel.calibrate()?;
        Ok(kernel)
    }

    /// Fits the line on the idle GPU: a warm-up of about half a second
    /// (clocks rise under load), then the median of five runs at two lengths.
    fn calibrate(&mut self) -> Result<()> {
        let mut rounds = 64u32;
        // Grow until one launch takes 20 ms; the doubling is the warm-up.
        let mut warm = Duration::ZERO;
        loop {
            let ns = self.time_rounds(rounds)?;
            warm += Duration::from_nanos(ns);
            if ns >= 20_000_000 && warm >= Duration::from_millis(500) {
                break;
            }
            if ns < 20_000_000 {
                rounds = rounds.saturating_mul(2);
            }
            if rounds == u32::MAX {
                return Err(Error::run("the prefill kernel did not reach 20 ms at any length"));
            }
        }
        let (long, short) = (rounds, (rounds / 8).max(1));
        let median = |k: &mut Self, r: u32| -> Result<f64> {
            let mut t = (0..5).map(|_| k.time_rounds(r)).collect::<Result<Vec<u64>>>()?;
            t.sort_unstable();
            Ok(t[2] as f64)
        };
        let (t_long, t_short) = (median(self, long)?, median(self, short)?);
        let ns_per_round = ((t_long - t_short) / (long - short) as f64).max(1e-3);
        let overhead_ns = (t_short - short as f64 * ns_per_round).max(0.0);
        self.tuning = Tuning { ns_per_round, overhead_ns, tuned: Vec::new() };
        Ok(())
    }

    /// One launch of `rounds`, alone, in GPU ns.
    fn time_rounds(&mut self, rounds: u32) -> Result<u64> {
        self.device.bind()?;
        self.start.record(&self.stream)?;
        self.launch(rounds)?;
        let end = Event::new(&self.device)?;
        end.record(&self.stream)?;
        end.wait(Instant::now() + LAYER_LIMIT, "calibrating the prefill kernel")?;
        end.since(&self.start)
    }

    fn launch(&self, rounds: u32) -> Result<()> {
        let (mut scratch, mut vectors, mut rounds, mut sink) =
            (self.scratch.ptr, (self.scratch.len / 16) as u64, rounds, self.sink.ptr);
        let mut args: [*mut c_void; 4] = [
            (&mut scratch as *mut u64).cast(),
            (&mut vectors as *mut u64).cast(),
            (&mut rounds as *mut u32).cast(),
            (&mut sink as *mut u64).cast(),
        ];
        // SAFETY: the arguments match the kernel's parameters and outlive the
        // call (parameters are copied at launch).
        unsafe {
            result::launch_kernel(
                self.function,
                (self.grid, 1, 1),
                (THREADS, 1, 1),
                0,
                self.stream.raw,
                &mut args,
            )
        }
        .map_err(|e| Error::run(format!("CUDA: launching the prefill kernel: {e}")))
    }

    /// Rounds for a layer of `ns`.
    fn rounds_for(&self, ns: u64) -> u32 {
        self.tuning.rounds_for(ns)
    }

    fn flops_per_round(&self) -> f64 {
        self.grid as f64 * (THREADS / 32) as f64 * FLOPS_PER_WARP_ROUND
    }

    fn bytes_per_round(&self) -> f64 {
        self.grid as f64 * THREADS as f64 * BYTES_PER_THREAD_ROUND
    }
}

/// What the engine's prefill worker runs (measure::compute::Layers).
impl PrefillKernel {
    /// Runs `layer_ns`' layers back to back, calling `layer_done` as each
    /// ends, in order, with the run's (begin, end) in CLOCK_MONOTONIC ns on
    /// the last. Returns early once `quit` is set.
    pub fn run_layers(
        &mut self,
        layer_ns: &[u64],
        quit: &AtomicBool,
        layer_done: &mut dyn FnMut(Option<(u64, u64)>),
    ) -> Result<()> {
        self.device.bind()?;
        while self.ends.len() < layer_ns.len() {
            self.ends.push(Event::new(&self.device)?);
        }
        // Queued all at once, as a prefill's layers are: the GPU runs them
        // back to back, and the host only watches them end.
        self.start.record(&self.stream)?;
        for (ns, end) in layer_ns.iter().zip(&self.ends) {
            self.launch(self.rounds_for(*ns))?;
            end.record(&self.stream)?;
        }
        let last = layer_ns.len().saturating_sub(1);
        for (l, end) in self.ends[..layer_ns.len()].iter().enumerate() {
            let limit = Instant::now() + LAYER_LIMIT;
            while !end.is_done()? {
                if quit.load(SeqCst) {
                    return Ok(());
                }
                if Instant::now() > limit {
                    return Err(Error::run(format!(
                        "the GPU did not finish prefill layer {l} in {LAYER_LIMIT:?}"
                    )));
                }
                std::hint::spin_loop();
            }
            if l == last {
                // The end seen by the host; its start from the GPU's own clock.
                let ended = mono_ns();
                let span = end.since(&self.start)?;
                layer_done(Some((ended.saturating_sub(span), ended)));
            } else {
                layer_done(None);
            }
        }
        Ok(())
    }

    /// Told that a run alone of `layer_ns` took `took_ns`: retunes that
    /// length, and says whether another run alone should check it.
    pub fn retune(&mut self, layer_ns: &[u64], took_ns: u64) -> bool {
        self.tuning.retune(layer_ns, took_ns)
    }

    pub fn describe(&self) -> String {
        let per_ms = 1e6 / self.tuning.ns_per_round;
        format!(
            "a calibrated kernel on {} ({} multiprocessors, {} blocks of {THREADS}): bf16 mma.sync and HBM reads, \
             alone {:.0} TFLOP/s and {:.0} GB/s read ({:.0} rounds/ms, {:.1} us a launch)",
            self.device.describe(),
            self.multiprocessors,
            self.grid,
            self.flops_per_round() * per_ms / 1e9,
            self.bytes_per_round() * per_ms / 1e6,
            per_ms,
            self.tuning.overhead_ns / 1e3,
        )
    }
}

/// The line fitted at load (a layer of r rounds takes overhead + r x
/// per_round) and, for each layer length tuned alone since, its rounds per
/// asked ns. A line fitted on a GPU shared with other processes can be far
/// off (four prefill ranks on one H100 fitted a 1.7 ms overhead): a tuned
/// length then keeps its own rate, and a length not tuned yet starts from
/// the nearest tuned one's.
#[derive(Clone, Debug, Default)]
struct Tuning {
    ns_per_round: f64,
    overhead_ns: f64,
    /// (layer ns, rounds per asked ns), by length tuned.
    tuned: Vec<(u64, f64)>,
}

impl Tuning {
    fn rounds_for(&self, ns: u64) -> u32 {
        let distance = |tuned: u64| (ns.max(1) as f64 / tuned.max(1) as f64).ln().abs();
        let nearest = self.tuned.iter().min_by(|a, b| distance(a.0).total_cmp(&distance(b.0)));
        let r = match nearest {
            Some(&(_, rate)) => ns as f64 * rate,
            None => (ns as f64 - self.overhead_ns).max(0.0) / self.ns_per_round.max(1e-3),
        };
        r.round().clamp(1.0, u32::MAX as f64) as u32
    }

    /// A run alone of `layer_ns` took `took_ns`: a layer's time is nearly
    /// proportional to its rounds (a launch's own cost is microseconds), so
    /// the rounds are scaled to the asked time, for layers of this length
    /// (the run's median). Whether another run should check it.
    fn retune(&mut self, layer_ns: &[u64], took_ns: u64) -> bool {
        let asked: u64 = layer_ns.iter().sum();
        if asked == 0 || took_ns == 0 {
            return false;
        }
        let mut sorted = layer_ns.to_vec();
        sorted.sort_unstable();
        let key = sorted[sorted.len() / 2];
        let used: f64 = layer_ns.iter().map(|&ns| self.rounds_for(ns) as f64).sum();
        let rate = used / took_ns as f64;
        match self.tuned.iter_mut().find(|t| t.0 == key) {
            Some(t) => t.1 = rate,
            None => self.tuned.push((key, rate)),
        }
        (asked as f64 / took_ns as f64 - 1.0).abs() > 0.01
    }
}

impl Drop for PrefillKernel {
    fn drop(&mut self) {
        let _ = self.device.bind();
        // SAFETY: unloaded once; nothing launched from it outlives the stream's drop.
        let _ = self.stream.wait(Instant::now() + LAYER_LIMIT, "ending the prefill kernel");
        let _ = unsafe { sys::cuModuleUnload(self.module) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped PTX is the compilation of the shipped CUDA source.
    #[test]
    fn ptx_matches_its_source() {
        let source = include_bytes!("prefill.cu");
        let fnv = source
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let stamp = format!("// source fnv1a64: {fnv:016x}");
        assert!(PTX.contains(&stamp), "prefill.ptx is stale: run scripts/gen-ptx.sh (want '{stamp}')");
        assert!(PTX.contains(".entry kvx_prefill_layer("));
        assert_eq!(PTX.matches("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32").count() % 32, 0);
    }

    /// A GPU whose launch costs 10 us and a round 10.6 us, fitted as one
    /// whose launch costs 1.7 ms (four processes calibrating on one GPU):
    /// tuning 8k layers (9.4 ms) and then 1k ones (0.94 ms), each as
    /// compute::alone does (up to four runs), leaves both within 2% of
    /// their asked time, and no run on the way past twice it.
    #[test]
    fn each_length_is_tuned_to_its_asked_time_on_a_line_fitted_off() {
        let took = |t: &Tuning, layer_ns: &[u64]| -> u64 {
            layer_ns.iter().map(|&ns| 10_000.0 + t.rounds_for(ns) as f64 * 10_600.0).sum::<f64>() as u64
        };
        let mut t = Tuning { ns_per_round: 10_000.0, overhead_ns: 1_700_000.0, tuned: Vec::new() };
        for layer in [9_375_000u64, 937_500] {
            let layer_ns = vec![layer; 32];
            let asked: u64 = layer_ns.iter().sum();
            for _ in 0..4 {
                let ran = took(&t, &layer_ns);
                assert!(ran <= 2 * asked, "{layer}: a run of {ran} ns for {asked} asked");
                if !t.retune(&layer_ns, ran) {
                    break;
                }
            }
            let ran = took(&t, &layer_ns) as f64;
            assert!((ran / asked as f64 - 1.0).abs() < 0.02, "{layer}: {ran} for {asked}");
        }
        // The 8k tuning held while the 1k one was made.
        let long = vec![9_375_000u64; 32];
        assert!((took(&t, &long) as f64 / 300_000_000.0 - 1.0).abs() < 0.02);
    }
}
