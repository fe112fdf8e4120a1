//! What a prefill costs, layer by layer: the FLOPs of one forward pass over a
//! prompt, from the model's shape (the fields of its config.json).
//!
//! Per layer and prompt of n tokens:
//! - every linear layer costs 2 x its weights x n (a multiply and an add per
//!   weight per token): the attention projections (q, k, v, o; for MLA the
//!   low-rank q_a/q_b and kv_a/kv_b, as vLLM's prefill runs them) and the
//!   feed-forward network: SwiGLU's gate, up and down (3 x hidden x
//!   intermediate weights), or for a mixture of experts the experts each
//!   token uses (experts per token, plus the shared ones) and the router;
//! - causal attention costs, for each of its n(n+1)/2 (query, key) pairs
//!   and each head, 2 x the q.k width (scores) + 2 x the value width
//!   (weighting the values).
//!
//! Norms, rotary embeddings, softmax and the LM head are left out: a few
//! percent at most. This is the usual estimate (Kaplan et al. 2020, "Scaling
//! Laws for Neural Language Models", table 1: 2N per token plus attention;
//! vLLM's and SemiAnalysis' roofline estimates do the same).

use serde::{Deserialize, Serialize};

/// The attention projections of a layer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Projections {
    /// Multi-head or grouped-query attention.
    Gqa { heads: u32, kv_heads: u32, head_dim: u32 },
    /// DeepSeek's multi-head latent attention; q_lora_rank 0 is a full q.
    Mla {
        heads: u32,
        q_lora_rank: u32,
        kv_lora_rank: u32,
        qk_nope_head_dim: u32,
        qk_rope_head_dim: u32,
        v_head_dim: u32,
    },
}

/// The feed-forward network of the layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Ffn {
    /// SwiGLU MLP in every layer.
    Dense { intermediate: u32 },
    /// Routed experts (`per_token` of `experts`, each `expert_intermediate`
    /// wide) plus `shared` experts as wide; the first `dense_layers` layers
    /// have a dense MLP of `dense_intermediate` instead (DeepSeek's
    /// first_k_dense_replace).
    Moe {
        experts: u32,
        per_token: u32,
        expert_intermediate: u32,
        shared: u32,
        dense_layers: u32,
        dense_intermediate: u32,
    },
}

/// What the prefill estimate needs of a model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeShape {
    pub hidden: u32,
    pub projections: Projections,
    pub ffn: Ffn,
}

impl ComputeShape {
    /// Weights of layer `layer`'s linear layers that one token uses.
    pub fn active_weights(&self, layer: u32) -> f64 {
        let h = self.hidden as f64;
        let attention = match self.projections {
            Projections::Gqa { heads, kv_heads, head_dim } => {
                let (q, kv) = (heads as f64 * head_dim as f64, kv_heads as f64 * head_dim as f64);
                h * q + 2.0 * h * kv + q * h
            }
            Projections::Mla {
                heads,
                q_lora_rank,
                kv_lora_rank,
                qk_nope_head_dim,
                qk_rope_head_dim,
                v_head_dim,
            } => {
                let heads = heads as f64;
                let qk = (qk_nope_head_dim + qk_rope_head_dim) as f64;
                let q = match q_lora_rank {
                    0 => h * heads * qk,
                    r => h * r as f64 + r as f64 * heads * qk,
                };
                let kv_a = h * (kv_lora_rank + qk_rope_head_dim) as f64;
                let kv_b = kv_lora_rank as f64 * heads * (qk_nope_head_dim + v_head_dim) as f64;
                let o = heads * v_head_dim as f64 * h;
                q + kv_a + kv_b + o
            }
        };
        let swiglu = |width: u32| 3.0 * h * width as f64;
        let ffn = match self.ffn {
            Ffn::Dense { intermediate } => swiglu(intermediate),
            Ffn::Moe { dense_layers, dense_intermediate, .. } if layer < dense_layers => {
                swiglu(dense_intermediate)
            }
            Ffn::Moe { experts, per_token, expert_intermediate, shared, .. } => {
                (per_token + shared) as f64 * swiglu(expert_intermediate) + h * experts as f64
            }
        };
        attention + ffn
    }

    /// FLOPs of causal attention over `tokens`, per layer.
    pub fn attention_flops(&self, tokens: u32) -> f64 {
        self.attention_flops_of(super::LayerKind::Full, tokens)
    }

    /// FLOPs of a layer of `kind`'s attention over `tokens`: a sliding
    /// window's query i sees min(i + 1, W) keys, a chunk's its own chunk so far.
    pub fn attention_flops_of(&self, kind: super::LayerKind, tokens: u32) -> f64 {
        let n = tokens as f64;
        let triangle = |k: f64| k * (k + 1.0) / 2.0;
        let pairs = match kind {
            super::LayerKind::SlidingWindow { window } if tokens > window => {
                let w = window as f64;
                triangle(w) + (n - w) * w
            }
            super::LayerKind::ChunkedLocal { chunk } => {
                let (whole, rest) = ((tokens / chunk) as f64, (tokens % chunk) as f64);
                whole * triangle(chunk as f64) + triangle(rest)
            }
            _ => triangle(n),
        };
        let (heads, qk, v) = match self.projections {
            Projections::Gqa { heads, head_dim, .. } => (heads, head_dim, head_dim),
            Projections::Mla { heads, qk_nope_head_dim, qk_rope_head_dim, v_head_dim, .. } => {
                (heads, qk_nope_head_dim + qk_rope_head_dim, v_head_dim)
            }
        };
        pairs * heads as f64 * 2.0 * (qk + v) as f64
    }

    /// FLOPs of layer `layer`'s prefill of a prompt of `tokens`, full attention.
    pub fn layer_flops(&self, layer: u32, tokens: u32) -> f64 {
        self.layer_flops_of(layer, super::LayerKind::Full, tokens)
    }

    /// The same for a layer of `kind` (windowed attention counts its window).
    pub fn layer_flops_of(&self, layer: u32, kind: super::LayerKind, tokens: u32) -> f64 {
        2.0 * self.active_weights(layer) * tokens as f64 + self.attention_flops_of(kind, tokens)
    }
}

#[cfg(test)]
mod tests {
    use crate::kv::presets::lookup;

    fn total(model: &str, tokens: u32) -> f64 {
        let m = lookup(model).unwrap();
        let c = m.compute.expect("the preset knows its shape");
        (0..m.layers).map(|l| c.layer_flops(l, tokens)).sum()
    }

    fn close(got: f64, want: f64) {
        assert!((got - want).abs() <= want * 1e-12, "{got} vs {want}");
    }

    #[test]
    fn llama_3_1_8b_by_hand() {
        // hidden 4096, 32 heads of 128, 8 KV heads, intermediate 14336:
        // q 4096x4096 + k, v 4096x1024 each + o 4096x4096 = 41,943,040 and
        // MLP 3 x 4096 x 14336 = 176,160,768: 218,103,808 weights a layer.
        // 1024 tokens: 2 x 218,103,808 x 1024 = 446,676,598,784, plus
        // attention 1024 x 1025 / 2 pairs x 32 heads x 2 x (128 + 128) =
        // 8,598,323,200; 32 layers: 14,568,797,503,488.
        let c = lookup("llama-3.1-8b").unwrap().compute.unwrap();
        assert_eq!(c.active_weights(0), 218_103_808.0);
        close(c.layer_flops(0, 1024), 455_274_921_984.0);
        close(total("llama-3.1-8b", 1024), 14_568_797_503_488.0);
    }

    #[test]
    fn llama_3_1_70b_by_hand() {
        // hidden 8192, 64 heads of 128, 8 KV heads, intermediate 28672:
        // attention 8192 x 8192 x 2 + 8192 x 1024 x 2 = 150,994,944; MLP
        // 3 x 8192 x 28672 = 704,643,072; 855,638,016 weights a layer.
        // 8192 tokens: 2 x 855,638,016 x 8192 = 14,018,773,254,144 plus
        // 8192 x 8193 / 2 x 64 x 512 = 1,099,645,845,504 a layer; x 80.
        let c = lookup("llama-3.1-70b").unwrap().compute.unwrap();
        assert_eq!(c.active_weights(79), 855_638_016.0);
        close(total("llama-3.1-70b", 8192), 80.0 * (14_018_773_254_144.0 + 1_099_645_845_504.0));
    }

    #[test]
    fn qwen3_235b_a22b_counts_active_experts_only() {
        // hidden 4096, 64 heads of 128, 4 KV heads; 8 of 128 experts of
        // 1536: attention 4096 x 8192 x 2 + 4096 x 512 x 2 = 71,303,168;
        // experts 8 x 3 x 4096 x 1536 = 150,994,944; router 4096 x 128 =
        // 524,288: 222,822,400 weights a token uses per layer (x 94 layers
        // = 20.9 G, the "A22B" with embeddings and head).
        let c = lookup("qwen3-235b-a22b").unwrap().compute.unwrap();
        assert_eq!(c.active_weights(0), 222_822_400.0);
        // 1000 tokens, per layer: 2 x 222,822,400 x 1000 = 445,644,800,000
        // plus 500,500 pairs x 64 x 512 = 16,400,384,000.
        close(c.layer_flops(5, 1000), 462_045_184_000.0);
    }

    #[test]
    fn windows_and_chunks_count_the_pairs_they_see() {
        let c = lookup("llama-3.1-8b").unwrap().compute.unwrap();
        let per_pair = 32.0 * 2.0 * 256.0;
        // Window 4 over 10 tokens: 1 + 2 + 3 + 4 + 6 x 4 = 34 pairs.
        assert_eq!(
            c.attention_flops_of(crate::kv::LayerKind::SlidingWindow { window: 4 }, 10),
            34.0 * per_pair
        );
        // Chunks of 4 over 10 tokens: 10 + 10 + 3 = 23 pairs.
        assert_eq!(
            c.attention_flops_of(crate::kv::LayerKind::ChunkedLocal { chunk: 4 }, 10),
            23.0 * per_pair
        );
        // A window longer than the prompt is full attention: 55 pairs.
        assert_eq!(
            c.attention_flops_of(crate::kv::LayerKind::SlidingWindow { window: 64 }, 10),
            55.0 * per_pair
        );
    }

    #[test]
    fn deepseek_v3_by_hand() {
        // hidden 7168, 128 heads; q: 7168 x 1536 + 1536 x 128 x 192 =
        // 48,758,784; kv_a 7168 x 576 = 4,128,768; kv_b 512 x 128 x 256 =
        // 16,777,216; o 128 x 128 x 7168 = 117,440,512: 187,105,280.
        // Layers 0-2 dense (3 x 7168 x 18432 = 396,361,728): 583,467,008.
        // Later layers: 9 experts (8 routed, 1 shared) x 3 x 7168 x 2048 =
        // 396,361,728 and router 7168 x 256 = 1,835,008: 585,302,016.
        let c = lookup("deepseek-v3").unwrap().compute.unwrap();
        assert_eq!(c.active_weights(0), 583_467_008.0);
        assert_eq!(c.active_weights(3), 585_302_016.0);
        // Attention at 2048 tokens: 2,098,176 pairs x 128 x 2 x (192 + 128).
        assert_eq!(c.attention_flops(2048), 171_882_577_920.0);
        let by_hand = 3.0 * (2.0 * 583_467_008.0 * 2048.0)
            + 58.0 * (2.0 * 585_302_016.0 * 2048.0)
            + 61.0 * 171_882_577_920.0;
        close(total("deepseek-v3", 2048), by_hand);
    }
}
