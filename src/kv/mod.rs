//! What a model's KV cache looks like in bytes: layers, heads, head_dim, dtype,
//! MLA latents and the share one tensor-parallel rank holds.
//!
//! GQA/MHA: bytes/token = 2 (K, V) x layers x kv_heads x head_dim x dtype bytes,
//! and a TP rank holds kv_heads/TP heads while TP <= kv_heads (one replicated
//! head beyond). MLA: one latent of (kv_lora_rank + qk_rope_head_dim) per layer,
//! replicated on every TP rank (vLLM NixlConnector compatibility notes).

pub mod compute;
pub mod hf_config;
mod hf_hybrid;
pub mod hybrid;
pub mod pattern;
pub mod presets;

use crate::error::{Error, Result};
pub use hybrid::{LayerKind, StateBytes, StateKind, StateSpec};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
    Fp32,
    Bf16,
    Fp16,
    Fp8,
    /// vLLM's packed DeepSeek MLA format: 512 fp8 latent values, 16 bytes of
    /// fp32 scales and 64 bf16 rope values = 656 bytes per token per layer.
    Fp8DsMla,
}

impl Dtype {
    pub const NAMES: &'static str = "bf16, fp16, fp8, fp32, fp8_ds_mla";

    pub fn parse(s: &str) -> Result<Dtype> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            "fp16" | "float16" | "half" => Ok(Dtype::Fp16),
            "fp8" | "fp8_e4m3" | "fp8_e5m2" | "float8_e4m3fn" => Ok(Dtype::Fp8),
            "fp32" | "float32" | "float" => Ok(Dtype::Fp32),
            "fp8_ds_mla" => Ok(Dtype::Fp8DsMla),
            other => Err(Error::usage(format!("unknown dtype '{other}' (expected one of {})", Self::NAMES))),
        }
    }

    /// Bytes of one element; the packed MLA format is sized by `Attention` itself.
    pub fn bytes(self) -> u64 {
        match self {
            Dtype::Fp32 => 4,
            Dtype::Bf16 | Dtype::Fp16 => 2,
            Dtype::Fp8 | Dtype::Fp8DsMla => 1,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Dtype::Fp32 => "fp32",
            Dtype::Bf16 => "bf16",
            Dtype::Fp16 => "fp16",
            Dtype::Fp8 => "fp8",
            Dtype::Fp8DsMla => "fp8_ds_mla",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Attention {
    /// Grouped-query (or multi-head) attention: separate K and V per layer.
    Gqa { kv_heads: u32, head_dim: u32 },
    /// Multi-head latent attention: one compressed latent per layer.
    Mla { kv_lora_rank: u32, qk_rope_head_dim: u32 },
}

/// The most layers, heads, head size, latent rank, TP or block size kvxfer
/// takes: far above any model, and a token's bytes then stay below 2^53.
pub const MOST_DIM: u32 = 1 << 16;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub name: String,
    pub layers: u32,
    pub attention: Attention,
    pub dtype: Dtype,
    /// What the prefill FLOPs estimate needs (`--prefill-tflops`), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute: Option<compute::ComputeShape>,
    /// Why `compute` is unknown: the config field that was missing.
    #[serde(skip)]
    pub compute_missing: Option<String>,
    /// The longest context the model takes (max_position_embeddings), where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_context: Option<u32>,
    /// Each layer's kind, where not every layer is full attention (hybrid
    /// models); empty: all full.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layer_kinds: Vec<LayerKind>,
    /// The shape of the `State` layers' recurrent state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateSpec>,
    /// DeepSeek-V3.2's indexer: index_head_dim, its fp8 key cache kept per
    /// token beside each MLA layer's latent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indexer_dim: Option<u32>,
}

impl ModelSpec {
    pub fn validate(&self) -> Result<()> {
        let zero =
            |what: &str| Err(Error::usage(format!("model '{}': {what} must be at least 1", self.name)));
        if self.layers == 0 {
            return zero("layers");
        }
        // Far above any model, low enough that a token's bytes fit a u64
        // (a model read off the wire or from a config is checked here).
        let dims = match self.attention {
            Attention::Gqa { kv_heads, head_dim } => [self.layers, kv_heads, head_dim],
            Attention::Mla { kv_lora_rank, qk_rope_head_dim } => {
                [self.layers, kv_lora_rank, qk_rope_head_dim]
            }
        };
        if let Some(d) = dims.iter().find(|d| **d > MOST_DIM) {
            return Err(Error::usage(format!(
                "model '{}': {d} is more than kvxfer takes for layers, heads or head sizes ({MOST_DIM})",
                self.name
            )));
        }
        match self.attention {
            Attention::Gqa { kv_heads, head_dim } => {
                if kv_heads == 0 {
                    return zero("kv_heads");
                }
                if head_dim == 0 {
                    return zero("head_dim");
                }
                if self.dtype == Dtype::Fp8DsMla {
                    return Err(Error::usage(format!(
                        "model '{}': fp8_ds_mla applies to MLA models only",
                        self.name
                    )));
                }
            }
            Attention::Mla { kv_lora_rank, qk_rope_head_dim } => {
                if kv_lora_rank == 0 {
                    return zero("kv_lora_rank");
                }
                if self.dtype == Dtype::Fp8DsMla && kv_lora_rank % 128 != 0 {
                    return Err(Error::usage(format!(
                        "model '{}': fp8_ds_mla needs kv_lora_rank a multiple of 128, got {kv_lora_rank}",
                        self.name
                    )));
                }
                let _ = qk_rope_head_dim; // zero rope dims are legal
            }
        }
        self.validate_layers()
    }

    /// The hybrid parts: one kind per layer, a state shape where state
    /// layers are, an indexer only beside MLA.
    fn validate_layers(&self) -> Result<()> {
        let name = &self.name;
        if !self.layer_kinds.is_empty() && self.layer_kinds.len() != self.layers as usize {
            return Err(Error::usage(format!(
                "model '{name}': {} layer kinds for {} layers",
                self.layer_kinds.len(),
                self.layers
            )));
        }
        for kind in &self.layer_kinds {
            match *kind {
                LayerKind::SlidingWindow { window: 0 } | LayerKind::ChunkedLocal { chunk: 0 } => {
                    return Err(Error::usage(format!("model '{name}': a window or chunk of 0 tokens")))
                }
                LayerKind::State if self.state.is_none() => {
                    return Err(Error::usage(format!("model '{name}': state layers without a state shape")))
                }
                _ => {}
            }
        }
        if let Some(state) = &self.state {
            state.validate(name)?;
        }
        if self.indexer_dim.is_some_and(|d| d == 0 || d > MOST_DIM || d % 128 != 0) {
            return Err(Error::usage(format!(
                "model '{name}': index_head_dim must be a positive multiple of 128 (its fp8 scales are per 128)"
            )));
        }
        if self.indexer_dim.is_some() && !matches!(self.attention, Attention::Mla { .. }) {
            return Err(Error::usage(format!("model '{name}': an indexer cache goes with MLA only")));
        }
        Ok(())
    }

    pub fn attention_is_mla(&self) -> bool {
        matches!(self.attention, Attention::Mla { .. })
    }

    /// Layer `l`'s kind.
    pub fn layer_kind(&self, l: u32) -> LayerKind {
        self.layer_kinds.get(l as usize).copied().unwrap_or(LayerKind::Full)
    }

    /// Whether any layer is other than full attention.
    pub fn is_hybrid(&self) -> bool {
        self.layer_kinds.iter().any(|k| *k != LayerKind::Full)
    }

    pub fn has_state(&self) -> bool {
        self.layer_kinds.contains(&LayerKind::State)
    }

    /// The shape the prefill estimate needs, or an error naming what is missing.
    pub fn compute_shape(&self) -> Result<&compute::ComputeShape> {
        self.compute.as_ref().ok_or_else(|| {
            let why = match &self.compute_missing {
                Some(field) => format!("its config lacks '{field}'"),
                None => "its hidden size, heads and feed-forward widths are not known".to_string(),
            };
            Error::usage(format!(
                "--prefill-tflops needs the shape of model '{}' to estimate its FLOPs, and {why}: give a \
                 config.json with hidden_size, num_attention_heads, intermediate_size (and the expert fields of \
                 a mixture of experts), or --prefill-ms",
                self.name
            ))
        })
    }

    /// How `other`'s KV differs from this model's: layers, attention
    /// (KV heads and head_dim, or the latent), dtype; empty when alike.
    /// Names do not count: a config.json of the same model is the same KV.
    pub fn kv_differences(&self, other: &ModelSpec) -> Vec<String> {
        let mut out = Vec::new();
        if self.layers != other.layers {
            out.push(format!("{} layers, not {}", other.layers, self.layers));
        }
        match (&self.attention, &other.attention) {
            (&Attention::Gqa { kv_heads: h, head_dim: d }, &Attention::Gqa { kv_heads, head_dim }) => {
                if h != kv_heads {
                    out.push(format!("{kv_heads} KV heads, not {h}"));
                }
                if d != head_dim {
                    out.push(format!("head_dim {head_dim}, not {d}"));
                }
            }
            (a, b) if a != b => out.push(format!("{}, not {}", attention_kind(b), attention_kind(a))),
            _ => {}
        }
        if self.dtype != other.dtype {
            out.push(format!("{}, not {}", other.dtype, self.dtype));
        }
        if self.layer_kinds != other.layer_kinds || self.state != other.state {
            out.push(format!(
                "layers {}, not {}",
                hybrid::describe_kinds(&other.layer_kinds),
                hybrid::describe_kinds(&self.layer_kinds)
            ));
        }
        if self.indexer_dim != other.indexer_dim {
            out.push(format!("indexer {:?}, not {:?}", other.indexer_dim, self.indexer_dim));
        }
        out
    }

    pub fn describe(&self) -> String {
        let kind = match self.attention {
            Attention::Gqa { kv_heads, head_dim } => format!(
                "{}: GQA, {} layers, {} KV heads, head_dim {}, {}",
                self.name, self.layers, kv_heads, head_dim, self.dtype
            ),
            Attention::Mla { kv_lora_rank, qk_rope_head_dim } => format!(
                "{}: MLA, {} layers, latent {} + rope {}, {}",
                self.name, self.layers, kv_lora_rank, qk_rope_head_dim, self.dtype
            ),
        };
        let mut out = kind;
        if self.is_hybrid() {
            out += &format!(" ({})", hybrid::describe_kinds(&self.layer_kinds));
        }
        if let Some(d) = self.indexer_dim {
            out += &format!(", indexer {d}");
        }
        out
    }
}

fn attention_kind(a: &Attention) -> String {
    match *a {
        Attention::Gqa { kv_heads, head_dim } => format!("GQA with {kv_heads} KV heads of {head_dim}"),
        Attention::Mla { kv_lora_rank, qk_rope_head_dim } => {
            format!("MLA with latent {kv_lora_rank} + rope {qk_rope_head_dim}")
        }
    }
}

/// The KV cache of one tensor-parallel rank of a model, as vLLM lays it out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvShape {
    pub model: ModelSpec,
    pub tp: u32,
    /// Tokens per paged-attention block (vLLM `block_size`).
    pub block_size: u32,
    /// vLLM's hybrid KV cache manager: windowed and chunked layers move
    /// only the blocks they still attend to (its default); off, every
    /// attention layer moves in full (`--disable-hybrid-kv-cache-manager`).
    #[serde(default = "hma_default")]
    pub hma: bool,
}

fn hma_default() -> bool {
    true
}

/// vLLM's tokens per block when none is asked for: CacheConfig's
/// DEFAULT_BLOCK_SIZE (64 in vLLM 0.34.0, `config/cache.py`), raised for a
/// model with state layers until one attention page holds a state
/// (`platforms/interface.py` `_align_hybrid_block_size`, with a smallest
/// kernel block of 16, FlashAttention's and FlashInfer's).
pub fn vllm_block_size(model: &ModelSpec, tp: u32, asked: Option<u32>) -> Result<u32> {
    let block = asked.unwrap_or(DEFAULT_BLOCK_SIZE);
    let Some(state) = model.state.filter(|_| model.has_state()) else { return Ok(block) };
    let probe = KvShape { model: model.clone(), tp, block_size: 1, hma: true };
    let page_per_token = probe.attention_tensors().iter().map(|t| t.1).sum::<u64>();
    let state_page = state.bytes(tp)?.total();
    let align = block.max(16) as u64;
    let aligned = align * state_page.div_ceil(align * page_per_token.max(1));
    Ok(u32::try_from(aligned).unwrap_or(u32::MAX).max(block))
}

/// vLLM 0.34.0's CacheConfig.DEFAULT_BLOCK_SIZE: the version kvxfer's defaults follow.
pub const DEFAULT_BLOCK_SIZE: u32 = 64;
pub const VLLM_VERSION: &str = "0.34.0";

/// What one tensor of an attention layer is: K, V, an MLA latent, or
/// DeepSeek-V3.2's indexer keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    Key,
    Value,
    Latent,
    Index,
}

impl KvShape {
    pub fn new(model: ModelSpec, tp: u32, block_size: u32) -> Result<KvShape> {
        model.validate()?;
        if tp == 0 {
            return Err(Error::usage("--tp must be at least 1"));
        }
        if block_size == 0 {
            return Err(Error::usage("--block-size must be at least 1"));
        }
        if block_size > MOST_DIM || tp > MOST_DIM {
            return Err(Error::usage(format!("--tp {tp} or --block-size {block_size}: at most {MOST_DIM}")));
        }
        if let Attention::Gqa { kv_heads, .. } = model.attention {
            // vLLM requires one to divide the other: heads split evenly, or
            // each head replicated on TP/kv_heads ranks.
            let fits = if tp <= kv_heads { kv_heads.is_multiple_of(tp) } else { tp.is_multiple_of(kv_heads) };
            if !fits {
                return Err(Error::usage(format!(
                    "--tp {tp} does not fit {kv_heads} KV heads of {}: one must divide the other",
                    model.name
                )));
            }
        }
        if let Some(state) = &model.state {
            state.bytes(tp)?;
        }
        Ok(KvShape { model, tp, block_size, hma: true })
    }

    /// With vLLM's hybrid KV cache manager on or off. Off, state layers
    /// cannot move: NixlConnector asserts HMA for them.
    pub fn with_hma(mut self, on: bool) -> Result<KvShape> {
        if !on && self.model.has_state() {
            return Err(Error::usage(format!(
                "--hma off: {} has state layers ({}), and vLLM moves them only with its hybrid KV cache manager \
                 (NixlConnector asserts it)",
                self.model.name,
                hybrid::describe_kinds(&self.model.layer_kinds)
            )));
        }
        self.hma = on;
        Ok(self)
    }

    /// Layer `l` as it moves: its own kind with HMA on, full attention for
    /// every attention layer with it off.
    pub fn moving_kind(&self, l: u32) -> LayerKind {
        match self.model.layer_kind(l) {
            LayerKind::State => LayerKind::State,
            _ if !self.hma => LayerKind::Full,
            k => k,
        }
    }

    /// Whether every layer moves alike, as K and V (or one latent) of
    /// every token: then messages of one size tile a request. Hybrid
    /// models under HMA and indexer caches do not.
    pub fn is_uniform(&self) -> bool {
        self.model.indexer_dim.is_none()
            && (0..self.model.layers).all(|l| self.moving_kind(l) == LayerKind::Full)
    }

    /// Each tensor of an attention layer, with its bytes per token on this rank.
    pub fn attention_tensors(&self) -> Vec<(TensorKind, u64)> {
        let t = self.tensor_bytes_per_token();
        let mut out = match self.model.attention {
            Attention::Gqa { .. } => vec![(TensorKind::Key, t), (TensorKind::Value, t)],
            Attention::Mla { .. } => vec![(TensorKind::Latent, t)],
        };
        if let Some(d) = self.model.indexer_dim {
            // fp8 keys and one fp32 scale per 128 (deepseek_v2.py DeepseekV32IndexerCache).
            out.push((TensorKind::Index, d as u64 + d as u64 / 128 * 4));
        }
        out
    }

    /// One rank's state of a state layer.
    pub fn state_bytes(&self) -> Option<StateBytes> {
        self.model.state.as_ref().map(|s| s.bytes(self.tp).expect("checked in KvShape::new"))
    }

    /// Prompt tokens whose KV moves: a Mamba model's prefill stops one
    /// short (decode recomputes the last from the state before it).
    pub fn moved_tokens(&self, prompt: u32) -> u32 {
        if self.model.has_state() && prompt > 1 {
            prompt - 1
        } else {
            prompt
        }
    }

    /// The bytes layer `l` moves for a `prompt`-token request: whole
    /// blocks' worth of tokens for windowed and chunked layers under HMA,
    /// the state once for a state layer.
    pub fn layer_request_bytes(&self, l: u32, prompt: u32) -> u64 {
        let tokens = self.moved_tokens(prompt);
        self.layer_span_bytes(l, 0, tokens, tokens)
    }

    /// Tokens `from..to` of layer `l`'s KV that ends at `end`, as the layer
    /// holds them then (a window's, a chunk's tokens from its first kept
    /// block); a state layer's state where the span is not empty.
    pub fn layer_span_bytes(&self, l: u32, from: u32, to: u32, end: u32) -> u64 {
        match self.moving_kind(l) {
            LayerKind::State => self.state_bytes().map_or(0, |s| s.total()) * (to > from) as u64,
            k => {
                let from = from.max(k.kept_from(end, self.block_size));
                to.saturating_sub(from) as u64 * self.layer_bytes_per_token()
            }
        }
    }

    /// `layer_span_bytes` of every layer.
    pub fn span_bytes(&self, from: u32, to: u32, end: u32) -> u64 {
        (0..self.model.layers).map(|l| self.layer_span_bytes(l, from, to, end)).sum()
    }

    /// The bytes a `prompt`-token request moves, every layer as it moves.
    pub fn request_bytes(&self, prompt: u32) -> u64 {
        (0..self.model.layers).map(|l| self.layer_request_bytes(l, prompt)).sum()
    }

    /// The same moved as blocks, as NixlConnector moves them: a partly
    /// filled last block travels whole.
    pub fn request_block_bytes(&self, prompt: u32) -> u64 {
        (0..self.model.layers).map(|l| self.layer_block_bytes(l, prompt)).sum()
    }

    /// Layer `l`'s blocks (or state) for a `prompt`-token request.
    pub fn layer_block_bytes(&self, l: u32, prompt: u32) -> u64 {
        let tokens = self.moved_tokens(prompt);
        match self.moving_kind(l) {
            LayerKind::State => self.state_bytes().map_or(0, |s| s.total()),
            k => k.moved_blocks(tokens, self.block_size).1 as u64 * self.attention_block_bytes(),
        }
    }

    /// One block of every tensor of an attention layer.
    pub fn attention_block_bytes(&self) -> u64 {
        self.attention_tensors().iter().map(|t| t.1 * self.block_size as u64).sum()
    }

    /// Each kind of layer as it moves (vLLM's KV cache groups), in order of
    /// first appearance: (kind, layers, bytes a `prompt`-token request moves in blocks).
    pub fn groups(&self, prompt: u32) -> Vec<(LayerKind, u32, u64)> {
        let mut out: Vec<(LayerKind, u32, u64)> = Vec::new();
        for l in 0..self.model.layers {
            let (kind, bytes) = (self.moving_kind(l), self.layer_block_bytes(l, prompt));
            match out.iter_mut().find(|g| g.0 == kind) {
                Some(g) => (g.1, g.2) = (g.1 + 1, g.2 + bytes),
                None => out.push((kind, 1, bytes)),
            }
        }
        out
    }

    /// What counting every layer as full attention gives (kvxfer before
    /// hybrid models; vLLM with HMA off for a model without state layers).
    pub fn all_full_block_bytes(&self, prompt: u32) -> u64 {
        self.model.layers as u64 * self.blocks_for(prompt) as u64 * self.attention_block_bytes()
    }

    /// Separately transferred tensors per layer: K and V, or one MLA latent.
    pub fn tensors_per_layer(&self) -> u32 {
        match self.model.attention {
            Attention::Gqa { .. } => 2,
            Attention::Mla { .. } => 1,
        }
    }

    /// KV heads this rank holds (GQA); MLA has none to split.
    pub fn heads_per_rank(&self) -> Option<u32> {
        match self.model.attention {
            Attention::Gqa { kv_heads, .. } => Some((kv_heads / self.tp).max(1)),
            Attention::Mla { .. } => None,
        }
    }

    /// Bytes of one token in one tensor (K, V or latent) of one layer on this rank.
    pub fn tensor_bytes_per_token(&self) -> u64 {
        let dtype = self.model.dtype;
        match self.model.attention {
            Attention::Gqa { head_dim, .. } => {
                self.heads_per_rank().unwrap() as u64 * head_dim as u64 * dtype.bytes()
            }
            Attention::Mla { kv_lora_rank, qk_rope_head_dim } if dtype == Dtype::Fp8DsMla => {
                // fp8 latent + one fp32 scale per 128 values + bf16 rope part.
                kv_lora_rank as u64 + (kv_lora_rank as u64 / 128) * 4 + qk_rope_head_dim as u64 * 2
            }
            Attention::Mla { kv_lora_rank, qk_rope_head_dim } => {
                (kv_lora_rank as u64 + qk_rope_head_dim as u64) * dtype.bytes()
            }
        }
    }

    /// Bytes of one token of one full-attention layer on this rank (K and
    /// V together for GQA; an indexer's keys beside an MLA latent).
    pub fn layer_bytes_per_token(&self) -> u64 {
        self.attention_tensors().iter().map(|t| t.1).sum()
    }

    /// Bytes of one token across all attention layers on this rank, each
    /// in full: what a request moves per token without HMA.
    pub fn bytes_per_token(&self) -> u64 {
        let attention = (0..self.model.layers).filter(|&l| self.model.layer_kind(l).is_attention()).count();
        attention as u64 * self.layer_bytes_per_token()
    }

    pub fn blocks_for(&self, tokens: u32) -> u32 {
        tokens.div_ceil(self.block_size)
    }

    /// Bytes of one block of one tensor of one layer (a NixlConnector descriptor).
    pub fn block_bytes(&self) -> u64 {
        self.block_size as u64 * self.tensor_bytes_per_token()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::presets;

    fn gqa(layers: u32, kv_heads: u32, head_dim: u32) -> ModelSpec {
        ModelSpec {
            name: "t".into(),
            layers,
            attention: Attention::Gqa { kv_heads, head_dim },
            dtype: Dtype::Bf16,
            compute: None,
            compute_missing: None,
            max_context: None,
            layer_kinds: Vec::new(),
            state: None,
            indexer_dim: None,
        }
    }

    #[test]
    fn tp_divides_heads_then_replicates() {
        let m = gqa(80, 8, 128);
        let per_tp = |tp| KvShape::new(m.clone(), tp, 16).unwrap().bytes_per_token();
        assert_eq!(per_tp(1), 327_680);
        assert_eq!(per_tp(2), 163_840);
        assert_eq!(per_tp(8), 40_960);
        // TP 16 > 8 KV heads: each rank keeps one (replicated) head.
        assert_eq!(per_tp(16), 40_960);
        assert!(KvShape::new(m.clone(), 3, 16).is_err());
        assert!(KvShape::new(m, 12, 16).is_err());
    }

    #[test]
    fn mla_is_not_split_by_tp() {
        let m = ModelSpec {
            name: "mla".into(),
            layers: 61,
            attention: Attention::Mla { kv_lora_rank: 512, qk_rope_head_dim: 64 },
            dtype: Dtype::Bf16,
            compute: None,
            compute_missing: None,
            max_context: None,
            layer_kinds: Vec::new(),
            state: None,
            indexer_dim: None,
        };
        let s1 = KvShape::new(m.clone(), 1, 64).unwrap();
        let s8 = KvShape::new(m.clone(), 8, 64).unwrap();
        assert_eq!(s1.bytes_per_token(), 70_272);
        assert_eq!(s8.bytes_per_token(), 70_272);
        assert_eq!(s1.tensors_per_layer(), 1);
        let packed = KvShape::new(ModelSpec { dtype: Dtype::Fp8DsMla, ..m }, 1, 64).unwrap();
        assert_eq!(packed.layer_bytes_per_token(), 656);
        assert_eq!(packed.bytes_per_token(), 40_016);
    }

    /// vLLM's _align_hybrid_block_size, by hand: 64 x cdiv(state page,
    /// 64 x attention page per token); a smaller asked size aligns to itself.
    #[test]
    fn a_state_model_raises_the_block_until_a_page_holds_its_state() {
        let q = presets::lookup("qwen3-next-80b-a3b").unwrap();
        // TP 1: 2 KV heads x 256 x 2 x 2 = 2048 B a token; state 1,097,728 B: 64 x 9.
        assert_eq!(vllm_block_size(&q, 1, None).unwrap(), 576);
        // TP 4: one (replicated) KV head, 1024 B; state / 4 = 274,432 B: 64 x 5.
        assert_eq!(vllm_block_size(&q, 4, None).unwrap(), 320);
        // --block-size 16: 16 x cdiv(1,097,728, 16 x 2048) = 16 x 34.
        assert_eq!(vllm_block_size(&q, 1, Some(16)).unwrap(), 544);
        assert_eq!(vllm_block_size(&presets::lookup("nemotron-nano-9b-v2").unwrap(), 1, None).unwrap(), 1344);
        // Models without state keep the asked size or vLLM 0.34.0's 64.
        let g = presets::lookup("gpt-oss-120b").unwrap();
        assert_eq!(
            (vllm_block_size(&g, 1, None).unwrap(), vllm_block_size(&g, 1, Some(16)).unwrap()),
            (64, 16)
        );
        assert!(KvShape::new(q, 1, 576).unwrap().with_hma(false).is_err());
    }

    #[test]
    fn blocks_round_up() {
        let s = KvShape::new(gqa(32, 8, 128), 1, 16).unwrap();
        assert_eq!(s.blocks_for(128), 8);
        assert_eq!(s.blocks_for(129), 9);
        assert_eq!(s.block_bytes(), 16 * 8 * 128 * 2);
    }

    #[test]
    fn zero_sizes_are_refused() {
        assert!(KvShape::new(gqa(0, 8, 128), 1, 16).is_err());
        assert!(KvShape::new(gqa(32, 0, 128), 1, 16).is_err());
        assert!(KvShape::new(gqa(32, 8, 0), 1, 16).is_err());
        assert!(KvShape::new(gqa(32, 8, 128), 0, 16).is_err());
        assert!(KvShape::new(gqa(32, 8, 128), 1, 0).is_err());
    }
}
