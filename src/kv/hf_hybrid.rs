//! The hybrid keys of a Hugging Face `config.json`: which layers slide,
//! chunk or keep a state, the state's shape, DeepSeek-V3.2's indexer. A
//! config that contradicts itself is refused naming the key.
//!
//! Read as vLLM 0.34.0's model files read them: `layer_types` first (gpt-oss,
//! Gemma-3, Qwen3-Next); else `sliding_window_pattern` (layer i slides unless
//! (i + 1) is a multiple); `attention_chunk_size` with `no_rope_layers` (0:
//! a NoPE layer, global; llama4.py); `full_attention_interval` (Qwen3-Next);
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
    let count_is = |key: &str, n: usize| -> Result<()> {
        if n != layers as usize {
            return Err(bad(key, format!("has {n} entries for {layers} layers (num_hidden_layers)")));
        }
        Ok(())
    };
    let window = || need(cfg, "sliding_window", "the layers named sliding need their window");
    let mut kinds: Vec<Option<LayerKind>> = vec![Some(LayerKind::Full); layers as usize];
    let mut has_state = false;
    if let Some(types) = strings(cfg, "layer_types")? {
        count_is("layer_types", types.len())?;
        for (k, t) in kinds.iter_mut().zip(&types) {
            *k = Some(match *t {
                "full_attention" | "attention" => LayerKind::Full,
                "sliding_attention" | "sliding_window" => LayerKind::SlidingWindow { window: window()? },
                "chunked_attention" => LayerKind::ChunkedLocal {
                    chunk: need(cfg, "attention_chunk_size", "the layers named chunked need their chunk")?,
                },
                "linear_attention" | "mamba" => {
                    has_state = true;
                    LayerKind::State
                }
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
                "mamba" => {
                    has_state = true;
                    Some(LayerKind::State)
                }
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
                'M' => {
                    has_state = true;
                    Some(LayerKind::State)
                }
                _ => None, // MLP ('-') and MoE ('E') layers hold no cache
            };
        }
    } else if let Some(every) = positive(cfg, "sliding_window_pattern")? {
        let w = window()?;
        for (i, k) in kinds.iter_mut().enumerate() {
            if !(i as u32 + 1).is_multiple_of(every) {
                *k = Some(LayerKind::SlidingWindow { window: w });
            }
        }
    } else if let Some(every) = positive(cfg, "full_attention_interval")? {
        has_state = true;
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
