//! The integrity pattern written and checked in GPU memory by two kernels
//! (pattern.cu, shipped as PTX that the driver compiles for its GPU), so the
//! bytes never cross PCIe to be checked. Each run first proves the kernels
//! agree with the host reference in src/kv/pattern.rs.

use super::{Device, DeviceMem, Stream};
use crate::error::{Error, Result};
use crate::integrity::Check;
use crate::kv::{pattern, Attention, Dtype, KvShape, ModelSpec};
use crate::plan::{Granularity, RequestLayout, Side};
use cudarc::driver::{result, sys};
use std::ffi::{c_void, CString};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Generated from pattern.cu by scripts/gen-ptx.sh.
pub const PTX: &str = include_str!("pattern.ptx");
const THREADS: u32 = 256;
const MAX_BLOCKS: u64 = 8192;

pub struct PatternKernels {
    device: Arc<Device>,
    module: sys::CUmodule,
    fill: sys::CUfunction,
    verify: sys::CUfunction,
    stream: Stream,
    /// One seed per message of the request being written or checked.
    seeds: DeviceMem,
    /// Each message's byte offset in the buffer, on this side.
    offsets: DeviceMem,
    /// The word of its pattern each message starts at.
    starts: DeviceMem,
    /// The verify kernel's wrong-byte count and first wrong offset.
    counters: DeviceMem,
    timeout: Duration,
}

// SAFETY: module and functions belong to the device's context, bound before use.
unsafe impl Send for PatternKernels {}
unsafe impl Sync for PatternKernels {}

impl PatternKernels {
    /// Loads the kernels for up to `max_messages` messages per request, and
    /// checks them against the host pattern on the first bytes of `scratch`.
    pub fn load(
        device: &Arc<Device>,
        max_messages: usize,
        scratch: &DeviceMem,
        timeout: Duration,
    ) -> Result<Self> {
        device.bind()?;
        let image = CString::new(PTX).expect("PTX has no NUL byte");
        // SAFETY: a NUL-terminated PTX image.
        let module = unsafe { result::module::load_data(image.as_ptr().cast()) }.map_err(|e| {
            Error::run(format!("CUDA: loading the pattern kernels on {}: {e}", device.describe()))
        })?;
        let function = |name: &str| {
            // SAFETY: the module is loaded.
            unsafe { result::module::get_function(module, CString::new(name).unwrap()) }
                .map_err(|e| Error::run(format!("CUDA: kernel {name}: {e}")))
        };
        let kernels = PatternKernels {
            fill: function("kvx_fill")?,
            verify: function("kvx_verify")?,
            module,
            stream: Stream::new(device)?,
            // Room for the self-check's messages too.
            seeds: DeviceMem::new(device, 8 * max_messages.max(tiny_layout().message_count))?,
            offsets: DeviceMem::new(device, 8 * max_messages.max(tiny_layout().message_count))?,
            starts: DeviceMem::new(device, 8 * max_messages.max(tiny_layout().message_count))?,
            counters: DeviceMem::new(device, 16)?,
            device: device.clone(),
            timeout,
        };
        kernels.self_check(scratch)?;
        Ok(kernels)
    }

    /// The pattern of `request` into every message of `mem`'s request, on
    /// the sender (where its layout puts each message).
    pub fn fill(&self, mem: &DeviceMem, layout: &RequestLayout, request: u64) -> Result<()> {
        self.prepare(mem, layout, request, Side::Sender)?;
        // One launch per run of messages of one size (one for most layouts).
        for run in runs(layout) {
            let mut a = self.run_args(mem, run);
            let mut args: [*mut c_void; 6] = std::array::from_fn(|i| (&mut a[i] as *mut u64).cast());
            self.launch(self.fill, a[5], &mut args)?;
        }
        self.stream.wait(self.deadline(layout), "writing the integrity pattern")
    }

    /// A 16-byte memset on this context's stream, waited for.
    pub fn settle(&self) -> Result<()> {
        self.device.bind()?;
        // SAFETY: the counters hold 16 bytes; nothing reads them until verify resets them.
        unsafe { result::memset_d8_async(self.counters.ptr, 0, 16, self.stream.raw) }
            .map_err(|e| Error::run(format!("CUDA: a memset on {}: {e}", self.device.describe())))?;
        self.stream.wait(Instant::now() + self.timeout, "a memset")
    }

    /// Counts the bytes of `mem`'s request that differ from the pattern, on
    /// the receiver (where its layout puts each message).
    pub fn verify(&self, mem: &DeviceMem, layout: &RequestLayout, request: u64) -> Result<Check> {
        self.prepare(mem, layout, request, Side::Receiver)?;
        let runs = runs(layout);
        let (wrong_bytes, _) = self.verify_runs(mem, layout, &runs)?;
        let mut check = Check { verified_bytes: layout.total_bytes() as u64, wrong_bytes, first: None };
        if wrong_bytes > 0 {
            // The first run with a wrong byte, and that byte in it (the
            // kernel counts it from its run's start).
            let mut at = None;
            for run in &runs {
                if let (1.., first) = self.verify_runs(mem, layout, std::slice::from_ref(run))? {
                    at = Some((run.0 + first as usize / run.2, first as usize % run.2));
                    break;
                }
            }
            let (index, offset) =
                at.ok_or_else(|| Error::run("internal error: a wrong byte not found again"))?;
            // Name the first wrong byte as the host check does: key, offset, bytes.
            let mut found = [0u8; 1];
            mem.download(layout.slot(Side::Receiver, index).offset + offset, &mut found)?;
            let (mut expected, start) = ([0u8; 1], layout.pattern_start(index));
            pattern::fill_at(&mut expected, layout.seed(request, index), start + offset as u64);
            let m = pattern::Mismatch {
                wrong_bytes: 0,
                first: Some((start + offset as u64, expected[0], found[0])),
            };
            check.first = Check::of_message(layout, request, index, m, 0).first;
        }
        Ok(check)
    }

    /// The kernels' first arguments for one run of messages (see `runs`):
    /// buffer, seeds, offsets and starts from the run's first message,
    /// words per message, words in all.
    fn run_args(&self, mem: &DeviceMem, (first, count, bytes): (usize, usize, usize)) -> [u64; 6] {
        let at = 8 * first as u64;
        let per = (bytes / 8) as u64;
        [mem.ptr, self.seeds.ptr + at, self.offsets.ptr + at, self.starts.ptr + at, per, count as u64 * per]
    }

    /// Counts the wrong bytes of `runs` (see `runs`): (wrong bytes, the
    /// first wrong byte counted from its run's start, for one run).
    fn verify_runs(
        &self,
        mem: &DeviceMem,
        layout: &RequestLayout,
        runs: &[(usize, usize, usize)],
    ) -> Result<(u64, u64)> {
        let mut init = [0u8; 16];
        init[8..].copy_from_slice(&u64::MAX.to_le_bytes());
        self.counters.upload(0, &init)?;
        for &run in runs {
            let a = self.run_args(mem, run);
            let mut a = [a[0], a[1], a[2], a[3], a[4], a[5], self.counters.ptr, self.counters.ptr + 8];
            let mut args: [*mut c_void; 8] = std::array::from_fn(|i| (&mut a[i] as *mut u64).cast());
            self.launch(self.verify, a[5], &mut args)?;
        }
        self.stream.wait(self.deadline(layout), "checking the integrity pattern")?;
        let mut out = [0u8; 16];
        self.counters.download(0, &mut out)?;
        Ok((
            u64::from_le_bytes(out[..8].try_into().unwrap()),
            u64::from_le_bytes(out[8..].try_into().unwrap()),
        ))
    }

    /// Uploads the request's seeds and `side`'s message offsets; returns
    /// the request's length in words.
    fn prepare(&self, mem: &DeviceMem, layout: &RequestLayout, request: u64, side: Side) -> Result<u64> {
        // The kernels start each message's pattern at a whole word.
        if (0..layout.message_count).any(|i| !layout.pattern_start(i).is_multiple_of(8)) {
            return Err(Error::usage(
                "a conversation's turn starts its messages inside an 8-byte word: use host or pinned memory",
            ));
        }
        if let Some(i) = (0..layout.message_count).find(|&i| !layout.message_len(i).is_multiple_of(8)) {
            return Err(Error::usage(format!(
                "GPU buffers need messages of a whole number of 8-byte words; {} is {} bytes \
                 (use --memory host or pinned for this shape)",
                layout.key(0, i),
                layout.message_len(i)
            )));
        }
        if layout.buffer_bytes() > mem.len || 8 * layout.message_count > self.seeds.len {
            return Err(Error::run(format!(
                "internal error: a request of {} messages, {} bytes, does not fit buffers sized for {} and {}",
                layout.message_count,
                layout.total_bytes(),
                self.seeds.len / 8,
                mem.len
            )));
        }
        let seeds: Vec<u8> =
            (0..layout.message_count).flat_map(|i| layout.seed(request, i).to_le_bytes()).collect();
        self.seeds.upload(0, &seeds)?;
        let offsets: Vec<u8> = layout.slots(side).flat_map(|s| (s.offset as u64).to_le_bytes()).collect();
        self.offsets.upload(0, &offsets)?;
        let starts: Vec<u8> =
            (0..layout.message_count).flat_map(|i| (layout.pattern_start(i) / 8).to_le_bytes()).collect();
        self.starts.upload(0, &starts)?;
        Ok((layout.total_bytes() / 8) as u64)
    }

    fn launch(&self, f: sys::CUfunction, words: u64, args: &mut [*mut c_void]) -> Result<()> {
        self.device.bind()?;
        let blocks = words.div_ceil(THREADS as u64).clamp(1, MAX_BLOCKS) as u32;
        // SAFETY: the arguments match the kernel's parameters and point to
        // locals that outlive the launch call (parameters are copied at launch).
        unsafe { result::launch_kernel(f, (blocks, 1, 1), (THREADS, 1, 1), 0, self.stream.raw, args) }
            .map_err(|e| Error::run(format!("CUDA: launching the pattern kernel: {e}")))
    }

    /// Patterns run at GPU memory speed; allow 1 s per 10 GB beyond the timeout.
    fn deadline(&self, layout: &RequestLayout) -> Instant {
        Instant::now() + self.timeout + Duration::from_secs_f64(layout.total_bytes() as f64 / 10e9)
    }

    /// Fill on the GPU and check on the host; write on the host, corrupt one
    /// byte and check on the GPU. Any disagreement is a bug, found up front.
    fn self_check(&self, scratch: &DeviceMem) -> Result<()> {
        let layout = tiny_layout();
        let bytes = layout.total_bytes();
        if scratch.len < bytes {
            return Ok(()); // too small to matter; the run's own checks remain
        }
        let fail = |what: String| Err(Error::run(format!("GPU pattern self-check failed: {what}")));
        self.fill(scratch, &layout, 7)?;
        let mut host = vec![0u8; bytes];
        scratch.download(0, &mut host)?;
        let on_host = crate::integrity::verify(&host, &layout, 7);
        if on_host.wrong_bytes != 0 {
            return fail(format!("the GPU wrote {} bytes the host does not expect", on_host.wrong_bytes));
        }
        host[bytes - 3] ^= 0x10;
        scratch.upload(0, &host)?;
        let on_gpu = self.verify(scratch, &layout, 7)?;
        let last = layout.key(7, layout.message_count - 1);
        let want = format!("{last} byte {}:", layout.message_bytes - 3);
        if on_gpu.wrong_bytes != 1 || !on_gpu.first.as_deref().unwrap_or("").starts_with(&want) {
            return fail(format!("one flipped byte was reported as {on_gpu:?}"));
        }
        // A conversation's later turn continues its tokens' pattern.
        let turn = tiny_turn();
        self.fill(scratch, &turn, 7)?;
        let mut host = vec![0u8; turn.buffer_bytes()];
        scratch.download(0, &mut host)?;
        let on_host = crate::integrity::verify(&host, &turn, 7);
        if on_host.wrong_bytes != 0 || self.verify(scratch, &turn, 7)?.wrong_bytes != 0 {
            return fail(format!("a later turn's {} bytes the host does not expect", on_host.wrong_bytes));
        }
        Ok(())
    }
}

impl Drop for PatternKernels {
    fn drop(&mut self) {
        let _ = self.device.bind();
        // SAFETY: unloaded once.
        let _ = unsafe { sys::cuModuleUnload(self.module) };
    }
}

/// The layout's messages as runs of consecutive messages of one size:
/// (first message, messages, bytes each). One run unless the model's
/// layers move unlike one another (a hybrid model, an indexer cache).
fn runs(layout: &RequestLayout) -> Vec<(usize, usize, usize)> {
    let mut out: Vec<(usize, usize, usize)> = Vec::new();
    for i in 0..layout.message_count {
        let len = layout.message_len(i);
        match out.last_mut() {
            Some(r) if r.2 == len => r.1 += 1,
            _ => out.push((i, 1, len)),
        }
    }
    out
}

/// Eight 512-byte messages: two layers, K and V, two blocks.
fn tiny_layout() -> RequestLayout {
    let shape = KvShape::new(tiny_layout_model(), 1, 4).expect("valid shape");
    RequestLayout::new(&shape, 8, Granularity::Block)
}

fn tiny_layout_model() -> ModelSpec {
    ModelSpec {
        name: "self-check".into(),
        layers: 2,
        attention: Attention::Gqa { kv_heads: 1, head_dim: 64 },
        dtype: Dtype::Bf16,
        compute: None,
        compute_missing: None,
        max_context: None,
        layer_kinds: Vec::new(),
        state: None,
        indexer_dim: None,
    }
}

/// Tokens 4-8 of a conversation of 8 on the same shape, in layer messages.
fn tiny_turn() -> RequestLayout {
    let shape = KvShape::new(tiny_layout_model(), 1, 4).expect("valid shape");
    RequestLayout::span(&shape, Granularity::Layer, 4, 8, 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_layout_is_what_the_self_check_assumes() {
        let l = tiny_layout();
        assert_eq!((l.message_count, l.message_bytes), (8, 512));
        // The later turn: 2 layer messages of 4 tokens x 256 bytes, each
        // from its layer's 4th token (byte 1024 of its pattern), in the
        // same 4 KiB: layer 1's at 2048 + 1024.
        let t = tiny_turn();
        assert_eq!((t.message_count, t.message_bytes, t.pattern_start(1)), (2, 1024, 1024));
        assert_eq!((t.buffer_bytes(), t.slot(Side::Receiver, 1).offset), (l.total_bytes(), 3072));
    }

    /// The shipped PTX is the compilation of the shipped CUDA source.
    #[test]
    fn ptx_matches_its_source() {
        let source = include_bytes!("pattern.cu");
        let fnv = source
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
        let stamp = format!("// source fnv1a64: {fnv:016x}");
        assert!(PTX.contains(&stamp), "pattern.ptx is stale: run scripts/gen-ptx.sh (want '{stamp}')");
        for kernel in ["kvx_fill", "kvx_verify"] {
            assert!(PTX.contains(&format!(".entry {kernel}(")), "{kernel}");
        }
    }
}
