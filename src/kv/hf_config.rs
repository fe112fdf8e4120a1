//! Reads the fields of a Hugging Face `config.json` that size the KV cache.

use super::compute::{ComputeShape, Ffn, Projections};
use super::hf_hybrid;
use super::{Attention, Dtype, ModelSpec};
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// The model of `path`; `dtype` (--dtype) stands for a config that names none
/// (gpt-oss's, quantized, leaves torch_dtype out).
pub fn read(path: &Path, dtype: Option<Dtype>) -> Result<ModelSpec> {
    // A config.json is kilobytes; 16 MiB is past any.
    let text = crate::input::read_text(path, "--model-config", 16 << 20)?;
    let fallback_name = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "custom".to_string());
    parse_with(&text, &fallback_name, dtype)
        .map_err(|e| e.context(format!("model config {}", path.display())))
}

pub fn parse(text: &str, fallback_name: &str) -> Result<ModelSpec> {
    parse_with(text, fallback_name, None)
}

#[cfg(test)]
pub(crate) fn parse_for_tests(text: &str, dtype: Dtype) -> Result<ModelSpec> {
    parse_with(text, "x", Some(dtype))
}

fn parse_with(text: &str, fallback_name: &str, dtype_given: Option<Dtype>) -> Result<ModelSpec> {
    let root: Value = serde_json::from_str(text).map_err(|e| Error::usage(format!("not valid JSON: {e}")))?;
    if !root.is_object() {
        return Err(Error::usage("not a JSON object"));
    }
    // Multimodal models keep the language model's numbers under text_config.
    let cfg = match root.get("text_config") {
        Some(t) if root.get("num_hidden_layers").is_none() && t.is_object() => t,
        _ => &root,
    };
    let field = |name: &str| -> Option<u64> { cfg.get(name).and_then(Value::as_u64) };
    let need = |name: &str| -> Result<u32> {
        let v = cfg
            .get(name)
            .ok_or_else(|| Error::usage(format!("missing field '{name}' (a positive integer)")))?;
        let bad = |got: String| Error::usage(format!("field '{name}' must be a positive integer, got {got}"));
        match v {
            Value::Number(n) => match n.as_u64() {
                Some(0) => Err(bad("0".into())),
                Some(x) => u32::try_from(x).map_err(|_| {
                    Error::usage(format!(
                        "field '{name}' is {x}, past the largest kvxfer takes ({})",
                        u32::MAX
                    ))
                }),
                // Past 2^64, read as a float.
                None if n.as_f64().is_some_and(|f| f > u32::MAX as f64) => Err(Error::usage(format!(
                    "field '{name}' is {n}, past the largest kvxfer takes ({})",
                    u32::MAX
                ))),
                // Negative, or fractional.
                None => Err(bad(n.to_string())),
            },
            Value::String(s) => Err(bad(format!("the string \"{s}\""))),
            other => Err(bad(other.to_string())),
        }
    };

    let layers = need("num_hidden_layers")?;
    let attention = if cfg.get("kv_lora_rank").is_some_and(|v| !v.is_null()) {
        Attention::Mla {
            kv_lora_rank: need("kv_lora_rank")?,
            qk_rope_head_dim: field("qk_rope_head_dim").ok_or_else(|| {
                Error::usage("missing field 'qk_rope_head_dim' (MLA configs need it next to kv_lora_rank)")
            })? as u32,
        }
    } else {
        // Without num_key_value_heads the model is plain multi-head attention.
        let kv_heads = if cfg.get("num_key_value_heads").is_some_and(|v| !v.is_null()) {
            need("num_key_value_heads")?
        } else if field("num_attention_heads").is_some() {
            need("num_attention_heads")?
        } else {
            return Err(Error::usage(
                "missing field 'num_key_value_heads' (nor 'num_attention_heads' to fall back on)",
            ));
        };
        if let Some(heads) = field("num_attention_heads").filter(|&h| (kv_heads as u64) > h) {
            return Err(Error::usage(format!(
                "num_key_value_heads {kv_heads} is more than num_attention_heads {heads}: each KV head serves one \
                 query head or more"
            )));
        }
        let head_dim = if cfg.get("head_dim").is_some_and(|v| !v.is_null()) {
            need("head_dim")?
        } else {
            let hidden = need("hidden_size")
                .map_err(|e| e.context("no 'head_dim', so it is hidden_size / num_attention_heads"))?;
            let heads = need("num_attention_heads")
                .map_err(|e| e.context("no 'head_dim', so it is hidden_size / num_attention_heads"))?;
            if hidden % heads != 0 {
                return Err(Error::usage(format!(
                    "hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
                )));
            }
            hidden / heads
        };
        Attention::Gqa { kv_heads, head_dim }
    };

    // transformers >= 4.56 writes "dtype"; older configs "torch_dtype".
    let dtype_name = ["torch_dtype", "dtype"]
        .iter()
        .find_map(|k| cfg.get(*k).or_else(|| root.get(*k)).and_then(Value::as_str));
    let dtype = match (dtype_name, dtype_given) {
        (_, Some(d)) => d,
        (Some(name), None) => Dtype::parse(name)?,
        (None, None) => return Err(Error::usage("missing field 'torch_dtype' (or 'dtype'); pass --dtype")),
    };

    // The model's own name where the config gives one, its architecture's else, the folder's last.
    let name = ["_name_or_path", "name_or_path", "model_type"]
        .iter()
        .find_map(|k| root.get(*k).and_then(Value::as_str))
        .map(|s| s.rsplit('/').next().unwrap_or(s).to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| fallback_name.to_string());

    let (compute, compute_missing) = match compute_shape(cfg, &attention) {
        Ok(c) => (Some(c), None),
        Err(field) => (None, Some(field)),
    };
    let max_context = ["max_position_embeddings"]
        .iter()
        .find_map(|k| cfg.get(*k).or_else(|| root.get(*k)).and_then(Value::as_u64))
        .and_then(|n| u32::try_from(n).ok());
    // State follows the model's dtype (vLLM's mamba_cache_dtype "auto"), not the KV cache's.
    let model_dtype = match dtype_name {
        Some(name) => Dtype::parse(name)?,
        None => dtype,
    };
    let hybrid = hf_hybrid::read(cfg, layers, model_dtype, &attention)?;
    let spec = ModelSpec {
        name,
        layers: hybrid.layers,
        attention,
        dtype,
        compute,
        compute_missing,
        max_context,
        layer_kinds: hybrid.kinds,
        state: hybrid.state,
        indexer_dim: hybrid.indexer_dim,
    };
    spec.validate()?;
    Ok(spec)
}

/// The fields the prefill estimate needs; Err names the first one missing
/// (only `--prefill-tflops` needs them, so their absence is no error here).
fn compute_shape(cfg: &Value, attention: &Attention) -> std::result::Result<ComputeShape, String> {
    let get = |name: &str| -> std::result::Result<u32, String> {
        cfg.get(name)
            .and_then(Value::as_u64)
            .and_then(|v| u32::try_from(v).ok())
            .filter(|v| *v > 0)
            .ok_or_else(|| name.to_string())
    };
    let optional = |name: &str| cfg.get(name).and_then(Value::as_u64).map(|v| v as u32).unwrap_or(0);
    let (hidden, heads) = (get("hidden_size")?, get("num_attention_heads")?);
    let projections = match *attention {
        Attention::Gqa { kv_heads, head_dim } => Projections::Gqa { heads, kv_heads, head_dim },
        Attention::Mla { kv_lora_rank, qk_rope_head_dim } => Projections::Mla {
            heads,
            q_lora_rank: optional("q_lora_rank"), // null: a full-rank q (DeepSeek-V2-Lite)
            kv_lora_rank,
            qk_nope_head_dim: get("qk_nope_head_dim")?,
            qk_rope_head_dim,
            v_head_dim: get("v_head_dim")?,
        },
    };
    // Experts: DeepSeek's n_routed_experts, Qwen's num_experts, Mixtral's num_local_experts.
    let experts = ["n_routed_experts", "num_experts", "num_local_experts"].iter().find_map(|k| get(k).ok());
    let ffn = match experts {
        None => Ffn::Dense { intermediate: get("intermediate_size")? },
        Some(experts) => Ffn::Moe {
            experts,
            per_token: get("num_experts_per_tok")?,
            // Mixtral's experts are intermediate_size wide; the others say so apart.
            expert_intermediate: get("moe_intermediate_size").or_else(|_| get("intermediate_size"))?,
            shared: optional("n_shared_experts"),
            dense_layers: optional("first_k_dense_replace"),
            dense_intermediate: optional("intermediate_size"),
        },
    };
    Ok(ComputeShape { hidden, projections, ffn })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KvShape;

    const LLAMA_8B: &str = r#"{
        "architectures": ["LlamaForCausalLM"], "hidden_size": 4096,
        "num_attention_heads": 32, "num_hidden_layers": 32,
        "num_key_value_heads": 8, "torch_dtype": "bfloat16"}"#;

    const DEEPSEEK_V3: &str = r#"{
        "hidden_size": 7168, "num_attention_heads": 128, "num_hidden_layers": 61,
        "num_key_value_heads": 128, "kv_lora_rank": 512, "qk_rope_head_dim": 64,
        "qk_nope_head_dim": 128, "v_head_dim": 128, "torch_dtype": "bfloat16"}"#;

    #[test]
    fn llama_from_hidden_size() {
        let m = parse(LLAMA_8B, "Llama-3.1-8B").unwrap();
        assert_eq!(m.name, "Llama-3.1-8B");
        assert_eq!(m.attention, Attention::Gqa { kv_heads: 8, head_dim: 128 });
        assert_eq!(KvShape::new(m, 1, 16).unwrap().bytes_per_token(), 131_072);
    }

    #[test]
    fn explicit_head_dim_wins() {
        // Qwen3 sets head_dim (128) apart from hidden_size / heads (4096 / 32 = 128 here,
        // but 5120 / 64 = 80 for Qwen3-32B, where head_dim is still 128).
        let qwen3_32b = r#"{"hidden_size": 5120, "num_attention_heads": 64, "head_dim": 128,
            "num_hidden_layers": 64, "num_key_value_heads": 8, "torch_dtype": "bfloat16"}"#;
        let m = parse(qwen3_32b, "q").unwrap();
        assert_eq!(KvShape::new(m, 1, 16).unwrap().bytes_per_token(), 262_144);
    }

    #[test]
    fn mla_from_deepseek_config() {
        let m = parse(DEEPSEEK_V3, "ds").unwrap();
        assert!(matches!(m.attention, Attention::Mla { kv_lora_rank: 512, qk_rope_head_dim: 64 }));
        assert_eq!(KvShape::new(m, 8, 64).unwrap().bytes_per_token(), 70_272);
    }

    #[test]
    fn text_config_and_new_dtype_key() {
        let nested = r#"{"model_type": "mllama", "text_config": {"num_hidden_layers": 40,
            "num_key_value_heads": 8, "head_dim": 128}, "dtype": "float16"}"#;
        let m = parse(nested, "vl").unwrap();
        assert_eq!(m.layers, 40);
        assert_eq!(m.dtype, Dtype::Fp16);
    }

    #[test]
    fn the_prefill_shape_comes_from_the_config_or_names_what_is_missing() {
        let m = parse(LLAMA_8B, "l").unwrap();
        assert_eq!(m.compute, None, "no intermediate_size");
        assert_eq!(m.compute_missing.as_deref(), Some("intermediate_size"));
        assert!(m.compute_shape().unwrap_err().message.contains("lacks 'intermediate_size'"));
        let full = LLAMA_8B.replace("\"hidden_size\"", "\"intermediate_size\": 14336, \"hidden_size\"");
        let m = parse(&full, "l").unwrap();
        assert_eq!(m.compute, crate::kv::presets::lookup("llama-3.1-8b").unwrap().compute);
        // DeepSeek-V3's config gives the same shape as the preset.
        let ds = DEEPSEEK_V3.replace(
            "\"torch_dtype\"",
            "\"q_lora_rank\": 1536, \"n_routed_experts\": 256, \"num_experts_per_tok\": 8, \
             \"moe_intermediate_size\": 2048, \"n_shared_experts\": 1, \"first_k_dense_replace\": 3, \
             \"intermediate_size\": 18432, \"torch_dtype\"",
        );
        let m = parse(&ds, "ds").unwrap();
        assert_eq!(m.compute, crate::kv::presets::lookup("deepseek-v3").unwrap().compute);
    }

    #[test]
    fn missing_fields_are_named() {
        let err = |text: &str| parse(text, "x").unwrap_err().message;
        assert!(err(r#"{"num_key_value_heads": 8}"#).contains("'num_hidden_layers'"));
        assert!(err(r#"{"num_hidden_layers": 2, "head_dim": 64, "torch_dtype": "bfloat16"}"#)
            .contains("'num_key_value_heads'"));
        assert!(err(r#"{"num_hidden_layers": 2, "num_key_value_heads": 8, "torch_dtype": "bfloat16"}"#)
            .contains("'hidden_size'"));
        assert!(err(r#"{"num_hidden_layers": 2, "num_key_value_heads": 8, "head_dim": 64}"#)
            .contains("'torch_dtype'"));
        assert!(err(r#"{"num_hidden_layers": 2, "kv_lora_rank": 512, "torch_dtype": "bfloat16"}"#)
            .contains("'qk_rope_head_dim'"));
        assert!(err("[1, 2]").contains("not a JSON object"));
        assert!(err("{oops").contains("not valid JSON"));
        assert!(err(r#"{"num_hidden_layers": -3}"#).contains("num_hidden_layers"));
    }

    /// A field that is there with a bad value says what is wrong with it.
    #[test]
    fn bad_values_say_what_is_wrong_with_them() {
        let with = |layers: &str| {
            let text =
                LLAMA_8B.replace("\"num_hidden_layers\": 32", &format!("\"num_hidden_layers\": {layers}"));
            parse(&text, "x").unwrap_err().message
        };
        for (value, says) in [
            ("-32", "'num_hidden_layers' must be a positive integer, got -32"),
            ("\"32\"", "got the string \"32\""),
            ("32.5", "got 32.5"),
            ("null", "got null"),
            ("0", "got 0"),
            ("18446744073709551616", "is 1.8446744073709552e+19, past the largest kvxfer takes (4294967295)"),
            ("4294967296", "is 4294967296, past the largest kvxfer takes (4294967295)"),
        ] {
            assert!(with(value).contains(says), "{value}: {}", with(value));
        }
        let wide = LLAMA_8B.replace("\"num_key_value_heads\": 8", "\"num_key_value_heads\": 64");
        let e = parse(&wide, "x").unwrap_err().message;
        assert!(e.contains("num_key_value_heads 64 is more than num_attention_heads 32"), "{e}");
    }

    /// A config names its model: its path, else its architecture, else the folder.
    #[test]
    fn a_config_names_its_model() {
        let add = |field: &str| LLAMA_8B.replace("\"architectures\"", &format!("{field}, \"architectures\""));
        let named = add("\"_name_or_path\": \"meta-llama/Llama-3.1-8B\", \"model_type\": \"llama\"");
        assert_eq!(parse(&named, "configs").unwrap().name, "Llama-3.1-8B");
        assert_eq!(parse(&add("\"model_type\": \"llama\""), "configs").unwrap().name, "llama");
        assert_eq!(parse(LLAMA_8B, "configs").unwrap().name, "configs");
    }
}
