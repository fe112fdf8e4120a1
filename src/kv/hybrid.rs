//! Hybrid models: layers that are not full attention, and what vLLM's hybrid
//! KV cache manager (HMA) keeps of them, so what a P/D connector moves.
//!
//! Every rule here is read from vLLM 0.34.0 (PyPI sdist), named per item:
//! - which blocks a sliding-window or chunked-local layer still holds when
//!   prefill ends: `v1/core/single_type_kv_cache_manager.py`
//!   (`get_num_skipped_tokens`, `allocate_external_computed_blocks`: skipped
//!   blocks are nulls, `KVCacheBlocks.get_unhashed_block_ids_all_groups`
//!   drops them), clipped to `cdiv(window, block) + 1` by
//!   `kv_connector/v1/nixl/base_scheduler.py` (`get_exchange_clipped_blocks`);
//! - Mamba2 and gated-delta-net state shapes: `model_executor/layers/mamba/
//!   mamba_utils.py` (`mamba2_state_shape`, `gated_delta_net_state_shape`,
//!   `extra_groups_for_head_shards`), moved per layer as conv sub-projections
//!   plus the SSM state (`kv_connector/v1/ssm_conv_transfer_utils.py`
//!   `derive_mamba_conv_split`, nixl `base_worker.py` `_build_mamba_local`,
//!   DS conv layout);
//! - prefill stops one token short for Mamba models (`base_scheduler.py`
//!   `_prefill_backoff`: decode recomputes h(N) from h(N-1));
//! - the attention block size of a state model: `platforms/interface.py`
//!   `_align_hybrid_block_size`.

use super::Dtype;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What one layer's attention or state is, as vLLM's KV cache specs say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LayerKind {
    /// Every token's K and V (FullAttentionSpec, MLAAttentionSpec).
    Full,
    /// The last `window` tokens (SlidingWindowSpec).
    SlidingWindow { window: u32 },
    /// The current chunk of `chunk` tokens (ChunkedLocalAttentionSpec).
    ChunkedLocal { chunk: u32 },
    /// A fixed-size recurrent state per request (MambaSpec): the model's `StateSpec`.
    State,
}

impl LayerKind {
    pub fn is_attention(self) -> bool {
        self != LayerKind::State
    }

    /// Tokens of an `n`-token prompt this layer no longer attends to
    /// (`get_num_skipped_tokens`; the Mamba manager's is not about tokens).
    pub fn skipped_tokens(self, n: u32) -> u32 {
        match self {
            LayerKind::Full | LayerKind::State => 0,
            // max(0, n - window + 1)
            LayerKind::SlidingWindow { window } => (n + 1).saturating_sub(window),
            LayerKind::ChunkedLocal { chunk } => n / chunk * chunk,
        }
    }

    /// The blocks of an `n`-token request this layer moves under HMA, as
    /// (first block, count): decode allocates nulls for the skipped whole
    /// blocks and real ones after, the connector drops the nulls and keeps at
    /// most `cdiv(window, block) + 1` of a sliding window's.
    pub fn moved_blocks(self, n: u32, block: u32) -> (u32, u32) {
        let all = n.div_ceil(block);
        let first = (self.skipped_tokens(n) / block).min(all);
        let count = match self {
            LayerKind::SlidingWindow { window } => (all - first).min(window.div_ceil(block) + 1),
            _ => all - first,
        };
        (all - count, count)
    }

    /// The first token of the first block this layer still holds when KV
    /// ends at `end` (0 for full attention and state; `end` or past it
    /// where it holds none, as a chunk that has just begun).
    pub fn kept_from(self, end: u32, block: u32) -> u32 {
        match self {
            LayerKind::Full | LayerKind::State => 0,
            k => k.moved_blocks(end, block).0 * block,
        }
    }

    pub fn label(self) -> String {
        match self {
            LayerKind::Full => "full attention".into(),
            LayerKind::SlidingWindow { window } => format!("sliding window {window}"),
            LayerKind::ChunkedLocal { chunk } => format!("chunked local {chunk}"),
            LayerKind::State => "state".into(),
        }
    }
}

impl fmt::Display for LayerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label())
    }
}

/// The recurrent layers' shape, global (before TP), as the model's config gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StateKind {
    /// Mamba2 (Nemotron-H, Granite-4, ...): conv over [x, B, C], SSM (heads, head_dim, state).
    Mamba2 { intermediate: u32, n_groups: u32, state_size: u32, heads: u32, head_dim: u32 },
    /// Gated delta net (Qwen3-Next): conv over [q, k, v], SSM (v_heads, v_dim, k_dim).
    GatedDeltaNet { k_heads: u32, v_heads: u32, k_dim: u32, v_dim: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StateSpec {
    #[serde(flatten)]
    pub kind: StateKind,
    pub conv_kernel: u32,
    /// vLLM's mamba_cache_dtype "auto": the model's dtype.
    pub conv_dtype: Dtype,
    /// mamba_ssm_cache_dtype: "auto" is the conv dtype, but vLLM sets
    /// float32 for Nemotron-H unless its config says otherwise
    /// (`model_executor/models/config.py` NemotronHForCausalLMConfig).
    pub ssm_dtype: Dtype,
}

/// One rank's state of one layer, in bytes: the conv sub-projections as
/// they lie in the DS layout (dim-first, so each is contiguous), then the SSM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateBytes {
    /// (offset in the state page, bytes) of each conv sub-projection.
    pub conv: Vec<(u64, u64)>,
    pub ssm: u64,
}

impl StateBytes {
    pub fn conv_bytes(&self) -> u64 {
        self.conv.iter().map(|c| c.1).sum()
    }
    /// Conv and SSM: what one layer moves per request.
    pub fn total(&self) -> u64 {
        self.conv_bytes() + self.ssm
    }
    /// Every region as (offset in the page, bytes): conv sub-projections, then the SSM.
    pub fn regions(&self) -> Vec<(u64, u64)> {
        let mut out = self.conv.clone();
        out.push((self.conv_bytes(), self.ssm));
        out
    }
}

impl StateSpec {
    pub fn validate(&self, model: &str) -> Result<()> {
        let dims: Vec<u32> = match self.kind {
            StateKind::Mamba2 { intermediate, n_groups, state_size, heads, head_dim } => {
                vec![intermediate, n_groups, state_size, heads, head_dim]
            }
            StateKind::GatedDeltaNet { k_heads, v_heads, k_dim, v_dim } => {
                vec![k_heads, v_heads, k_dim, v_dim]
            }
        };
        if dims.contains(&0) || self.conv_kernel < 2 {
            return Err(Error::usage(format!(
                "model '{model}': its state layers need every dimension at least 1 and a conv kernel of 2 or more"
            )));
        }
        if let Some(d) = dims.iter().find(|d| **d > super::MOST_DIM) {
            return Err(Error::usage(format!(
                "model '{model}': state dimension {d} is more than kvxfer takes ({})",
                super::MOST_DIM
            )));
        }
        Ok(())
    }

    /// A rank's state at TP `tp`, or why that TP does not divide it (vLLM's `divide` asserts).
    pub fn bytes(&self, tp: u32) -> Result<StateBytes> {
        let split = |what: &str, n: u32| -> Result<u64> {
            if !n.is_multiple_of(tp) {
                return Err(Error::usage(format!(
                    "--tp {tp} does not divide the state layers' {what} ({n})"
                )));
            }
            Ok((n / tp) as u64)
        };
        let rows = (self.conv_kernel - 1) as u64; // conv_kernel - 1 (no speculative tokens)
        let (conv_dtype, ssm_dtype) = (self.conv_dtype.bytes(), self.ssm_dtype.bytes());
        let (dims, ssm) = match self.kind {
            StateKind::Mamba2 { intermediate, n_groups, state_size, heads, head_dim } => {
                // Groups not divisible by TP are replicated up to TP (extra_groups_for_head_shards).
                // n_groups + (tp - n_groups) where TP does not divide them: TP groups.
                let groups = if n_groups % tp == 0 { n_groups } else { tp };
                let x = split("intermediate size", intermediate)?;
                let bc = split("groups x state", groups * state_size)?;
                let ssm = split("heads", heads)? * head_dim as u64 * state_size as u64;
                (vec![x, bc, bc], ssm)
            }
            StateKind::GatedDeltaNet { k_heads, v_heads, k_dim, v_dim } => {
                let k = split("key heads x dim", k_heads * k_dim)?;
                let v = split("value heads x dim", v_heads * v_dim)?;
                let ssm = split("value heads", v_heads)? * v_dim as u64 * k_dim as u64;
                (vec![k, k, v], ssm)
            }
        };
        let mut at = 0;
        let conv = dims
            .into_iter()
            .map(|d| {
                let region = (at, d * rows * conv_dtype);
                at += region.1;
                region
            })
            .collect();
        Ok(StateBytes { conv, ssm: ssm * ssm_dtype })
    }
}

/// A model's layers as a short pattern: "18 x sliding window 128 + 18 x full
/// attention" in order of first appearance.
pub fn describe_kinds(kinds: &[LayerKind]) -> String {
    let mut counts: Vec<(LayerKind, usize)> = Vec::new();
    for k in kinds {
        match counts.iter_mut().find(|(c, _)| c == k) {
            Some((_, n)) => *n += 1,
            None => counts.push((*k, 1)),
        }
    }
    counts.iter().map(|(k, n)| format!("{n} x {k}")).collect::<Vec<_>>().join(" + ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skipped_tokens_follow_vllm_docstrings() {
        // single_type_kv_cache_manager.py's examples.
        assert_eq!(LayerKind::SlidingWindow { window: 4 }.skipped_tokens(7), 4);
        assert_eq!(LayerKind::ChunkedLocal { chunk: 8 }.skipped_tokens(13), 8);
        assert_eq!(LayerKind::ChunkedLocal { chunk: 8 }.skipped_tokens(8), 8);
        assert_eq!(LayerKind::ChunkedLocal { chunk: 8 }.skipped_tokens(7), 0);
        assert_eq!(LayerKind::SlidingWindow { window: 128 }.skipped_tokens(100), 0);
    }

    #[test]
    fn moved_blocks_of_each_kind() {
        // gpt-oss's 128-token window, blocks of 64, 32k prompt: tokens 32641..
        // are kept, so blocks 510 and 511 (of 512) move.
        assert_eq!(LayerKind::SlidingWindow { window: 128 }.moved_blocks(32768, 64), (510, 2));
        // 1000 tokens, blocks of 16: skip 873 tokens = 54 blocks; 63 - 54 = 9 = cdiv(128,16) + 1.
        assert_eq!(LayerKind::SlidingWindow { window: 128 }.moved_blocks(1000, 16), (54, 9));
        // A short prompt keeps all its blocks.
        assert_eq!(LayerKind::SlidingWindow { window: 1024 }.moved_blocks(100, 64), (0, 2));
        // Chunked 8192, blocks of 64: 10000 tokens are in chunk 1 (8192..10000): 29 blocks.
        assert_eq!(LayerKind::ChunkedLocal { chunk: 8192 }.moved_blocks(10000, 64), (128, 29));
        // A prompt ending on a chunk boundary: the next token starts a new chunk, nothing moves.
        assert_eq!(LayerKind::ChunkedLocal { chunk: 8192 }.moved_blocks(8192, 64), (128, 0));
        assert_eq!(LayerKind::Full.moved_blocks(1000, 64), (0, 16));
    }

    #[test]
    fn gated_delta_net_state_of_qwen3_next() {
        // Qwen3-Next: 16 key heads, 32 value heads, dims 128, kernel 4, bf16.
        let s = StateSpec {
            kind: StateKind::GatedDeltaNet { k_heads: 16, v_heads: 32, k_dim: 128, v_dim: 128 },
            conv_kernel: 4,
            conv_dtype: Dtype::Bf16,
            ssm_dtype: Dtype::Bf16,
        };
        let b = s.bytes(1).unwrap();
        // conv dim 16*128*2 + 32*128 = 8192, x 3 rows x 2 bytes; SSM 32 x 128 x 128 x 2.
        assert_eq!(b.conv, vec![(0, 2048 * 3 * 2), (12_288, 2048 * 3 * 2), (24_576, 4096 * 3 * 2)]);
        assert_eq!((b.conv_bytes(), b.ssm, b.total()), (49_152, 1_048_576, 1_097_728));
        assert_eq!(s.bytes(4).unwrap().total(), 1_097_728 / 4);
        assert!(s.bytes(3).is_err());
    }

    #[test]
    fn mamba2_replicates_groups_that_tp_does_not_divide() {
        let s = StateSpec {
            kind: StateKind::Mamba2 {
                intermediate: 8192,
                n_groups: 8,
                state_size: 128,
                heads: 128,
                head_dim: 64,
            },
            conv_kernel: 4,
            conv_dtype: Dtype::Bf16,
            ssm_dtype: Dtype::Fp32,
        };
        let b = s.bytes(1).unwrap();
        // conv dim 8192 + 2 x 8 x 128 = 10240, x 3 rows x 2 bytes; SSM 128 x 64 x 128 x 4.
        assert_eq!((b.conv_bytes(), b.ssm), (10_240 * 3 * 2, 4_194_304));
        // TP 16 > 8 groups: 16 groups, one per rank.
        let b16 = s.bytes(16).unwrap();
        assert_eq!(b16.conv, vec![(0, 512 * 6), (3072, 128 * 6), (3840, 128 * 6)]);
    }
}
