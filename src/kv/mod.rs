//! What a model's KV cache looks like in bytes: layers, heads, head_dim, dtype,
//! MLA latents and the share one tensor-parallel rank holds.
//!
//! GQA/MHA: bytes/token = 2 (K, V) x layers x kv_heads x head_dim x dtype bytes,
//! and a TP rank holds kv_heads/TP heads while TP <= kv_heads (one replicated
//! head beyond). MLA: one latent of (kv_lora_rank + qk_rope_head_dim) per layer,
//! replicated on every TP rank (vLLM NixlConnector compatibility notes).

pub mod compute;
pub mod hf_config;
pub mod pattern;
pub mod presets;

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
        Ok(())
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
        out
    }

    pub fn describe(&self) -> String {
        match self.attention {
            Attention::Gqa { kv_heads, head_dim } => format!(
                "{}: GQA, {} layers, {} KV heads, head_dim {}, {}",
                self.name, self.layers, kv_heads, head_dim, self.dtype
            ),
            Attention::Mla { kv_lora_rank, qk_rope_head_dim } => format!(
                "{}: MLA, {} layers, latent {} + rope {}, {}",
                self.name, self.layers, kv_lora_rank, qk_rope_head_dim, self.dtype
            ),
        }
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
        Ok(KvShape { model, tp, block_size })
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

    /// Bytes of one token of one layer on this rank (K and V together for GQA).
    pub fn layer_bytes_per_token(&self) -> u64 {
        self.tensors_per_layer() as u64 * self.tensor_bytes_per_token()
    }

    /// Bytes of one token across all layers on this rank.
    pub fn bytes_per_token(&self) -> u64 {
        self.model.layers as u64 * self.layer_bytes_per_token()
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

    fn gqa(layers: u32, kv_heads: u32, head_dim: u32) -> ModelSpec {
        ModelSpec {
            name: "t".into(),
            layers,
            attention: Attention::Gqa { kv_heads, head_dim },
            dtype: Dtype::Bf16,
            compute: None,
            compute_missing: None,
            max_context: None,
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
