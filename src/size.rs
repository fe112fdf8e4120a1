//! Sizing advice for the buffers KV connectors keep on the decode side.
//!
//! - vLLM P2pNcclConnector: `kv_buffer_size` is a threshold on the bytes of
//!   received-but-not-yet-consumed KV tensors on the decode GPU (one tensor
//!   per request and layer). Past it, tensors go to a pinned host pool
//!   (`mem_pool_size_gb`, GiB, a buddy allocator: each tensor takes the next
//!   power of two) and come back over PCIe at decode time.
//! - LMCache (PD mode): the decoder's `pd_buffer_size` receives KV in
//!   256-token chunks; a request that does not fit waits ("Failed to
//!   allocate memory object, retrying...").
//!
//! All figures are per rank: with tensor parallelism each decode GPU holds
//! its share of the heads (MLA: the whole latent).

use crate::figures::PointResult;
use crate::kv::KvShape;
use crate::plan::Granularity;
use serde::Serialize;

/// LMCache's default `chunk_size`, in tokens.
pub const LMCACHE_CHUNK_TOKENS: u32 = 256;
const GIB: u64 = 1 << 30;

/// One prompt length of the mix.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PromptSizing {
    pub tokens: u32,
    /// Fraction of requests with this prompt length.
    pub share: f64,
    /// KV bytes of one request on one rank, as the connectors sized here
    /// hold it: every attention layer in full (they do not support vLLM's
    /// hybrid KV cache manager).
    pub request_bytes: u64,
    /// A hybrid model's request as vLLM's hybrid KV cache manager keeps it
    /// (a window's blocks, a state), what a connector that supports it
    /// holds (NixlConnector, Mooncake); None for other models.
    pub request_bytes_hma: Option<u64>,
    /// The largest (request, layer) tensor as P2pNccl sends it.
    pub layer_tensor_bytes: u64,
    /// That tensor in the pinned pool, rounded up to a power of two.
    pub pooled_layer_bytes: u64,
    /// The request in the pinned pool: each layer's tensor rounded up.
    pub pooled_request_bytes: u64,
    /// One request in LMCache's buffer: whole 256-token chunks.
    pub lmcache_bytes: u64,
    /// Time to move the request over the measured fabric, if given.
    pub transfer: Option<Measured>,
}

/// What a recorded run says about one prompt length.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Measured {
    pub granularity: Granularity,
    pub p50_ns: u64,
    /// None below 100 requests: the few largest are no tail.
    pub p99_ns: Option<u64>,
    pub gbps: f64,
    /// From a load point: its arrivals (the transfer shared the link with
    /// the requests in flight then, a mix's other lengths among them).
    pub under_load: Option<String>,
    /// With emulated prefill: what the transfer added to time-to-first-token.
    pub added: Option<AddedTtft>,
}

/// What a run with emulated prefill measured for one prompt length.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AddedTtft {
    pub overlap: crate::plan::Overlap,
    /// The prefill's compute during the run, p50.
    pub prefill_p50_ns: u64,
    pub p50_ns: u64,
    pub p99_ns: Option<u64>,
    /// The least any pipeline could add (see measure::ttft).
    pub lower_bound_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Sizing {
    pub concurrent: u32,
    pub prompts: Vec<PromptSizing>,
    /// `concurrent` requests of the longest prompt: never spills.
    pub kv_buffer_size: u64,
    /// `concurrent` requests of the longest prompt as the hybrid KV cache
    /// manager keeps them (a hybrid model).
    pub hma_bytes: Option<u64>,
    /// State layers: vLLM refuses to start these connectors without the
    /// hybrid KV cache manager, which they do not support.
    pub needs_hma: bool,
    /// `concurrent` requests of the mix's mean size: spills on long bursts.
    pub kv_buffer_size_mean: u64,
    /// The pinned pool that holds `concurrent` spilled requests of the longest prompt.
    pub pinned_pool_bytes: u64,
    pub mem_pool_size_gb: u64,
    pub lmcache_pd_buffer_size: u64,
}

pub fn size(shape: &KvShape, mix: &[(u32, f64)], concurrent: u32, run: Option<&[PointResult]>) -> Sizing {
    let total: f64 = mix.iter().map(|(_, w)| w).sum();
    // P2pNcclConnector and LMCache do not support vLLM's hybrid KV cache
    // manager, and vLLM turns it off for them (config/vllm.py: "Turning off
    // hybrid kv cache manager because `--kv-transfer-config` selects a KV
    // connector that does not support it"): every attention layer counts in
    // full. A state model cannot run without it; its figures stay HMA's.
    let hybrid = shape.model.is_hybrid() && shape.hma;
    let connector = match shape.clone().with_hma(false) {
        Ok(off) if hybrid => off,
        _ => shape.clone(),
    };
    let prompts: Vec<PromptSizing> = mix
        .iter()
        .map(|&(tokens, weight)| {
            // Each layer's tensor: a full layer's every token, a window's
            // kept blocks, a state layer's state.
            let per_layer: Vec<u64> =
                (0..connector.model.layers).map(|l| connector.layer_request_bytes(l, tokens)).collect();
            let layer_tensor_bytes = per_layer.iter().copied().max().unwrap_or(0);
            PromptSizing {
                tokens,
                share: weight / total,
                request_bytes: per_layer.iter().sum(),
                request_bytes_hma: hybrid.then(|| shape.request_bytes(tokens)),
                layer_tensor_bytes,
                pooled_layer_bytes: layer_tensor_bytes.next_power_of_two(),
                pooled_request_bytes: per_layer
                    .iter()
                    .filter(|b| **b > 0)
                    .map(|b| b.next_power_of_two())
                    .sum(),
                lmcache_bytes: tokens.div_ceil(LMCACHE_CHUNK_TOKENS) as u64
                    * LMCACHE_CHUNK_TOKENS as u64
                    * shape.bytes_per_token(),
                transfer: run.and_then(|points| measured(points, tokens)),
            }
        })
        .collect();
    let n = concurrent as u64;
    let longest = prompts.iter().max_by_key(|p| p.request_bytes).expect("a non-empty mix");
    let mean = prompts.iter().map(|p| p.share * p.request_bytes as f64).sum::<f64>();
    let pinned_pool_bytes = n * longest.pooled_request_bytes;
    let hma = prompts.iter().filter_map(|p| p.request_bytes_hma).max();
    Sizing {
        concurrent,
        kv_buffer_size: n * longest.request_bytes,
        hma_bytes: hma.map(|b| n * b),
        needs_hma: shape.model.has_state(),
        kv_buffer_size_mean: (n as f64 * mean).ceil() as u64,
        pinned_pool_bytes,
        mem_pool_size_gb: pinned_pool_bytes.div_ceil(GIB),
        lmcache_pd_buffer_size: n * prompts.iter().map(|p| p.lmcache_bytes).max().unwrap_or(0),
        prompts,
    }
}

/// A run's figures for a prompt length, preferring per-layer messages (as
/// P2pNccl sends them), then whole requests, then blocks.
/// A mix's lengths each count as their own point (`PointResult::per_length`).
fn measured(points: &[PointResult], tokens: u32) -> Option<Measured> {
    let lengths: Vec<(&PointResult, PointResult)> =
        points.iter().flat_map(|of| of.per_length().into_iter().map(move |p| (of, p))).collect();
    [Granularity::Layer, Granularity::Request, Granularity::Block].iter().find_map(|g| {
        lengths.iter().find(|(_, p)| p.prompt_tokens == tokens && p.granularity == *g).map(|(of, p)| {
            Measured {
                granularity: p.granularity,
                p50_ns: p.request_ns.p50,
                p99_ns: p.request_ns.p99_supported(),
                gbps: p.gbps,
                under_load: of.load.as_ref().map(|l| l.arrivals.to_string()),
                added: p.prefill.as_ref().map(|f| AddedTtft {
                    overlap: f.overlap,
                    prefill_p50_ns: f.during_ns.p50,
                    p50_ns: f.added_ns.p50,
                    p99_ns: f.added_ns.p99_supported(),
                    lower_bound_ns: f.lower_bound_ns,
                }),
            }
        })
    })
}

impl Sizing {
    /// The `--kv-transfer-config` of a P2pNccl decode instance (add your
    /// ports and proxy to `kv_connector_extra_config`).
    pub fn p2p_nccl_consumer_config(&self) -> serde_json::Value {
        serde_json::json!({
            "kv_connector": "P2pNcclConnector",
            "kv_role": "kv_consumer",
            "kv_buffer_size": self.kv_buffer_size.to_string(),
            "kv_connector_extra_config": { "mem_pool_size_gb": self.mem_pool_size_gb },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{presets, KvShape};

    fn llama8b() -> KvShape {
        KvShape::new(presets::lookup("llama-3.1-8b").unwrap(), 1, 16).unwrap()
    }

    /// Figures worked out by hand: 128 KiB per token, 4 KiB per token per layer.
    #[test]
    fn llama_8b_buffers_match_the_hand_computed_figures() {
        let s = size(&llama8b(), &[(3000, 3.0), (32768, 1.0)], 4, None);
        let short = &s.prompts[0];
        assert_eq!(short.request_bytes, 3000 * 131072); // 393,216,000
        assert_eq!(short.layer_tensor_bytes, 3000 * 4096); // 12,288,000
        assert_eq!(short.pooled_layer_bytes, 16 << 20);
        assert_eq!(short.lmcache_bytes, 3072 * 131072); // 12 chunks of 256 tokens
        assert_eq!(short.share, 0.75);
        // 4 requests of the longest prompt, 32768 tokens = 4 GiB each.
        assert_eq!(s.kv_buffer_size, 16 << 30);
        assert_eq!(s.kv_buffer_size_mean, 4 * (3 * 393_216_000 + 4_294_967_296) / 4);
        // 32 layers x 128 MiB (already a power of two) x 4 requests.
        assert_eq!(s.pinned_pool_bytes, 16 << 30);
        assert_eq!(s.mem_pool_size_gb, 16);
        assert_eq!(s.lmcache_pd_buffer_size, 16 << 30);
        let cfg = s.p2p_nccl_consumer_config();
        assert_eq!(cfg["kv_buffer_size"], "17179869184");
        assert_eq!(cfg["kv_connector_extra_config"]["mem_pool_size_gb"], 16);
    }

    /// gpt-oss-120b at 32k tokens, blocks of 64, by hand. P2pNccl and
    /// LMCache run with vLLM's hybrid KV cache manager off: 36 layers x
    /// 32768 tokens x 2048 bytes = 2,415,919,104. With it (NixlConnector):
    /// 18 full layers, 1,207,959,552, and 18 sliding layers that keep
    /// tokens 32640.. (blocks 510, 511: 128 tokens) x 2048 = 4,718,592.
    #[test]
    fn a_hybrid_model_is_sized_in_full_for_connectors_without_hma() {
        let m = presets::lookup("gpt-oss-120b").unwrap();
        let s = size(&KvShape::new(m.clone(), 1, 64).unwrap(), &[(32768, 1.0)], 2, None);
        assert_eq!(s.prompts[0].request_bytes, 36 * 32768 * 2048);
        assert_eq!(s.prompts[0].request_bytes_hma, Some(1_207_959_552 + 4_718_592));
        assert_eq!((s.kv_buffer_size, s.hma_bytes), (2 * 2_415_919_104, Some(2 * 1_212_678_144)));
        // Pinned pool: 36 x 64 MiB (already powers of two), x 2.
        assert_eq!(s.pinned_pool_bytes, 2 * 36 * (64 << 20));
        assert!(!s.needs_hma);
        let off = size(&KvShape::new(m, 1, 64).unwrap().with_hma(false).unwrap(), &[(32768, 1.0)], 2, None);
        assert_eq!((off.kv_buffer_size, off.hma_bytes), (2 * 2_415_919_104, None));
        // Qwen3-Next's state layers need it: vLLM would not start these connectors.
        let q = presets::lookup("qwen3-next-80b-a3b").unwrap();
        assert!(size(&KvShape::new(q, 1, 576).unwrap(), &[(1024, 1.0)], 1, None).needs_hma);
    }

    #[test]
    fn power_of_two_rounding_shows_in_the_pool() {
        // 3000 tokens only: each layer tensor of 11.7 MiB takes 16 MiB.
        let s = size(&llama8b(), &[(3000, 1.0)], 2, None);
        assert_eq!(s.kv_buffer_size, 2 * 393_216_000);
        assert_eq!(s.pinned_pool_bytes, 2 * 32 * (16 << 20));
        assert_eq!(s.mem_pool_size_gb, 1);
    }
}
