//! The hybrid keys of a Hugging Face `config.json`: which layers slide,
//! chunk or keep a state, the state's shape, DeepSeek-V3.2's indexer. A
//! config that contradicts itself is refused naming the key.
//!
//! Read as vLLM 0.34.0's model files read them: `layer_types` first (gpt-oss,
//! Gemma-3, Qwen3-Next); else `sliding_window_pattern` (layer i slides unless
//! (i + 1) is a multiple); `attention_chunk_size` with `no_rope_layers` (0:
//! a NoPE layer, global; llama4.py; without the list every fourth layer, as
//! transformers fills it in); `full_attention_interval` (Qwen3-Next);
//! `hybrid_override_pattern` ('M' Mamba, '*' attention, others no cache;
//! nemotron_h.py) or `layers_block_type` ("mamba" / "attention").

use super::{Attention, Dtype, LayerKind, StateKind, StateSpec};
use crate::error::{Error, Result};
use serde_json::Value;

pub struct Hybrid {
    /// Layers that hold a cache (a Nemotron-H MLP layer holds none).
    pub layers: u32,
    pub kinds: Vec<LayerKind>,
    pub state: Option<StateSpec>,
    pub indexer_dim: Option<u32>,
}

fn bad(key: &str, why: String) -> Error {
    Error::usage(format!("'{key}': {why}"))
}

fn positive(cfg: &Value, key: &str) -> Result<Option<u32>> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()).filter(|n| *n > 0) {
            Some(n) => Ok(Some(n)),
            None => Err(bad(key, format!("must be a positive integer, got {v}"))),
        },
    }
}

fn need(cfg: &Value, key: &str, why: &str) -> Result<u32> {
    positive(cfg, key)?.ok_or_else(|| Error::usage(format!("missing field '{key}' ({why})")))
}

fn strings<'a>(cfg: &'a Value, key: &str) -> Result<Option<Vec<&'a str>>> {
    match cfg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().ok_or_else(|| bad(key, format!("must be a list of strings, has {i}"))))
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(other) => Err(bad(key, format!("must be a list of strings, got {other}"))),
    }
}

pub fn read(cfg: &Value, layers: u32, dtype: Dtype, attention: &Attention) -> Result<Hybrid> {
    let kinds = kinds_of(cfg, layers)?;
    let has_state = kinds.iter().flatten().any(|k| *k == LayerKind::State);
    let state = if has_state { Some(state_spec(cfg, dtype)?) } else { None };
    let kinds: Vec<LayerKind> = kinds.into_iter().flatten().collect();
    if kinds.is_empty() {
        return Err(Error::usage("no layer holds a KV cache or a state"));
    }
    let indexer_dim = match positive(cfg, "index_head_dim")? {
        Some(d) if !matches!(attention, Attention::Mla { .. }) => {
            return Err(bad(
                "index_head_dim",
                format!("{d}: an indexer cache goes with MLA (kv_lora_rank) only"),
            ))
        }
        d => d,
    };
    let layers = kinds.len() as u32;
    let kinds = if kinds.iter().all(|k| *k == LayerKind::Full) { Vec::new() } else { kinds };
    Ok(Hybrid { layers, kinds, state, indexer_dim })
}

/// Each of the config's `layers` layers' kind, None for a layer that holds
/// no cache, from the first key of the module's list the config has.
fn kinds_of(cfg: &Value, layers: u32) -> Result<Vec<Option<LayerKind>>> {
    let count_is = |key: &str, n: usize| -> Result<()> {
        if n != layers as usize {
            return Err(bad(key, format!("has {n} entries for {layers} layers (num_hidden_layers)")));
        }
        Ok(())
    };
    let window = || need(cfg, "sliding_window", "the layers named sliding need their window");
    let mut kinds: Vec<Option<LayerKind>> = vec![Some(LayerKind::Full); layers as usize];
    if let Some(types) = strings(cfg, "layer_types")? {
        count_is("layer_types", types.len())?;
        for (k, t) in kinds.iter_mut().zip(&types) {
            *k = Some(match *t {
                "full_attention" | "attention" => LayerKind::Full,
                "sliding_attention" | "sliding_window" => LayerKind::SlidingWindow { window: window()? },
                "chunked_attention" => LayerKind::ChunkedLocal {
                    chunk: need(cfg, "attention_chunk_size", "the layers named chunked need their chunk")?,
                },
                "linear_attention" | "mamba" => LayerKind::State,
                other => {
                    return Err(bad(
                        "layer_types",
                        format!(
                            "'{other}' is not a layer type kvxfer knows (full_attention, sliding_attention, \
                             chunked_attention, linear_attention, mamba)"
                        ),
                    ))
                }
            });
        }
    } else if let Some(pattern) = strings(cfg, "layers_block_type")? {
        count_is("layers_block_type", pattern.len())?;
        for (k, t) in kinds.iter_mut().zip(&pattern) {
            *k = match *t {
                "attention" => Some(LayerKind::Full),
                "mamba" => Some(LayerKind::State),
                _ => None,
            };
        }
    } else if let Some(pattern) = cfg.get("hybrid_override_pattern").filter(|v| !v.is_null()) {
        let pattern = pattern
            .as_str()
            .ok_or_else(|| bad("hybrid_override_pattern", format!("must be a string, got {pattern}")))?;
        count_is("hybrid_override_pattern", pattern.chars().count())?;
        for (k, c) in kinds.iter_mut().zip(pattern.chars()) {
            *k = match c {
                '*' => Some(LayerKind::Full),
                'M' => Some(LayerKind::State),
                _ => None, // MLP ('-') and MoE ('E') layers hold no cache
            };
        }
    } else if let Some(every) = sliding_pattern(cfg)? {
        let w = window()?;
        for (i, k) in kinds.iter_mut().enumerate() {
            if !(i as u32 + 1).is_multiple_of(every) {
                *k = Some(LayerKind::SlidingWindow { window: w });
            }
        }
    } else if let Some(every) = positive(cfg, "full_attention_interval")? {
        for (i, k) in kinds.iter_mut().enumerate() {
            if !(i as u32 + 1).is_multiple_of(every) {
                *k = Some(LayerKind::State);
            }
        }
    } else if let Some(chunk) = positive(cfg, "attention_chunk_size")? {
        // Llama-4: RoPE layers chunk, NoPE layers (no_rope_layers 0) are global.
        let rope: Vec<bool> = match cfg.get("no_rope_layers") {
            Some(Value::Array(v)) => {
                count_is("no_rope_layers", v.len())?;
                v.iter().map(|x| x.as_u64() != Some(0)).collect()
            }
            _ => {
                let every = positive(cfg, "no_rope_layer_interval")?.unwrap_or(4);
                (0..layers).map(|i| (i + 1) % every != 0).collect()
            }
        };
        for (k, r) in kinds.iter_mut().zip(rope) {
            if r {
                *k = Some(LayerKind::ChunkedLocal { chunk });
            }
        }
    } else if cfg.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
        let w = window()?;
        kinds.iter_mut().for_each(|k| *k = Some(LayerKind::SlidingWindow { window: w }));
    }
    Ok(kinds)
}

/// `sliding_window_pattern`, or where a config leaves it out the default
/// transformers fills in when it builds `layer_types` (Gemma-3: 6; Gemma-2
/// alternates: 2). None: no pattern.
fn sliding_pattern(cfg: &Value) -> Result<Option<u32>> {
    if let Some(every) = positive(cfg, "sliding_window_pattern")? {
        return Ok(Some(every));
    }
    let windowed = cfg.get("sliding_window").is_some_and(|w| !w.is_null());
    Ok(match cfg.get("model_type").and_then(Value::as_str) {
        Some("gemma3" | "gemma3_text") if windowed => Some(6),
        Some("gemma2") if windowed => Some(2),
        _ => None,
    })
}

/// The state layers' shape: gated delta net from the `linear_*` keys,
/// Mamba2 from the `mamba_*` / `ssm_state_size` keys.
fn state_spec(cfg: &Value, dtype: Dtype) -> Result<StateSpec> {
    let conv_dtype = dtype;
    if cfg.get("linear_num_value_heads").is_some() {
        let why = "gated delta net layers need it";
        return Ok(StateSpec {
            kind: StateKind::GatedDeltaNet {
                k_heads: need(cfg, "linear_num_key_heads", why)?,
                v_heads: need(cfg, "linear_num_value_heads", why)?,
                k_dim: need(cfg, "linear_key_head_dim", why)?,
                v_dim: need(cfg, "linear_value_head_dim", why)?,
            },
            conv_kernel: need(cfg, "linear_conv_kernel_dim", why)?,
            conv_dtype,
            ssm_dtype: conv_dtype,
        });
    }
    let why = "Mamba2 layers need it";
    let heads = need(cfg, "mamba_num_heads", why)?;
    let head_dim = need(cfg, "mamba_head_dim", why)?;
    let state_size = match positive(cfg, "ssm_state_size")? {
        Some(n) => n,
        None => need(cfg, "state_size", why)?,
    };
    let conv_kernel = match positive(cfg, "conv_kernel")? {
        Some(n) => n,
        None => need(cfg, "mamba_d_conv", why)?,
    };
    // mamba_ssm_cache_dtype "auto" is the conv dtype, but Nemotron-H's is
    // float32 unless its config names another (vLLM
    // model_executor/models/config.py NemotronHForCausalLMConfig).
    let nemotron = cfg.get("model_type").and_then(Value::as_str).is_some_and(|t| t.starts_with("nemotron_h"));
    let ssm_dtype = match cfg.get("mamba_ssm_cache_dtype").and_then(Value::as_str) {
        Some(d) => Dtype::parse(d).map_err(|e| e.context("'mamba_ssm_cache_dtype'"))?,
        None if nemotron => Dtype::Fp32,
        None => conv_dtype,
    };
    Ok(StateSpec {
        kind: StateKind::Mamba2 {
            intermediate: heads * head_dim,
            n_groups: need(cfg, "n_groups", why)?,
            state_size,
            heads,
            head_dim,
        },
        conv_kernel,
        conv_dtype,
        ssm_dtype,
    })
}

#[cfg(test)]
mod tests {
    use crate::kv::hf_config::parse;
    use crate::kv::presets::lookup;
    use crate::kv::{KvShape, LayerKind};

    /// openai/gpt-oss-120b's config.json, its KV keys as published (copy in
    /// ai-dynamo/aiconfigurator model_configs); no torch_dtype in it.
    fn gpt_oss_120b() -> String {
        let types: Vec<&str> = (0..36)
            .map(|i| if i % 2 == 0 { "\"sliding_attention\"" } else { "\"full_attention\"" })
            .collect();
        format!(
            r#"{{"model_type": "gpt_oss", "num_hidden_layers": 36, "num_attention_heads": 64,
            "num_key_value_heads": 8, "head_dim": 64, "hidden_size": 2880, "intermediate_size": 2880,
            "num_local_experts": 128, "num_experts_per_tok": 4, "sliding_window": 128,
            "max_position_embeddings": 131072, "layer_types": [{}]}}"#,
            types.join(", ")
        )
    }

    /// Qwen/Qwen3-Next-80B-A3B's KV and state keys (Thinking's config.json; Instruct's architecture).
    const QWEN3_NEXT: &str = r#"{"model_type": "qwen3_next", "num_hidden_layers": 48,
        "num_attention_heads": 16, "num_key_value_heads": 2, "head_dim": 256, "hidden_size": 2048,
        "full_attention_interval": 4, "linear_num_key_heads": 16, "linear_num_value_heads": 32,
        "linear_key_head_dim": 128, "linear_value_head_dim": 128, "linear_conv_kernel_dim": 4,
        "torch_dtype": "bfloat16"}"#;

    #[test]
    fn configs_read_as_the_presets_are() {
        let oss = parse(&gpt_oss_120b(), "x").unwrap_err().message;
        assert!(oss.contains("'torch_dtype'"), "{oss}");
        let m = super::super::hf_config::parse_for_tests(&gpt_oss_120b(), crate::kv::Dtype::Bf16).unwrap();
        let p = lookup("gpt-oss-120b").unwrap();
        assert_eq!((m.layers, &m.layer_kinds, m.attention.clone()), (p.layers, &p.layer_kinds, p.attention));
        let q = parse(QWEN3_NEXT, "x").unwrap();
        let p = lookup("qwen3-next-80b-a3b").unwrap();
        assert_eq!((&q.layer_kinds, q.state), (&p.layer_kinds, p.state));
        // Gemma-3's config.json names neither layer_types nor the pattern:
        // transformers' default of 6 applies.
        let gemma = r#"{"text_config": {"model_type": "gemma3_text", "num_hidden_layers": 62,
            "num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 128, "hidden_size": 5376,
            "sliding_window": 1024}, "torch_dtype": "bfloat16"}"#;
        assert_eq!(parse(gemma, "x").unwrap().layer_kinds, lookup("gemma-3-27b").unwrap().layer_kinds);
        // Llama-4 without no_rope_layers: every fourth layer NoPE and global.
        let llama4 = r#"{"num_hidden_layers": 48, "num_key_value_heads": 8, "head_dim": 128,
            "attention_chunk_size": 8192, "torch_dtype": "bfloat16"}"#;
        assert_eq!(parse(llama4, "x").unwrap().layer_kinds, lookup("llama-4-scout").unwrap().layer_kinds);
        // Nemotron-H: the pattern's cache layers; float32 SSM state.
        let nano = r#"{"model_type": "nemotron_h", "num_hidden_layers": 56, "num_key_value_heads": 8,
            "head_dim": 128, "hybrid_override_pattern": "M-M-M-MM-M-M-M*-M-M-M*-M-M-M-M*-M-M-M-M*-M-MM-M-M-M-M-M-",
            "mamba_num_heads": 128, "mamba_head_dim": 80, "ssm_state_size": 128, "n_groups": 8,
            "conv_kernel": 4, "torch_dtype": "bfloat16"}"#;
        let n = parse(nano, "x").unwrap();
        let p = lookup("nemotron-nano-9b-v2").unwrap();
        assert_eq!((n.layers, &n.layer_kinds, n.state), (31, &p.layer_kinds, p.state));
        // DeepSeek-V3.2's indexer.
        let ds = r#"{"num_hidden_layers": 61, "kv_lora_rank": 512, "qk_rope_head_dim": 64,
            "index_head_dim": 128, "index_n_heads": 64, "torch_dtype": "bfloat16"}"#;
        let d = parse(ds, "x").unwrap();
        assert_eq!(KvShape::new(d, 1, 64).unwrap().bytes_per_token(), 61 * (1152 + 132));
    }

    #[test]
    fn a_config_that_contradicts_itself_names_the_key() {
        let err = |text: &str| parse(text, "x").unwrap_err().message;
        let base =
            r#""num_hidden_layers": 4, "num_key_value_heads": 8, "head_dim": 64, "torch_dtype": "bf16""#;
        let e = err(&format!(
            r#"{{{base}, "layer_types": ["full_attention", "sliding_attention", "full_attention"]}}"#
        ));
        assert!(e.contains("'layer_types': has 3 entries for 4 layers"), "{e}");
        let four_sliding = r#""layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]"#;
        let e = err(&format!("{{{base}, {four_sliding}}}"));
        assert!(e.contains("'sliding_window'"), "{e}");
        let e = err(&format!(r#"{{{base}, {four_sliding}, "sliding_window": 0}}"#));
        assert!(e.contains("'sliding_window': must be a positive integer, got 0"), "{e}");
        let e =
            err(&format!(r#"{{{base}, "layer_types": ["full_attention", "linear_attention", "x", "y"]}}"#));
        assert!(e.contains("'x' is not a layer type"), "{e}");
        let e = err(&format!(r#"{{{base}, "full_attention_interval": 2, "linear_num_value_heads": 8}}"#));
        assert!(e.contains("missing field 'linear_num_key_heads'"), "{e}");
        let e = err(&format!(r#"{{{base}, "hybrid_override_pattern": "M*"}}"#));
        assert!(e.contains("'hybrid_override_pattern': has 2 entries for 4 layers"), "{e}");
        let e = err(&format!(r#"{{{base}, "index_head_dim": 128}}"#));
        assert!(e.contains("'index_head_dim': 128: an indexer cache goes with MLA"), "{e}");
        let e = err(&format!(r#"{{{base}, "hybrid_override_pattern": "----"}}"#));
        assert!(e.contains("no layer holds a KV cache"), "{e}");
        // Windowed layers read well.
        let ok = parse(&format!(r#"{{{base}, {four_sliding}, "sliding_window": 256}}"#), "x").unwrap();
        assert_eq!(ok.layer_kinds[0], LayerKind::SlidingWindow { window: 256 });
    }
}
