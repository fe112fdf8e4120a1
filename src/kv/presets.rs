//! Built-in models. Numbers are those of each model's Hugging Face config.json
//! (num_hidden_layers, num_key_value_heads, head_dim or hidden_size /
//! num_attention_heads; kv_lora_rank and qk_rope_head_dim for MLA).

use super::compute::{ComputeShape, Ffn, Projections};
use super::{Attention, Dtype, ModelSpec};
use crate::error::{Error, Result};

struct Preset {
    name: &'static str,
    aliases: &'static [&'static str],
    layers: u32,
    attention: Attention,
    /// For the prefill estimate: hidden_size, num_attention_heads and the
    /// feed-forward network (config.json); None where it is not modelled.
    compute: Option<(u32, u32, Ffn)>,
    /// max_position_embeddings (config.json).
    max_context: u32,
}

const fn gqa(kv_heads: u32, head_dim: u32) -> Attention {
    Attention::Gqa { kv_heads, head_dim }
}

const fn dense(hidden: u32, heads: u32, intermediate: u32) -> Option<(u32, u32, Ffn)> {
    Some((hidden, heads, Ffn::Dense { intermediate }))
}

const fn moe(
    hidden: u32,
    heads: u32,
    experts: u32,
    per_token: u32,
    expert_intermediate: u32,
) -> Option<(u32, u32, Ffn)> {
    Some((
        hidden,
        heads,
        Ffn::Moe {
            experts,
            per_token,
            expert_intermediate,
            shared: 0,
            dense_layers: 0,
            dense_intermediate: 0,
        },
    ))
}

const DEEPSEEK_MLA: Attention = Attention::Mla { kv_lora_rank: 512, qk_rope_head_dim: 64 };

const PRESETS: &[Preset] = &[
    Preset {
        name: "llama-3.1-8b",
        aliases: &["llama3.1-8b", "meta-llama-3.1-8b"],
        layers: 32,
        attention: gqa(8, 128),
        compute: dense(4096, 32, 14336),
        max_context: 131_072,
    },
    Preset {
        name: "llama-3.1-70b",
        aliases: &["llama3.1-70b", "llama-3.3-70b"],
        layers: 80,
        attention: gqa(8, 128),
        compute: dense(8192, 64, 28672),
        max_context: 131_072,
    },
    Preset {
        name: "llama-3.1-405b",
        aliases: &["llama3.1-405b"],
        layers: 126,
        attention: gqa(8, 128),
        compute: dense(16384, 128, 53248),
        max_context: 131_072,
    },
    Preset {
        name: "qwen2.5-7b",
        aliases: &["qwen-2.5-7b"],
        layers: 28,
        attention: gqa(4, 128),
        compute: dense(3584, 28, 18944),
        max_context: 32_768,
    },
    Preset {
        name: "qwen2.5-72b",
        aliases: &["qwen-2.5-72b"],
        layers: 80,
        attention: gqa(8, 128),
        compute: dense(8192, 64, 29568),
        max_context: 32_768,
    },
    Preset {
        name: "qwen3-8b",
        aliases: &[],
        layers: 36,
        attention: gqa(8, 128),
        compute: dense(4096, 32, 12288),
        max_context: 40_960,
    },
    Preset {
        name: "qwen3-32b",
        aliases: &[],
        layers: 64,
        attention: gqa(8, 128),
        compute: dense(5120, 64, 25600),
        max_context: 40_960,
    },
    Preset {
        name: "qwen3-235b-a22b",
        aliases: &["qwen3-235b"],
        layers: 94,
        attention: gqa(4, 128),
        compute: moe(4096, 64, 128, 8, 1536),
        max_context: 40_960,
    },
    Preset {
        name: "mistral-7b",
        aliases: &["mistral-7b-v0.3"],
        layers: 32,
        attention: gqa(8, 128),
        compute: dense(4096, 32, 14336),
        max_context: 32_768,
    },
    Preset {
        name: "mixtral-8x7b",
        aliases: &[],
        layers: 32,
        attention: gqa(8, 128),
        compute: moe(4096, 32, 8, 2, 14336),
        max_context: 32_768,
    },
    // Half of gpt-oss's layers use a 128-token sliding window; this counts every
    // layer in full, the upper bound a connector moves without hybrid-KV trimming.
    // Its prefill (windowed attention, sinks) is not modelled: --prefill-ms.
    Preset {
        name: "gpt-oss-120b",
        aliases: &[],
        layers: 36,
        attention: gqa(8, 64),
        compute: None,
        max_context: 131_072,
    },
    Preset {
        name: "deepseek-v3",
        aliases: &["deepseek-r1", "deepseek-v3.1"],
        layers: 61,
        attention: DEEPSEEK_MLA,
        // 256 routed experts of 2048 (8 a token), 1 shared, the first 3
        // layers dense (first_k_dense_replace) with intermediate 18432.
        compute: Some((
            7168,
            128,
            Ffn::Moe {
                experts: 256,
                per_token: 8,
                expert_intermediate: 2048,
                shared: 1,
                dense_layers: 3,
                dense_intermediate: 18432,
            },
        )),
        max_context: 163_840,
    },
];

/// The preset's model in bf16 (the dtype vLLM uses for KV unless told otherwise).
pub fn lookup(name: &str) -> Result<ModelSpec> {
    let want = name.trim().to_ascii_lowercase();
    let want = want.rsplit('/').next().unwrap_or(&want); // accept "meta-llama/..." style ids
    PRESETS
        .iter()
        .find(|p| p.name == want || p.aliases.contains(&want))
        .map(|p| ModelSpec {
            name: p.name.to_string(),
            layers: p.layers,
            attention: p.attention.clone(),
            dtype: Dtype::Bf16,
            compute: p.compute.clone().map(|(hidden, heads, ffn)| ComputeShape {
                hidden,
                projections: match p.attention {
                    Attention::Gqa { kv_heads, head_dim } => Projections::Gqa { heads, kv_heads, head_dim },
                    // DeepSeek-V3's: q_lora_rank 1536, qk_nope_head_dim 128, v_head_dim 128.
                    Attention::Mla { kv_lora_rank, qk_rope_head_dim } => Projections::Mla {
                        heads,
                        q_lora_rank: 1536,
                        kv_lora_rank,
                        qk_nope_head_dim: 128,
                        qk_rope_head_dim,
                        v_head_dim: 128,
                    },
                },
                ffn,
            }),
            compute_missing: None,
            max_context: Some(p.max_context),
        })
        .ok_or_else(|| {
            Error::usage(format!(
                "unknown model '{name}'; built-in models: {} (or give --model-config PATH/config.json, \
                 or --layers/--kv-heads/--head-dim)",
                names().join(", ")
            ))
        })
}

pub fn names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.name).collect()
}

/// The other names a preset answers to (deepseek-v3: deepseek-r1, ...).
pub fn aliases(name: &str) -> &'static [&'static str] {
    PRESETS.iter().find(|p| p.name == name).map_or(&[], |p| p.aliases)
}

/// vLLM's default tokens per block: 16 for FlashAttention on CUDA, 64 for the
/// Hopper MLA backends (FlashMLA forces a multiple of 64).
pub fn default_block_size(attention: &Attention) -> u32 {
    match attention {
        Attention::Gqa { .. } => 16,
        Attention::Mla { .. } => 64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvShape;

    fn bytes_per_token(name: &str, tp: u32) -> u64 {
        KvShape::new(lookup(name).unwrap(), tp, 16).unwrap().bytes_per_token()
    }

    /// Hand-computed: 2 x layers x kv_heads x head_dim x 2 bytes (bf16), and
    /// (512 + 64) x 2 x 61 for DeepSeek's MLA; matches landscape.md section 6.2.
    #[test]
    fn every_preset_pinned_at_tp1() {
        let expected: &[(&str, u64)] = &[
            ("llama-3.1-8b", 131_072),
            ("llama-3.1-70b", 327_680),
            ("llama-3.1-405b", 516_096),
            ("qwen2.5-7b", 57_344),
            ("qwen2.5-72b", 327_680),
            ("qwen3-8b", 147_456),
            ("qwen3-32b", 262_144),
            ("qwen3-235b-a22b", 192_512),
            ("mistral-7b", 131_072),
            ("mixtral-8x7b", 131_072),
            ("gpt-oss-120b", 73_728),
            ("deepseek-v3", 70_272),
        ];
        assert_eq!(expected.len(), PRESETS.len(), "pin every preset");
        for (name, bytes) in expected {
            assert_eq!(bytes_per_token(name, 1), *bytes, "{name}");
        }
    }

    #[test]
    fn totals_match_the_landscape_table() {
        // Llama-3.1-70B, 32K tokens: 10 GiB; Qwen3-32B 8K: 2 GiB; DeepSeek 1K: 68.6 MiB.
        assert_eq!(bytes_per_token("llama-3.1-70b", 1) * 32768, 10 << 30);
        assert_eq!(bytes_per_token("qwen3-32b", 1) * 8192, 2 << 30);
        assert_eq!(bytes_per_token("deepseek-v3", 1) * 1024, 71_958_528);
    }

    #[test]
    fn tp_shares() {
        // Llama-70B at TP8: one KV head per rank, 40 KiB per token.
        assert_eq!(bytes_per_token("llama-3.1-70b", 8), 40_960);
        // Qwen2.5-7B has 4 KV heads: TP4 gives one head per rank, TP8 replicates it.
        assert_eq!(bytes_per_token("qwen2.5-7b", 4), 14_336);
        assert_eq!(bytes_per_token("qwen2.5-7b", 8), 14_336);
        // MLA is replicated, not split.
        assert_eq!(bytes_per_token("deepseek-v3", 8), 70_272);
    }

    #[test]
    fn lookup_is_forgiving_about_spelling_but_not_names() {
        assert_eq!(lookup("Llama-3.1-8B").unwrap().name, "llama-3.1-8b");
        assert_eq!(lookup("deepseek-ai/DeepSeek-R1").unwrap().name, "deepseek-v3");
        let err = lookup("llama-9").unwrap_err();
        assert!(err.message.contains("unknown model 'llama-9'"));
        assert!(err.message.contains("qwen3-32b"));
    }
}
