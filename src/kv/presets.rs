//! Built-in models. Numbers are those of each model's Hugging Face config.json
//! (num_hidden_layers, num_key_value_heads, head_dim or hidden_size /
//! num_attention_heads; kv_lora_rank and qk_rope_head_dim for MLA).

use super::compute::{ComputeShape, Ffn, Projections};
use super::{Attention, Dtype, LayerKind, ModelSpec, StateKind, StateSpec};
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
    /// Hybrid models: layer `l`'s kind (None: every layer full attention).
    kinds: Option<fn(u32) -> LayerKind>,
    state: Option<StateSpec>,
    /// DeepSeek-V3.2's index_head_dim.
    indexer_dim: Option<u32>,
}

const FULL: Option<fn(u32) -> LayerKind> = None;

/// gpt-oss: `layer_types` alternates, sliding first (vLLM gpt_oss.py:
/// `sliding_window if layer_idx % 2 == 0`), 128 tokens.
fn gpt_oss_layer(l: u32) -> LayerKind {
    if l.is_multiple_of(2) {
        LayerKind::SlidingWindow { window: 128 }
    } else {
        LayerKind::Full
    }
}

/// Gemma-3: five sliding layers of 1024 tokens, then one global
/// (sliding_window_pattern 6; vLLM gemma3.py reads `layer_types`).
fn gemma3_layer(l: u32) -> LayerKind {
    if (l + 1).is_multiple_of(6) {
        LayerKind::Full
    } else {
        LayerKind::SlidingWindow { window: 1024 }
    }
}

/// Llama-4: every fourth layer is NoPE and global, the rest chunked over
/// 8192 tokens (no_rope_layers; vLLM llama4.py: chunked where the layer
/// uses RoPE and attention_chunk_size is set).
fn llama4_layer(l: u32) -> LayerKind {
    if (l + 1).is_multiple_of(4) {
        LayerKind::Full
    } else {
        LayerKind::ChunkedLocal { chunk: 8192 }
    }
}

/// Qwen3-Next: full attention every fourth layer (full_attention_interval
/// 4), gated delta net between (vLLM qwen3_next.py `layer_types`).
fn qwen3_next_layer(l: u32) -> LayerKind {
    if (l + 1).is_multiple_of(4) {
        LayerKind::Full
    } else {
        LayerKind::State
    }
}

/// NVIDIA-Nemotron-Nano-9B-v2's hybrid_override_pattern (56 layers); its
/// cache layers only count ('M' Mamba2, '*' attention; MLP layers '-'
/// hold no cache; vLLM nemotron_h.py indexes the pattern per layer).
const NEMOTRON_NANO_9B_V2: &str = "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-";

fn nemotron_h_layer(l: u32) -> LayerKind {
    match NEMOTRON_NANO_9B_V2.chars().filter(|c| *c != '-').nth(l as usize) {
        Some('*') => LayerKind::Full,
        _ => LayerKind::State,
    }
}

const QWEN3_NEXT_STATE: StateSpec = StateSpec {
    kind: StateKind::GatedDeltaNet { k_heads: 16, v_heads: 32, k_dim: 128, v_dim: 128 },
    conv_kernel: 4,
    conv_dtype: Dtype::Bf16,
    ssm_dtype: Dtype::Bf16,
};

const NEMOTRON_NANO_STATE: StateSpec = StateSpec {
    // mamba_num_heads 128 x mamba_head_dim 80 (nemotron_h.py: intermediate = heads x head_dim).
    kind: StateKind::Mamba2 { intermediate: 10240, n_groups: 8, state_size: 128, heads: 128, head_dim: 80 },
    conv_kernel: 4,
    conv_dtype: Dtype::Bf16,
    // vLLM's NemotronHForCausalLMConfig: float32 unless the config says.
    ssm_dtype: Dtype::Fp32,
};

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

/// DeepSeek-V3's (and V3.2's) prefill shape: 256 routed experts of 2048
/// (8 a token), 1 shared, the first 3 layers dense (first_k_dense_replace)
/// with intermediate 18432.
const DEEPSEEK_V3_COMPUTE: Option<(u32, u32, Ffn)> = Some((
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
));

const DEEPSEEK_MLA: Attention = Attention::Mla { kv_lora_rank: 512, qk_rope_head_dim: 64 };

const PRESETS: &[Preset] = &[
    Preset {
        name: "llama-3.1-8b",
        aliases: &["llama3.1-8b", "meta-llama-3.1-8b"],
        layers: 32,
        attention: gqa(8, 128),
        compute: dense(4096, 32, 14336),
        max_context: 131_072,
        kinds: FULL,
        state: None,
        indexer_dim: None,
    },
    Preset {
        name: "llama-3.1-70b",
        aliases: &["llama3.1-70b", "llama-3.3-70b"],
        layers: 80,
        attention: gqa(8, 128),
        compute: dense(8192, 64, 28672),
        max_context: 131_072,
        kinds: FULL,
        state: None,
        indexer_dim: None,
    },
    Preset {
        name: "llama-3.1-405b",
        aliases: &["llama3.1-405b"],
        layers: 126,
        attention: gqa(8, 128),
        compute: dense(16384, 128, 53248),
        max_context: 131_072,
        kinds: FULL,
        state: None,
        indexer_dim: None,
    },
    Preset {
        name: "qwen2.5-7b",
        aliases: &["qwen-2.5-7b"],
        layers: 28,
        attention: gqa(4, 128),
        compute: dense(3584, 28, 18944),
        max_context: 32_768,
        kinds: FULL,
        state: None,
        indexer_dim: None,
    },
    Preset {
        name: "qwen2.5-72b",
        aliases: &["qwen-2.5-72b"],
        layers: 80,
        attention: gqa(8, 128),
        compute: dense(8192, 64, 29568),
        max_context: 32_768,
        kinds: FULL,
        state: None,
        indexer_dim: None,
    },
    Preset {
        name: "qwen3-8b",
        aliases: &[],
        layers: 36,
        attention: gqa(8, 128),
        compute: dense(4096, 32, 12288),
        max_context: 40_960,
        kinds: FULL,
        state: None,
        indexer_dim: None,
    },
    Preset {
        name: "qwen3-32b",
        aliases: &[],
        layers: 64,
        attention: gqa(8, 128),
        compute: dense(5120, 64, 25600),
        max_context: 40_960,
        kinds: FULL,
        state: None,
        indexer_dim: None,
    },
    Preset {
        name: "qwen3-235b-a22b",
        aliases: &["qwen3-235b"],
        layers: 94,
        attention: gqa(4, 128),
        compute: moe(4096, 64, 128, 8, 1536),
        max_context: 40_960,
        kinds: FULL,
        state: None,
        indexer_dim: None,
    },
    Preset {
        name: "mistral-7b",
        aliases: &["mistral-7b-v0.3"],
        layers: 32,
        attention: gqa(8, 128),
        compute: dense(4096, 32, 14336),
        max_context: 32_768,
        kinds: FULL,
        state: None,
        indexer_dim: None,
    },
    Preset {
        name: "mixtral-8x7b",
        aliases: &[],
        layers: 32,
        attention: gqa(8, 128),
        compute: moe(4096, 32, 8, 2, 14336),
        max_context: 32_768,
        kinds: FULL,
        state: None,
        indexer_dim: None,
    },
    Preset {
        name: "deepseek-v3",
        aliases: &["deepseek-r1", "deepseek-v3.1"],
        layers: 61,
        attention: DEEPSEEK_MLA,
        compute: DEEPSEEK_V3_COMPUTE,
        max_context: 163_840,
        kinds: FULL,
        state: None,
        indexer_dim: None,
    },
    // Hybrid models (issue 35). Shapes from each model's config.json; layer
    // patterns as vLLM 0.34.0's model files read them (see each fn above).
    Preset {
        name: "gpt-oss-120b",
        aliases: &[],
        layers: 36,
        attention: gqa(8, 64),
        compute: moe(2880, 64, 128, 4, 2880),
        max_context: 131_072,
        kinds: Some(gpt_oss_layer),
        state: None,
        indexer_dim: None,
    },
    Preset {
        name: "gpt-oss-20b",
        aliases: &[],
        layers: 24,
        attention: gqa(8, 64),
        compute: moe(2880, 64, 32, 4, 2880),
        max_context: 131_072,
        kinds: Some(gpt_oss_layer),
        state: None,
        indexer_dim: None,
    },
    Preset {
        name: "gemma-3-27b",
        aliases: &["gemma-3-27b-it"],
        layers: 62,
        attention: gqa(16, 128),
        compute: dense(5376, 32, 21504),
        max_context: 131_072,
        kinds: Some(gemma3_layer),
        state: None,
        indexer_dim: None,
    },
    Preset {
        name: "llama-4-scout",
        aliases: &["llama-4-scout-17b-16e", "llama-4-scout-17b-16e-instruct"],
        layers: 48,
        attention: gqa(8, 128),
        // 16 experts of 8192, one a token, and a shared expert as wide.
        compute: Some((
            5120,
            40,
            Ffn::Moe {
                experts: 16,
                per_token: 1,
                expert_intermediate: 8192,
                shared: 1,
                dense_layers: 0,
                dense_intermediate: 0,
            },
        )),
        max_context: 10_485_760,
        kinds: Some(llama4_layer),
        state: None,
        indexer_dim: None,
    },
    Preset {
        name: "llama-4-maverick",
        aliases: &["llama-4-maverick-17b-128e", "llama-4-maverick-17b-128e-instruct"],
        layers: 48,
        attention: gqa(8, 128),
        // MoE every other layer (interleave_moe_layer_step 2) is not
        // modelled: --prefill-ms.
        compute: None,
        max_context: 1_048_576,
        kinds: Some(llama4_layer),
        state: None,
        indexer_dim: None,
    },
    Preset {
        name: "qwen3-next-80b-a3b",
        aliases: &["qwen3-next-80b-a3b-instruct", "qwen3-next-80b-a3b-thinking", "qwen3-next"],
        layers: 48,
        attention: gqa(2, 256),
        // Gated delta net compute is not modelled: --prefill-ms.
        compute: None,
        max_context: 262_144,
        kinds: Some(qwen3_next_layer),
        state: Some(QWEN3_NEXT_STATE),
        indexer_dim: None,
    },
    Preset {
        name: "nemotron-nano-9b-v2",
        aliases: &["nvidia-nemotron-nano-9b-v2"],
        // 56 layers, of which 27 Mamba2 and 4 attention hold a cache.
        layers: 31,
        attention: gqa(8, 128),
        compute: None,
        max_context: 131_072,
        kinds: Some(nemotron_h_layer),
        state: Some(NEMOTRON_NANO_STATE),
        indexer_dim: None,
    },
    Preset {
        name: "deepseek-v3.2",
        aliases: &["deepseek-v3.2-exp"],
        layers: 61,
        attention: DEEPSEEK_MLA,
        compute: DEEPSEEK_V3_COMPUTE,
        max_context: 163_840,
        kinds: FULL,
        state: None,
        indexer_dim: Some(128),
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
            layer_kinds: p.kinds.map(|k| (0..p.layers).map(k).collect()).unwrap_or_default(),
            state: p.state,
            indexer_dim: p.indexer_dim,
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
            ("deepseek-v3", 70_272),
            // Hybrid models: every attention layer in full (HMA off), by hand.
            ("gpt-oss-120b", 73_728),        // 36 x 2 x 8 x 64 x 2
            ("gpt-oss-20b", 49_152),         // 24 x 2 x 8 x 64 x 2
            ("gemma-3-27b", 507_904),        // 62 x 2 x 16 x 128 x 2
            ("llama-4-scout", 196_608),      // 48 x 2 x 8 x 128 x 2
            ("llama-4-maverick", 196_608),   // the same attention
            ("qwen3-next-80b-a3b", 24_576),  // 12 attention layers x 2 x 2 x 256 x 2
            ("nemotron-nano-9b-v2", 16_384), // 4 attention layers x 2 x 8 x 128 x 2
            ("deepseek-v3.2", 78_324),       // 61 x (576 x 2 + indexer 128 + 4)
        ];
        assert_eq!(expected.len(), PRESETS.len(), "pin every preset");
        for (name, bytes) in expected {
            assert_eq!(bytes_per_token(name, 1), *bytes, "{name}");
        }
    }

    /// What NixlConnector moves for a request of each hybrid preset at
    /// TP 1 with vLLM's hybrid KV cache manager, whole blocks, by hand
    /// from vLLM 0.34.0's rules (kv/hybrid.rs): 1k, 32k and 128k tokens.
    #[test]
    fn hybrid_presets_move_what_vllm_moves() {
        let moved = |name: &str, tokens: u32| {
            let m = lookup(name).unwrap();
            let block = crate::kv::vllm_block_size(&m, 1, None).unwrap();
            KvShape::new(m, 1, block).unwrap().request_block_bytes(tokens)
        };
        // gpt-oss-120b: blocks of 64 x 2048 B = 131,072 B per layer. Full
        // layers (18) move cdiv(N, 64) blocks; windowed ones (18) keep
        // blocks from (N - 127) / 64 on: 2 at each length here.
        // 1k: 18 x 16 + 18 x 2 blocks; 32k: 18 x 512 + 36; 128k: 18 x 2048 + 36.
        assert_eq!(moved("gpt-oss-120b", 1024), (18 * 16 + 36) * 131_072); // 42,467,328
        assert_eq!(moved("gpt-oss-120b", 32768), (18 * 512 + 36) * 131_072); // 1,212,678,144
        assert_eq!(moved("gpt-oss-120b", 131_072), (18 * 2048 + 36) * 131_072); // 4,836,556,800
                                                                                // gpt-oss-20b: 12 full and 12 windowed layers.
        assert_eq!(moved("gpt-oss-20b", 1024), (12 * 16 + 24) * 131_072);
        assert_eq!(moved("gpt-oss-20b", 32768), (12 * 512 + 24) * 131_072);
        assert_eq!(moved("gpt-oss-20b", 131_072), (12 * 2048 + 24) * 131_072);
        // gemma-3-27b: 2 x 16 x 128 x 2 = 8192 B a token, 524,288 B a block;
        // 10 full layers, 52 with 1024-token windows: 16 blocks each (N -
        // 1023 skipped: 0, 496 and 2032 whole blocks).
        assert_eq!(moved("gemma-3-27b", 1024), (10 * 16 + 52 * 16) * 524_288); // all 62 in full
        assert_eq!(moved("gemma-3-27b", 32768), (10 * 512 + 52 * 16) * 524_288);
        assert_eq!(moved("gemma-3-27b", 131_072), (10 * 2048 + 52 * 16) * 524_288);
        // llama-4 (scout and maverick alike): 4096 B a token, 262,144 a
        // block; 12 global layers; 36 chunked over 8192, whose current
        // chunk is empty when N is a multiple of 8192 (32k, 128k).
        for name in ["llama-4-scout", "llama-4-maverick"] {
            assert_eq!(moved(name, 1024), 48 * 16 * 262_144);
            assert_eq!(moved(name, 32768), 12 * 512 * 262_144);
            assert_eq!(moved(name, 131_072), 12 * 2048 * 262_144);
            // 10,000 tokens: chunk 1 holds 8192..10000: blocks 128..157 (29).
            assert_eq!(moved(name, 10_000), (12 * 157 + 36 * 29) * 262_144);
        }
        // qwen3-next-80b-a3b: blocks of 576 tokens (the attention page
        // raised to hold a 1,097,728-byte state: 64 x cdiv(1,097,728, 64 x
        // 2048)), 1,179,648 B; prefill stops at N - 1; 12 full layers
        // move cdiv(N - 1, 576) blocks, 36 gated-delta-net layers their
        // state: 36 x 1,097,728 = 39,518,208.
        assert_eq!(moved("qwen3-next-80b-a3b", 1024), 12 * 2 * 1_179_648 + 39_518_208);
        assert_eq!(moved("qwen3-next-80b-a3b", 32768), 12 * 57 * 1_179_648 + 39_518_208);
        assert_eq!(moved("qwen3-next-80b-a3b", 131_072), 12 * 228 * 1_179_648 + 39_518_208);
        // nemotron-nano-9b-v2: Mamba2 state (10240 + 2 x 8 x 128) x 3 x 2
        // conv + 128 x 80 x 128 x 4 SSM = 5,316,608 B; blocks of 64 x
        // cdiv(5,316,608, 64 x 4096) = 1344 tokens, 5,505,024 B; 4
        // attention layers, 27 Mamba2.
        assert_eq!(moved("nemotron-nano-9b-v2", 1024), 4 * 5_505_024 + 27 * 5_316_608);
        assert_eq!(moved("nemotron-nano-9b-v2", 32768), 4 * 25 * 5_505_024 + 27 * 5_316_608);
        assert_eq!(moved("nemotron-nano-9b-v2", 131_072), 4 * 98 * 5_505_024 + 27 * 5_316_608);
        // deepseek-v3.2: 61 MLA layers of (512 + 64) x 2 latent + 128 + 4
        // indexer bytes a token, blocks of 64: 82,176 B.
        assert_eq!(moved("deepseek-v3.2", 1024), 61 * 16 * 82_176);
        assert_eq!(moved("deepseek-v3.2", 32768), 61 * 512 * 82_176);
        assert_eq!(moved("deepseek-v3.2", 131_072), 61 * 2048 * 82_176);
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
