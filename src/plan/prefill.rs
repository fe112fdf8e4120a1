//! Emulated prefill: how long each layer of a prompt takes to compute on
//! the prefill side, and when its KV may be handed to the transport.
//!
//! vLLM's P2pNcclConnector (send_type PUT_ASYNC) and the layer-wise
//! pipelines of Mooncake and LMCache ship a layer's KV as soon as that
//! layer's attention has run (`--overlap layer`); NixlConnector, and
//! P2pNccl's GET mode, move the request only once prefill has ended
//! (`--overlap none`). What the transfer adds to time-to-first-token is
//! then the time from the last layer's end to the decode side holding the
//! last byte.

use super::RequestLayout;
use crate::error::{Error, Result};
use crate::kv::KvShape;
use serde::{Deserialize, Serialize};

/// When a request's KV is handed to the transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Each layer's messages as soon as that layer's compute ends.
    Layer,
    /// All messages once the last layer has ended.
    None,
}

crate::words::named_by_words!(Overlap, "--overlap", { Layer => "layer", None => "none" });

/// How long a prompt's prefill takes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefillTime {
    /// Milliseconds per prompt length (e.g. measured on the user's own
    /// vLLM), spread evenly over the layers.
    PerPrompt(Vec<(u32, f64)>),
    /// The model's FLOPs per layer (kv::compute) at this many TFLOP/s.
    Tflops(f64),
}

/// The emulated prefill of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prefill {
    pub time: PrefillTime,
    pub overlap: Overlap,
}

impl Prefill {
    /// `--prefill-ms TOKENS:MS,...`: every pair's time zero or more.
    pub fn parse_ms(s: &str) -> Result<PrefillTime> {
        let mut pairs = Vec::new();
        for item in crate::units::list_items(s, "--prefill-ms")? {
            let (tokens, ms) = item.split_once(':').ok_or_else(|| {
                Error::usage(format!("--prefill-ms wants TOKENS:MS pairs (1024:35,8k:410), got '{item}'"))
            })?;
            let tokens = crate::units::parse_token_count(tokens)?;
            let raw = ms.trim();
            let ms: f64 = raw.parse().ok().filter(|v: &f64| v.is_finite() && *v >= 0.0).ok_or_else(|| {
                Error::usage(format!("--prefill-ms {tokens}: '{raw}' is not a time of 0 ms or more"))
            })?;
            // A prefill of an hour is past any model's; past it, only a hang.
            if ms > 3_600_000.0 {
                return Err(Error::usage(format!(
                    "--prefill-ms {tokens}: {raw} ms is past an hour, the longest prefill kvxfer emulates"
                )));
            }
            pairs.push((tokens, ms));
        }
        Ok(PrefillTime::PerPrompt(pairs))
    }

    /// `--prefill-tflops TF`: a positive, finite rate.
    pub fn parse_tflops(s: &str) -> Result<PrefillTime> {
        // An H100 does about 1,000 dense bf16 TFLOP/s: 100 times that is no GPU's.
        match s.trim().parse::<f64>() {
            Ok(tf) if tf.is_finite() && tf > 0.0 && tf <= 100_000.0 => Ok(PrefillTime::Tflops(tf)),
            _ => Err(Error::usage(format!(
                "--prefill-tflops wants a rate above 0 and at most 100000 TFLOP/s, got '{s}'"
            ))),
        }
    }

    /// Each layer's compute time in ns for a prompt of `tokens`.
    pub fn layer_ns(&self, shape: &KvShape, tokens: u32) -> Result<Vec<u64>> {
        let layers = shape.model.layers;
        match &self.time {
            PrefillTime::PerPrompt(pairs) => {
                let ms = pairs.iter().find(|(t, _)| *t == tokens).map(|(_, ms)| *ms).ok_or_else(|| {
                    Error::usage(format!("--prefill-ms gives no time for the {tokens}-token prompt"))
                })?;
                Ok(vec![(ms * 1e6 / layers as f64).round() as u64; layers as usize])
            }
            PrefillTime::Tflops(tf) => {
                let c = shape.model.compute_shape()?;
                Ok((0..layers)
                    .map(|l| {
                        (c.layer_flops_of(l, shape.model.layer_kind(l), tokens) / (tf * 1e12) * 1e9).round()
                            as u64
                    })
                    .collect())
            }
        }
    }
}

impl Prefill {
    /// Each layer's compute time in ns for tokens `from..to` of a context
    /// whose earlier tokens are cached: the FLOPs of the whole less those
    /// of the cached prefix (causal attention's pairs add up by query).
    pub fn layer_ns_span(&self, shape: &KvShape, from: u32, to: u32) -> Result<Vec<u64>> {
        let PrefillTime::Tflops(tf) = self.time else {
            return Err(Error::usage(
                "--prefill-ms gives whole prompts' times; a conversation's turn computes only what prefill has \
                 not cached: give --prefill-tflops, which times any span from the model's FLOPs",
            ));
        };
        let c = shape.model.compute_shape()?;
        let flops = |l: u32, tokens: u32| c.layer_flops_of(l, shape.model.layer_kind(l), tokens);
        Ok((0..shape.model.layers)
            .map(|l| ((flops(l, to) - flops(l, from)).max(0.0) / (tf * 1e12) * 1e9).round() as u64)
            .collect())
    }
}

/// The layer whose compute must end before message `index` may move: its
/// own for layers and blocks, the last for a whole request.
pub fn layer_of(layout: &RequestLayout, index: usize) -> usize {
    layout.layer_of(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::presets::lookup;
    use crate::plan::Granularity;

    fn shape(model: &str) -> KvShape {
        KvShape::new(lookup(model).unwrap(), 1, 16).unwrap()
    }

    #[test]
    fn times_per_prompt_spread_over_the_layers() {
        let p = Prefill { time: Prefill::parse_ms("1024:64,8k:640").unwrap(), overlap: Overlap::Layer };
        let ns = p.layer_ns(&shape("llama-3.1-8b"), 1024).unwrap();
        assert_eq!((ns.len(), ns[0]), (32, 2_000_000));
        assert_eq!(p.layer_ns(&shape("llama-3.1-8b"), 8192).unwrap()[31], 20_000_000);
        let e = p.layer_ns(&shape("llama-3.1-8b"), 2048).unwrap_err();
        assert!(e.message.contains("no time for the 2048-token prompt"), "{e}");
        for bad in ["1024", "1024:-1", "1024:x", "x:5", "1024:inf"] {
            assert!(Prefill::parse_ms(bad).is_err(), "{bad}");
        }
        assert!(Prefill::parse_ms("1024:0").is_ok());
    }

    #[test]
    fn tflops_follow_the_model_s_flops() {
        // Llama-3.1-8B, 1024 tokens: 455,274,921,984 FLOPs a layer (kv::compute)
        // at 455.274921984 TFLOP/s is 1 ms.
        let p = Prefill { time: PrefillTime::Tflops(455.274921984), overlap: Overlap::None };
        assert_eq!(p.layer_ns(&shape("llama-3.1-8b"), 1024).unwrap(), vec![1_000_000; 32]);
        for bad in ["0", "-3", "nan", "x", "inf"] {
            assert!(Prefill::parse_tflops(bad).is_err(), "{bad}");
        }
        let no_shape = p.layer_ns(&shape("qwen3-next-80b-a3b"), 1024).unwrap_err();
        assert!(
            no_shape.message.contains("--prefill-tflops needs the shape of model 'qwen3-next-80b-a3b'"),
            "{no_shape}"
        );
    }

    #[test]
    fn a_span_computes_the_whole_less_its_cached_prefix() {
        let s = shape("llama-3.1-8b");
        // 1 ms a layer for 1024 tokens from nothing cached (as above).
        let p = Prefill { time: PrefillTime::Tflops(455.274921984), overlap: Overlap::Layer };
        assert_eq!(p.layer_ns_span(&s, 0, 1024).unwrap(), p.layer_ns(&s, 1024).unwrap());
        // The next 1024 tokens attend to 2048 keys at most: more than the first 1024.
        let (first, next) = (p.layer_ns_span(&s, 0, 1024).unwrap(), p.layer_ns_span(&s, 1024, 2048).unwrap());
        let whole = p.layer_ns(&s, 2048).unwrap();
        assert!(next[0] > first[0]);
        assert!((first[0] + next[0]).abs_diff(whole[0]) <= 1, "{} + {} vs {}", first[0], next[0], whole[0]);
        // Weights 2 x 218,103,808 x 1024 = 446,676,598,784, and attention's
        // pairs 2048 x 2049 / 2 - 1024 x 1025 / 2 = 1,573,376 x 32 heads x 2 x
        // 256 = 25,778,192,384: 472,454,791,168 FLOPs, 1.0377 ms.
        assert_eq!(next[0], (472_454_791_168.0 / 455.274921984e12 * 1e9_f64).round() as u64);
        let per_prompt = Prefill { time: Prefill::parse_ms("1024:64").unwrap(), overlap: Overlap::Layer };
        let e = per_prompt.layer_ns_span(&s, 0, 1024).unwrap_err();
        assert!(e.message.contains("give --prefill-tflops"), "{e}");
    }

    #[test]
    fn each_message_waits_for_its_layer() {
        let s = shape("llama-3.1-8b");
        let block = RequestLayout::new(&s, 64, Granularity::Block); // 4 blocks x K, V per layer
        assert_eq!((layer_of(&block, 0), layer_of(&block, 7), layer_of(&block, 8)), (0, 0, 1));
        assert_eq!(layer_of(&RequestLayout::new(&s, 64, Granularity::Layer), 5), 5);
        assert_eq!(layer_of(&RequestLayout::new(&s, 64, Granularity::Request), 0), 31);
    }
}
