//! Command-line arguments, shared by `kvxfer`, `kvxfer-send` and `kvxfer-recv`.
//! Every value is checked as it is parsed, so bad input is refused with a
//! message before anything starts.

use crate::error::{Error, Result};
use crate::kv::compute::Projections;
use crate::kv::{hf_config, presets, Attention, Dtype, KvShape, ModelSpec};
use crate::link::{self, Link};
use crate::measure::Fault;
use crate::memory::{MemoryKind, MemorySpec};
use crate::plan::{
    BlockTable, Granularity, KvLayout, Load, Overlap, Plan, Prefill, TpPlan, TpTopology, VerifyMode,
};
use crate::report::gate::{Gate, Threshold};
use crate::schedule::conversation::MultiTurn;
use crate::schedule::residency::OnFull;
use crate::transport::nixl::NixlOp;
use crate::transport::ofi::OfiOp;
use crate::transport::ucx::{UcxErrMode, UcxOp};
use crate::transport::{LocalOptions, TransportKind, TransportSpec};
use crate::units;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_MODEL: &str = "llama-3.1-8b";

fn positive_u32(s: &str) -> Result<u32, String> {
    let n = units::parse_positive(s, "value").map_err(|e| e.message)?;
    u32::try_from(n).map_err(|_| format!("'{s}' is too large"))
}

fn non_negative_u32(s: &str) -> Result<u32, String> {
    if s.trim() == "0" {
        return Ok(0);
    }
    positive_u32(s)
}

fn token_list(s: &str) -> Result<Vec<u32>, String> {
    units::parse_token_list(s).map_err(|e| e.message)
}

fn granularity_list(s: &str) -> Result<Vec<Granularity>, String> {
    Granularity::parse_list(s).map_err(|e| e.message)
}

fn byte_size(s: &str) -> Result<u64, String> {
    units::parse_bytes(s).map_err(|e| e.message)
}

/// SO_SNDBUF/SO_RCVBUF take an int: 4 KiB to 1 GiB (the kernel caps it lower).
fn socket_buffer(s: &str) -> Result<u64, String> {
    match byte_size(s)? {
        b if (4096..=1 << 30).contains(&b) => Ok(b),
        _ => Err(format!("socket buffer '{s}' is outside 4 KiB to 1 GiB")),
    }
}

fn duration(s: &str) -> Result<Duration, String> {
    units::parse_duration(s).map_err(|e| e.message)
}

/// Pairs of a fan: as many as a host has GPUs, and some.
pub const MAX_FAN: u32 = 64;

fn fan_size(s: &str) -> Result<u32, String> {
    match positive_u32(s)? {
        n if n <= MAX_FAN => Ok(n),
        n => Err(format!("{n} pairs is more than the {MAX_FAN} allowed")),
    }
}

fn stream_count(s: &str) -> Result<u32, String> {
    match positive_u32(s)? {
        n if n <= crate::transport::MAX_STREAMS => Ok(n),
        n => Err(format!("{n} streams is more than the {} allowed", crate::transport::MAX_STREAMS)),
    }
}

macro_rules! parser_of {
    ($name:ident, $ty:ty, $parse:path) => {
        fn $name(s: &str) -> Result<$ty, String> {
            $parse(s).map_err(|e| e.message)
        }
    };
}
parser_of!(dtype, Dtype, Dtype::parse);
parser_of!(verify_mode, VerifyMode, VerifyMode::parse);
parser_of!(transport_kind, TransportKind, TransportKind::parse);
parser_of!(link_spec, Link, link::parse);
parser_of!(fault, Fault, Fault::parse);
parser_of!(memory_kind, MemoryKind, MemoryKind::parse);
parser_of!(ucx_op, UcxOp, UcxOp::parse);
parser_of!(threshold, Threshold, Threshold::parse);
parser_of!(percent_threshold, Threshold, Threshold::parse_percent);
parser_of!(time_threshold, Threshold, Threshold::parse_times);
parser_of!(ucx_err_mode, UcxErrMode, UcxErrMode::parse);
parser_of!(ofi_op, OfiOp, OfiOp::parse);
parser_of!(nixl_op, NixlOp, NixlOp::parse);
parser_of!(block_table, BlockTable, BlockTable::parse);
parser_of!(overlap, Overlap, Overlap::parse);
parser_of!(kv_layout, KvLayout, KvLayout::parse);
parser_of!(concurrency, crate::matrix::Concurrency, crate::matrix::Concurrency::parse);

fn on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("'{other}': give on or off")),
    }
}

fn device_ordinal(s: &str) -> Result<usize, String> {
    non_negative_u32(s).map(|n| n as usize)
}

/// Which model, and how its KV cache is cut.
#[derive(Args, Clone, Debug, Default)]
pub struct ModelArgs {
    /// Built-in model (`kvxfer plan --list-models`); default llama-3.1-8b
    #[arg(long, short = 'm', value_name = "NAME", help_heading = "Model")]
    pub model: Option<String>,
    /// Read the model from a Hugging Face config.json
    #[arg(long, value_name = "PATH", conflicts_with = "model", help_heading = "Model")]
    pub model_config: Option<PathBuf>,
    /// Number of layers (alone, or overriding the model's)
    #[arg(long, value_parser = positive_u32, allow_hyphen_values = true, help_heading = "Model")]
    pub layers: Option<u32>,
    /// KV heads (GQA/MHA)
    #[arg(long, value_parser = positive_u32, allow_hyphen_values = true, help_heading = "Model")]
    pub kv_heads: Option<u32>,
    /// Head dimension (GQA/MHA)
    #[arg(long, value_parser = positive_u32, allow_hyphen_values = true, help_heading = "Model")]
    pub head_dim: Option<u32>,
    /// MLA latent size (DeepSeek: 512)
    #[arg(long, value_parser = positive_u32, allow_hyphen_values = true, help_heading = "Model")]
    pub kv_lora_rank: Option<u32>,
    /// MLA rope dimension (DeepSeek: 64)
    #[arg(long, value_parser = non_negative_u32, allow_hyphen_values = true, help_heading = "Model")]
    pub qk_rope_head_dim: Option<u32>,
    /// KV cache dtype: bf16, fp16, fp8, fp32, fp8_ds_mla
    #[arg(long, value_parser = dtype, help_heading = "Model")]
    pub dtype: Option<Dtype>,
    /// Tensor parallelism: one rank's share of the KV is transferred
    #[arg(long, default_value = "1", value_parser = positive_u32, allow_hyphen_values = true, help_heading = "Model")]
    pub tp: u32,
    /// Tokens per paged-attention block [default: 64, vLLM 0.34.0's; raised for models with state
    /// layers until a page holds a state, as vLLM does]
    #[arg(long, value_parser = positive_u32, allow_hyphen_values = true, help_heading = "Model")]
    pub block_size: Option<u32>,
    /// vLLM's hybrid KV cache manager: sliding-window and chunked layers move only the blocks they
    /// still attend to, state layers their state once (on, vLLM's default); off moves every
    /// attention layer in full (--disable-hybrid-kv-cache-manager)
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set, help_heading = "Model")]
    pub hma: bool,
    /// Prefill's TP when decode's differs: a run of P prefill and D decode ranks, each decode
    /// rank reading its heads as vLLM's NixlConnector does [default: --tp]
    #[arg(long, value_name = "P", value_parser = positive_u32, conflicts_with = "tp", allow_hyphen_values = true, help_heading = "Tensor parallelism")]
    pub prefill_tp: Option<u32>,
    /// Decode's TP (with --prefill-tp) [default: --tp]
    #[arg(long, value_name = "D", value_parser = positive_u32, conflicts_with = "tp", allow_hyphen_values = true, help_heading = "Tensor parallelism")]
    pub decode_tp: Option<u32>,
    /// KV cache layout on both sides: hnd (NixlConnector's), nhd (a head slice strided), blocks-first
    /// (FlashInfer: a block's K and V side by side)
    #[arg(long, value_name = "LAYOUT", value_parser = kv_layout, help_heading = "Tensor parallelism")]
    pub kv_layout: Option<KvLayout>,
}

impl ModelArgs {
    pub fn resolve(&self) -> Result<KvShape> {
        let gqa_given = self.kv_heads.is_some() || self.head_dim.is_some();
        let mla_given = self.kv_lora_rank.is_some() || self.qk_rope_head_dim.is_some();
        if gqa_given && mla_given {
            return Err(Error::usage("give either --kv-heads/--head-dim (GQA) or --kv-lora-rank/--qk-rope-head-dim (MLA), not both"));
        }
        let mut spec = if let Some(path) = &self.model_config {
            hf_config::read(path, self.dtype)?
        } else if let Some(name) = &self.model {
            presets::lookup(name)?
        } else if self.layers.is_some() || gqa_given || mla_given {
            self.explicit()?
        } else {
            presets::lookup(DEFAULT_MODEL)?
        };
        if let Some(layers) = self.layers {
            spec.layers = layers;
        }
        match &mut spec.attention {
            Attention::Gqa { kv_heads, head_dim } if !mla_given => {
                *kv_heads = self.kv_heads.unwrap_or(*kv_heads);
                *head_dim = self.head_dim.unwrap_or(*head_dim);
                // The projections follow the KV shape given.
                if let Some(crate::kv::compute::ComputeShape {
                    projections: Projections::Gqa { kv_heads: k, head_dim: d, .. },
                    ..
                }) = &mut spec.compute
                {
                    (*k, *d) = (*kv_heads, *head_dim);
                }
            }
            Attention::Mla { kv_lora_rank, qk_rope_head_dim } if !gqa_given => {
                *kv_lora_rank = self.kv_lora_rank.unwrap_or(*kv_lora_rank);
                *qk_rope_head_dim = self.qk_rope_head_dim.unwrap_or(*qk_rope_head_dim);
            }
            _ => {
                return Err(Error::usage(format!(
                    "{} has {} attention; its shape flags do not apply",
                    spec.name,
                    if mla_given { "GQA" } else { "MLA" }
                )))
            }
        }
        if let Some(d) = self.dtype {
            spec.dtype = d;
        }
        let tp = self.topology().map_or(self.tp, |t| t.decode_tp);
        spec.validate()?;
        let block = crate::kv::vllm_block_size(&spec, tp, self.block_size)?;
        let shape = match self.topology() {
            // Each decode rank's share, as its plan's shape; the cut says what moves.
            Some(t) => {
                t.validate(&spec)?;
                KvShape::new(spec, t.decode_tp, block)
            }
            None => KvShape::new(spec, self.tp, block),
        }?;
        shape.with_hma(self.hma)
    }

    /// Prefill and decode ranks at their own TP, when any of the flags is given.
    pub fn topology(&self) -> Option<TpTopology> {
        if self.prefill_tp.is_none() && self.decode_tp.is_none() && self.kv_layout.is_none() {
            return None;
        }
        Some(TpTopology {
            prefill_tp: self.prefill_tp.unwrap_or(self.tp),
            decode_tp: self.decode_tp.unwrap_or(self.tp),
            layout: self.kv_layout.unwrap_or_default(),
        })
    }

    fn explicit(&self) -> Result<ModelSpec> {
        let layers = self
            .layers
            .ok_or_else(|| Error::usage("--layers is needed when no --model or --model-config is given"))?;
        let attention = if self.kv_lora_rank.is_some() || self.qk_rope_head_dim.is_some() {
            Attention::Mla {
                kv_lora_rank: self
                    .kv_lora_rank
                    .ok_or_else(|| Error::usage("--kv-lora-rank is needed for an MLA model"))?,
                qk_rope_head_dim: self.qk_rope_head_dim.unwrap_or(0),
            }
        } else {
            Attention::Gqa {
                kv_heads: self.kv_heads.ok_or_else(|| Error::usage("--kv-heads is needed with --layers"))?,
                head_dim: self.head_dim.ok_or_else(|| Error::usage("--head-dim is needed with --layers"))?,
            }
        };
        Ok(ModelSpec {
            name: "custom".into(),
            layers,
            attention,
            dtype: Dtype::Bf16,
            compute: None,
            compute_missing: Some("hidden_size (a model given by its KV shape alone)".into()),
            max_context: None,
            layer_kinds: Vec::new(),
            state: None,
            indexer_dim: None,
        })
    }
}

/// What to measure: prompt lengths, granularities, repetitions, checks.
#[derive(Args, Clone, Debug)]
pub struct WorkloadArgs {
    /// Prompt lengths in tokens, comma-separated (32k = 32768)
    #[arg(long, short = 'p', value_name = "LIST", default_value = "128,1024,8192", value_parser = token_list, allow_hyphen_values = true, help_heading = "Workload")]
    pub prompt_lengths: ::std::vec::Vec<u32>, // one comma list, not repeated flags (clap opt-out)
    /// Message granularity: request, layer, block, or a list, or all
    #[arg(long, short = 'g', value_name = "LIST", default_value = "layer", value_parser = granularity_list, help_heading = "Workload")]
    pub granularity: ::std::vec::Vec<Granularity>,
    /// Timed requests per sweep point (under --arrivals, per load point)
    #[arg(long, short = 'n', visible_alias = "requests", default_value = "10", value_parser = positive_u32, allow_hyphen_values = true, help_heading = "Workload")]
    pub iterations: u32,
    /// Untimed requests before them
    #[arg(long, short = 'w', default_value = "2", value_parser = non_negative_u32, allow_hyphen_values = true, help_heading = "Workload")]
    pub warmup: u32,
    /// Check every byte: after each timed request, inline (timed), or off
    #[arg(long, default_value = "after", value_parser = verify_mode, help_heading = "Workload")]
    pub verify: VerifyMode,
    #[command(flatten)]
    pub blocks: BlockArgs,
    /// Emulated prefill on the sender: its time per prompt length, TOKENS:MS,... (e.g. measured on your vLLM)
    #[arg(long, value_name = "LIST", conflicts_with = "prefill_tflops", help_heading = "Prefill")]
    pub prefill_ms: Option<String>,
    /// Emulated prefill on the sender: the model's FLOPs per layer at this many TFLOP/s
    #[arg(long, value_name = "TF", help_heading = "Prefill")]
    pub prefill_tflops: Option<String>,
    /// When KV moves: layer (each layer as soon as it is computed: P2pNccl PUT_ASYNC) or none (after the last layer:
    /// NixlConnector) [default: layer, none for pulls (ucx get, ofi read)]
    #[arg(long, value_name = "layer|none", value_parser = overlap, help_heading = "Prefill")]
    pub overlap: Option<Overlap>,
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub conversation: ConversationArgs,
}

/// Serving load: requests that arrive at a rate and wait their turn.
#[derive(Args, Clone, Debug)]
pub struct LoadArgs {
    /// Requests arrive at a rate, the receiver starting each at its arrival (or, when --concurrency are
    /// in flight, once one ends): poisson:QPS[,QPS...] or fixed:QPS[,...], one load point per rate, or trace:FILE (CSV
    /// arrival_ms,prompt_tokens[,output_tokens])
    #[arg(long, value_name = "KIND:QPS", allow_hyphen_values = true, help_heading = "Load")]
    pub arrivals: Option<String>,
    /// Prompt lengths of the arriving requests by weight, TOKENS:WEIGHT,... (e.g. 1k:60,8k:30,32k:10)
    /// [default: the prompt lengths, evenly]
    #[arg(
        long,
        value_name = "LIST",
        allow_hyphen_values = true,
        requires = "arrivals",
        help_heading = "Load"
    )]
    pub prompt_mix: Option<String>,
    /// Seed of the arrivals and the prompt draw
    #[arg(long, default_value = "1", requires = "arrivals", help_heading = "Load")]
    pub seed: u64,
    /// How long the decode side keeps a request's KV after its last byte, ms (its decode time)
    #[arg(long, value_name = "MS", value_parser = milliseconds, allow_hyphen_values = true, conflicts_with = "tpot", requires = "arrivals", help_heading = "Load")]
    pub decode_hold: Option<f64>,
    /// Run each load point for this long (its requests those that arrive in it) instead of --requests
    #[arg(long, value_name = "DURATION", value_parser = duration, allow_hyphen_values = true, requires = "arrivals", help_heading = "Load")]
    pub duration: Option<Duration>,
    /// The decode side's KV buffer (vLLM P2pNccl's kv_buffer_size), e.g. 2GB: past it, see --on-full
    #[arg(long, value_name = "SIZE", value_parser = byte_size, allow_hyphen_values = true, requires = "arrivals", help_heading = "Load")]
    pub decode_buffer: Option<u64>,
    /// Past --decode-buffer: spill each tensor that does not fit to a pinned host pool (P2pNccl) or wait until
    /// the request fits (LMCache)
    #[arg(long, value_name = "spill|wait", default_value = "spill", value_parser = on_full, requires = "decode_buffer", help_heading = "Load")]
    pub on_full: OnFull,
    /// Tokens each request decodes (with --tpot: the hold is their product)
    #[arg(long, value_name = "N", value_parser = positive_u32, requires = "tpot", help_heading = "Load")]
    pub output_tokens: Option<u32>,
    /// Time per output token, ms (with --output-tokens, or a trace's output tokens)
    #[arg(long, value_name = "MS", value_parser = milliseconds, allow_hyphen_values = true, requires = "arrivals", help_heading = "Load")]
    pub tpot: Option<f64>,
    /// Requests in flight at once, each on its own connection and buffer region (NixlConnector reads
    /// several requests' KV at a time); 1 moves one at a time in arrival order, as P2pNccl's send queue
    /// [default: 4; 1 with nccl, whose operations go in stream order, and with emulated prefill]
    #[arg(long, value_name = "N", value_parser = positive_u32, requires = "arrivals", help_heading = "Load")]
    pub concurrency: Option<u32>,
}

/// Requests in flight under --arrivals unless told: a few, as a decode
/// instance reads several requests' KV at once.
pub const DEFAULT_CONCURRENCY: u32 = 4;

fn on_full(s: &str) -> Result<OnFull, String> {
    OnFull::parse(s).map_err(|e| e.message)
}

fn milliseconds(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(ms) if ms.is_finite() && ms >= 0.0 => Ok(ms),
        _ => Err(format!("'{s}' is not a time of 0 ms or more")),
    }
}

/// Where blocks sit, and how they are moved (block granularity).
#[derive(Args, Clone, Debug)]
pub struct BlockArgs {
    /// Block granularity: where a request's blocks sit in each side's KV cache pool:
    /// contiguous (a fresh server) or random[:SEED] (a fragmented one)
    #[arg(long, value_name = "TABLE", default_value = "contiguous", value_parser = block_table, help_heading = "Workload")]
    pub block_table: BlockTable,
    /// Block granularity: blocks per (layer, K/V) tensor of each side's pool [default: one more than the
    /// largest request has]
    #[arg(long, value_name = "N", value_parser = positive_u32, allow_hyphen_values = true, help_heading = "Workload")]
    pub pool_blocks: Option<u32>,
    /// Block granularity: merge descriptors adjacent in memory on both sides into one operation, as NIXL does
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set, help_heading = "Workload")]
    pub coalesce: bool,
}

/// How the bytes travel.
#[derive(Args, Clone, Debug)]
pub struct TransportArgs {
    /// Transport: tcp, nccl, ucx, ofi (libfabric) or nixl
    #[arg(long, short = 't', default_value = "tcp", value_parser = transport_kind, help_heading = "Transport")]
    pub transport: TransportKind,
    /// UCX operation: put (push, like Mooncake), get (pull, like NixlConnector) or send (tagged)
    #[arg(long, default_value = "put", value_parser = ucx_op, help_heading = "Transport")]
    pub ucx_op: UcxOp,
    /// UCX endpoint error handling: peer (UCX detects a dead peer, with only the transports that can) or none
    #[arg(long, default_value = "peer", value_parser = ucx_err_mode, help_heading = "Transport")]
    pub ucx_err_mode: UcxErrMode,
    /// UCX operations outstanding at once
    #[arg(long, default_value_t = crate::transport::DEFAULT_IN_FLIGHT, value_parser = positive_u32, allow_hyphen_values = true, help_heading = "Transport")]
    pub in_flight: u32,
    /// Fail unless UCX moves the data over these transports (e.g. cuda_ipc, srd, rc_mlx5)
    #[arg(long, value_name = "NAME[,NAME]", value_delimiter = ',', help_heading = "Transport")]
    pub require_transport: Vec<String>,
    /// The UCP library to load [default: libucp.so.0]
    #[arg(long, value_name = "PATH", env = "KVXFER_UCX_LIB", help_heading = "Transport")]
    pub ucx_lib: Option<String>,
    /// libfabric operation: write (push), read (pull, like NIXL) or send (tagged)
    #[arg(long, default_value = "write", value_parser = ofi_op, help_heading = "Transport")]
    pub ofi_op: OfiOp,
    /// libfabric provider: tcp, shm, efa, verbs, ... [default: libfabric's (or FI_PROVIDER's) choice]
    #[arg(long, value_name = "NAME", help_heading = "Transport")]
    pub ofi_provider: Option<String>,
    /// Fail unless libfabric chose this provider (e.g. efa)
    #[arg(long, value_name = "NAME", help_heading = "Transport")]
    pub require_provider: Option<String>,
    /// The libfabric library to load [default: libfabric.so.1]
    #[arg(long, value_name = "PATH", env = "KVXFER_OFI_LIB", help_heading = "Transport")]
    pub ofi_lib: Option<String>,
    /// NIXL operation: read (decode pulls, NixlConnector) or write (prefill pushes, NixlPushConnector)
    #[arg(long, default_value = "read", value_parser = nixl_op, help_heading = "Transport")]
    pub nixl_op: NixlOp,
    /// NIXL backend plugin: UCX, LIBFABRIC, or any other NIXL lists (kvxfer doctor shows them)
    #[arg(long, value_name = "NAME", default_value = crate::transport::nixl::DEFAULT_BACKEND, help_heading = "Transport")]
    pub nixl_backend: String,
    /// NIXL backend's num_threads [default: 4 for UCX, as NixlConnector; the backend's own otherwise]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=crate::transport::MAX_NIXL_THREADS as i64), help_heading = "Transport")]
    pub nixl_threads: Option<u32>,
    /// A NIXL backend parameter, KEY=VALUE (e.g. engine_config=TLS=^cuda_ipc); repeatable
    #[arg(long, value_name = "KEY=VALUE", help_heading = "Transport")]
    pub nixl_param: Vec<String>,
    /// NIXL's progress thread in each agent (on, as vLLM runs it; off shows what it costs a host short of cores)
    #[arg(long, value_name = "on|off", default_value = "on", value_parser = on_off, action = clap::ArgAction::Set, help_heading = "Transport")]
    pub nixl_progress_thread: bool,
    /// NIXL's C API library [default: libnixl_capi.so, then a pip-installed nixl-cu13 or nixl-cu12]
    #[arg(long, value_name = "PATH", env = "KVXFER_NIXL_LIB", help_heading = "Transport")]
    pub nixl_lib: Option<String>,
    /// Messages per ncclGroupStart/End (nccl; 1 = one call per message, as P2pNcclConnector)
    #[arg(long, default_value = "1", value_parser = positive_u32, allow_hyphen_values = true, help_heading = "Transport")]
    pub nccl_group: u32,
    /// The NCCL library to load [default: libnccl.so.2, then libnccl.so]
    #[arg(long, value_name = "PATH", help_heading = "Transport")]
    pub nccl_lib: Option<String>,
    /// Parallel connections (tcp)
    #[arg(long, default_value = "1", value_parser = stream_count, allow_hyphen_values = true, help_heading = "Transport")]
    pub streams: u32,
    /// SO_SNDBUF/SO_RCVBUF for tcp (e.g. 4MiB) [default: kernel autotuning]
    #[arg(long, value_name = "SIZE", value_parser = socket_buffer, allow_hyphen_values = true, help_heading = "Transport")]
    pub socket_buffer: Option<u64>,
}

/// `-v`: every protocol step logged (src/logging.rs); one definition for
/// the three binaries' command lines.
#[derive(Args, Clone, Debug, Default)]
pub struct LogArgs {
    /// Log every protocol step with timestamps on stderr (-vv: every message too)
    #[arg(long, short = 'v', action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

/// Where results go besides the table.
#[derive(Args, Clone, Debug, Default)]
pub struct OutputArgs {
    /// Write one CSV row per sweep point to FILE
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub csv: Option<PathBuf>,
    /// Write the whole run (plan, machines, figures, histograms) to FILE
    #[arg(long, value_name = "FILE", help_heading = "Output")]
    pub json: Option<PathBuf>,
    /// No table on stdout, no progress bar
    #[arg(long, short = 'q', help_heading = "Output")]
    pub quiet: bool,
    /// Every figure in the table (messages, p90, p99.9, mean ± σ, min; about
    /// 190 columns) where the terminal is that wide; the default fits 100
    #[arg(long, help_heading = "Output")]
    pub wide: bool,
    /// Instead of the table, one JSON line per point as it completes, and one for the outcome
    #[arg(long, help_heading = "Output")]
    pub json_stream: bool,
    /// Fail (exit 4) if a point moves fewer GB/s: a floor for all prompt
    /// lengths and/or TOKENS:GBPS for some (e.g. 300 or 8k:300,32k:350)
    #[arg(long, value_name = "[TOKENS:]GBPS,...", value_parser = threshold, help_heading = "Gate")]
    pub min_gbps: Option<Threshold>,
    /// Fail (exit 4) if a point reaches less of the link's peak (--link), in percent
    #[arg(long, value_name = "[TOKENS:]PERCENT,...", value_parser = percent_threshold, help_heading = "Gate")]
    pub min_percent_of_peak: Option<Threshold>,
    /// Fail (exit 4) if a point's request p99 (the table's) is longer: for all
    /// prompt lengths and/or TOKENS:TIME (e.g. 20ms or 8k:40ms); needs -n 100 or more
    #[arg(long, value_name = "[TOKENS:]TIME,...", value_parser = time_threshold, help_heading = "Gate")]
    pub max_p99: Option<Threshold>,
    /// Fail (exit 4) if what the transfer adds to time-to-first-token, p99, is
    /// longer (with --prefill-tflops or --prefill-ms; -n 100 or more)
    #[arg(long, value_name = "[TOKENS:]TIME,...", value_parser = time_threshold, help_heading = "Gate")]
    pub max_added_ttft: Option<Threshold>,
}

impl OutputArgs {
    pub fn gate(&self) -> Gate {
        Gate {
            min_gbps: self.min_gbps.clone(),
            min_percent_of_peak: self.min_percent_of_peak.clone(),
            max_p99: self.max_p99.clone(),
            max_added_ttft: self.max_added_ttft.clone(),
        }
    }
}

/// Where a side's transfer buffer lives.
#[derive(Args, Clone, Debug)]
pub struct MemoryArgs {
    /// Buffer memory: host, pinned (host, page-locked) or gpu
    #[arg(long, default_value = "host", value_parser = memory_kind, help_heading = "Memory")]
    pub memory: MemoryKind,
    /// CUDA device of the buffer (gpu; pinned memory is registered with it)
    #[arg(long, default_value = "0", value_parser = device_ordinal, allow_hyphen_values = true, help_heading = "Memory")]
    pub device: usize,
}

impl MemoryArgs {
    pub fn spec(&self) -> MemorySpec {
        MemorySpec { kind: self.memory, device: self.device }
    }
}

/// Everything the sender decides (the receiver adopts it).
#[derive(Args, Clone, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    #[command(flatten)]
    pub transport: TransportArgs,
    #[command(flatten)]
    pub memory: MemoryArgs,
    /// Theoretical peak for the %peak column: a preset (pcie4, pcie5, nvlink4,
    /// 25gbe, 100gbe, 200gbe, 400gbe, ndr400, efa-p5, ...) or GB/s
    #[arg(long, value_name = "PRESET|GBPS", value_parser = link_spec)]
    pub link: Option<Link>,
    /// Longest wait for the peer at any step (handshake, each read; scaled up
    /// for large requests)
    #[arg(long, default_value = "30s", value_parser = duration, allow_hyphen_values = true)]
    pub timeout: Duration,
    #[command(flatten)]
    pub output: OutputArgs,
    /// Test-only fault injection
    #[arg(long, hide = true, value_parser = fault)]
    pub fault: Option<Fault>,
}

impl RunArgs {
    pub fn plan(&self) -> Result<Plan> {
        let w = &self.workload;
        let plan = Plan {
            shape: self.model.resolve()?,
            prompt_lengths: w.prompt_lengths.clone(),
            granularities: w.granularity.clone(),
            iterations: w.iterations,
            warmup: w.warmup,
            verify: w.verify,
            block_table: w.blocks.block_table,
            pool_blocks: w.blocks.pool_blocks,
            coalesce: w.blocks.coalesce,
            prefill: self.prefill()?,
            load: None,
            conversation: None,
            tp: self.model.topology().map(TpPlan::new),
        };
        let mut plan = self.with_load(plan)?;
        let c = &w.conversation;
        let modes = c.multi_turn.clone();
        let traced = plan.load.as_ref().map_or(&[][..], |l| &l.trace[..]);
        let traced = traced.iter().any(|a| a.turn.is_some()).then(|| traced.to_vec());
        if let Some(conversation) = crate::cli::turns::conversation(c, &plan.shape)? {
            if w.load.prompt_mix.is_some() {
                return Err(Error::usage("--prompt-mix: a conversation's turns give its prompt lengths"));
            }
            // The points are the modes; the prompts, the conversation's turns.
            let last = conversation.turn(conversation.turns).prompt_tokens as u32;
            plan.prompt_lengths = vec![last];
            if let Some(l) = &mut plan.load {
                l.mix = vec![(last, 1.0)];
            }
            plan.conversation =
                Some(crate::plan::turns::ConversationPlan { conversation: Some(conversation), modes });
        } else if let Some(trace) = traced {
            crate::cli::turns::check_traced_context(c, &plan.shape, &trace)?;
            plan.conversation = Some(crate::plan::turns::ConversationPlan { conversation: None, modes });
        }
        plan.validate()?;
        Ok(plan)
    }

    /// Serving load, if asked: the mix's prompt lengths become the plan's.
    fn with_load(&self, mut plan: Plan) -> Result<Plan> {
        let l = &self.workload.load;
        let Some(arrivals) = &l.arrivals else { return Ok(plan) };
        let trace = match arrivals.strip_prefix("trace:") {
            Some(path) => {
                let what = format!("--arrivals trace:{path}");
                let text = crate::input::read_text(path.as_ref(), &what, crate::input::MOST_BYTES)?;
                crate::schedule::parse_trace(&text, path)?
            }
            None => Vec::new(),
        };
        let mix = match (&l.prompt_mix, trace.is_empty()) {
            (Some(_), false) => {
                return Err(Error::usage("--prompt-mix: a trace gives each request's prompt length itself"))
            }
            (Some(m), true) => crate::schedule::parse_mix(m)?,
            (None, true) => plan.prompt_lengths.iter().map(|&t| (t, 1.0)).collect(),
            // A trace's lengths, weighted by how often they come.
            (None, false) => {
                let mut mix: Vec<(u32, f64)> = Vec::new();
                for a in &trace {
                    match mix.iter_mut().find(|m| m.0 == a.tokens) {
                        Some(m) => m.1 += 1.0,
                        None => mix.push((a.tokens, 1.0)),
                    }
                }
                mix
            }
        };
        let traced_outputs = trace.iter().any(|a| a.output_tokens.is_some());
        let conversations =
            self.workload.conversation.turns.is_some() || trace.iter().any(|a| a.turn.is_some());
        if l.tpot.is_some() && l.output_tokens.is_none() && !traced_outputs {
            return Err(Error::usage("--tpot needs --output-tokens, or a trace with output tokens"));
        }
        let hold_ms = match (l.decode_hold, l.output_tokens, l.tpot) {
            (Some(ms), _, _) => ms,
            (None, Some(n), Some(tpot)) => n as f64 * tpot,
            _ => 0.0,
        };
        let arrivals = match trace.is_empty() {
            true => crate::schedule::Arrivals::parse_list(arrivals)?,
            false => vec![crate::schedule::Arrivals::Trace { qps: crate::schedule::trace_qps(&trace) }],
        };
        plan.prompt_lengths = mix.iter().map(|m| m.0).collect();
        plan.load = Some(Load {
            arrivals,
            mix,
            seed: l.seed,
            decode_hold_ns: (hold_ms * 1e6).round() as u64,
            tpot_ns: l.tpot.map(|ms| (ms * 1e6).round() as u64),
            duration_ns: l.duration.map(|d| d.as_nanos() as u64),
            trace,
            decode_buffer: l.decode_buffer.map(|b| (b, l.on_full)),
            concurrency: match (l.concurrency, self.transport.transport) {
                (Some(n), TransportKind::Nccl) if n > 1 => {
                    return Err(Error::usage(format!(
                        "--concurrency {n} with nccl: P2pNcclConnector's sends of concurrent requests go in \
                         stream order on one communicator, one request at a time (--concurrency 1)"
                    )))
                }
                (Some(n), _) => n,
                (None, TransportKind::Nccl) => 1,
                (None, _) if plan.prefill.is_some() => 1,
                // A conversation's KV stays in one lane's region.
                (None, _) if conversations => 1,
                (None, _) => DEFAULT_CONCURRENCY,
            },
        });
        Ok(plan)
    }

    /// The emulated prefill asked for, if any. Pulls read after prefill.
    fn prefill(&self) -> Result<Option<Prefill>> {
        let w = &self.workload;
        let time = match (&w.prefill_ms, &w.prefill_tflops) {
            (Some(ms), _) => Prefill::parse_ms(ms)?,
            (None, Some(tf)) => Prefill::parse_tflops(tf)?,
            (None, None) if w.overlap.is_some() => {
                return Err(Error::usage(
                    "--overlap needs an emulated prefill: --prefill-ms or --prefill-tflops",
                ))
            }
            (None, None) => return Ok(None),
        };
        let t = &self.transport;
        let pulls = matches!(t.transport, TransportKind::Ucx if t.ucx_op == UcxOp::Get)
            || matches!(t.transport, TransportKind::Ofi if t.ofi_op == OfiOp::Read);
        let whole = t.transport == TransportKind::Nixl;
        let overlap = w.overlap.unwrap_or(if pulls || whole { Overlap::None } else { Overlap::Layer });
        if whole && overlap == Overlap::Layer {
            return Err(Error::usage(
                "--overlap layer: NIXL moves a request in one transfer once its prefill has ended, as NixlConnector \
                 (read) and NixlPushConnector (write) do; use --overlap none",
            ));
        }
        if pulls && overlap == Overlap::Layer {
            return Err(Error::usage(
                "--overlap layer: the decode side pulls (ucx get, ofi read) once prefill has ended, as NixlConnector \
                 does; use --overlap none, or a pushing operation",
            ));
        }
        Ok(Some(Prefill { time, overlap }))
    }

    /// A gate this plan cannot satisfy is refused before anything runs (a
    /// percentage with no peak, a floor for a length not measured, a p99
    /// from too few requests).
    pub fn check_gate(&self, plan: &Plan) -> Result<()> {
        self.output.gate().needs().check(plan, self.link.is_some()).map_err(Error::usage)
    }

    pub fn transport_spec(&self) -> TransportSpec {
        TransportSpec {
            kind: self.transport.transport,
            streams: self.transport.streams,
            socket_buffer: self.transport.socket_buffer,
            nccl_group: self.transport.nccl_group,
            ucx_op: self.transport.ucx_op,
            ucx_err_mode: self.transport.ucx_err_mode,
            in_flight: self.transport.in_flight,
            require_transport: self.transport.require_transport.clone(),
            ofi_op: self.transport.ofi_op,
            ofi_provider: self.transport.ofi_provider.clone(),
            require_provider: self.transport.require_provider.clone(),
            nixl_op: self.transport.nixl_op,
            nixl_backend: self.transport.nixl_backend.clone(),
            nixl_threads: self.transport.nixl_threads,
            nixl_params: self.transport.nixl_param.clone(),
            nixl_progress_thread: self.transport.nixl_progress_thread,
            nixl_fault: self.fault == Some(Fault::NeighbourBlock),
        }
    }

    pub fn local(&self) -> LocalOptions {
        LocalOptions {
            nccl_lib: self.transport.nccl_lib.clone(),
            ucx_lib: self.transport.ucx_lib.clone(),
            ofi_lib: self.transport.ofi_lib.clone(),
            nixl_lib: self.transport.nixl_lib.clone(),
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct SendArgs {
    /// The receiver's address: HOST:PORT, IPv4:PORT or [IPv6]:PORT; several,
    /// comma-separated, send to all at once (one-to-many)
    #[arg(long, short = 'c', value_name = "ADDR[,ADDR]", value_delimiter = ',', required = true)]
    pub connect: Vec<String>,
    /// This host's address to connect from, which picks the NIC; tcp data follows it
    #[arg(long, value_name = "IP")]
    pub bind: Option<std::net::IpAddr>,
    /// With --prefill-tp/--decode-tp: this sender's prefill rank; --connect names the decode ranks
    /// that read from it, in order
    #[arg(long, value_name = "RANK", value_parser = non_negative_u32, allow_hyphen_values = true, help_heading = "Tensor parallelism")]
    pub prefill_rank: Option<u32>,
    /// With --prefill-tp/--decode-tp under --arrivals: the prefill instances (each of prefill TP
    /// ranks, its own arrivals) that feed the decode instance
    #[arg(long, value_name = "N", default_value_t = 1, help_heading = "Tensor parallelism")]
    pub prefill_instances: u32,
    /// Which of the --prefill-instances this sender's rank belongs to, from 0
    #[arg(long, value_name = "I", default_value_t = 0, help_heading = "Tensor parallelism")]
    pub prefill_instance: u32,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Clone, Debug)]
pub struct RecvArgs {
    /// Address to listen on for the sender
    #[arg(long, short = 'l', value_name = "ADDR", default_value = "[::]:7477")]
    pub listen: String,
    /// Longest wait for the sender at any step once it has connected
    #[arg(long, default_value = "30s", value_parser = duration, allow_hyphen_values = true)]
    pub timeout: Duration,
    /// Longest wait for a sender to connect
    #[arg(long, default_value = "10m", value_parser = duration, allow_hyphen_values = true)]
    pub wait_for_sender: Duration,
    /// Longest a connection may take to say who it is (preamble and plan):
    /// a silent or slow stranger is dropped after it, and senders behind it
    /// are not held up (at most --timeout)
    #[arg(long, default_value = "2s", value_parser = duration, allow_hyphen_values = true)]
    pub handshake_timeout: Duration,
    /// Refuse a sender that asks for another transport
    #[arg(long, value_name = "NAME", value_parser = transport_kind)]
    pub expect_transport: Option<TransportKind>,
    /// Refuse a sender whose KV is not this built-in model's (layers, KV heads and head_dim or latent, dtype)
    #[arg(long, value_name = "NAME", value_parser = expected_model)]
    pub expect_model: Option<ModelSpec>,
    #[command(flatten)]
    pub memory: MemoryArgs,
    #[command(flatten)]
    pub libraries: LibraryArgs,
    /// Serve this many senders at once (many-to-one): each its own buffer,
    /// all requests started together; reports each pair and the aggregate
    #[arg(long, default_value = "1", value_parser = fan_size, allow_hyphen_values = true)]
    pub senders: u32,
    /// Refuse a sender that does not send this decode rank's share of a P x D run (the prefill
    /// ranks that feed it are all served at once, however many)
    #[arg(long, value_name = "RANK", value_parser = non_negative_u32, allow_hyphen_values = true, help_heading = "Tensor parallelism")]
    pub decode_rank: Option<u32>,
    /// Refuse a sender whose KV cache is laid out otherwise (hnd, nhd, blocks-first)
    #[arg(long, value_name = "LAYOUT", value_parser = kv_layout, help_heading = "Tensor parallelism")]
    pub kv_layout: Option<KvLayout>,
    /// Service mode (iperf3 -s): serve one sender after another until SIGINT or SIGTERM; a
    /// sender that comes during a run is told the receiver is busy
    #[arg(long, help_heading = "Service")]
    pub forever: bool,
    /// With --forever: write each run's JSON report into DIR, named by time, run and peer
    #[arg(long, value_name = "DIR", help_heading = "Service")]
    pub json_dir: Option<PathBuf>,
    /// With --forever: also send, when `kvxfer matrix --hosts` asks, to the other hosts it names
    #[arg(long, requires = "forever", help_heading = "Service")]
    pub matrix: bool,
    /// The service's own: serve, in this process, the sender it greeted (its
    /// control socket on fd 3, its plan on stdin)
    #[arg(long, hide = true)]
    pub serve_inherited: bool,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl RecvArgs {
    /// The receiving side of a rank that a launcher started with `run`'s
    /// options: one sender, quiet, its waits bounded by the run's timeout.
    pub fn for_rank(run: &RunArgs, listen: String) -> RecvArgs {
        RecvArgs {
            listen,
            timeout: run.timeout,
            wait_for_sender: run.timeout,
            handshake_timeout: run.timeout,
            expect_transport: None,
            expect_model: None,
            memory: run.memory.clone(),
            libraries: LibraryArgs {
                nccl_lib: run.transport.nccl_lib.clone(),
                ucx_lib: run.transport.ucx_lib.clone(),
                ofi_lib: run.transport.ofi_lib.clone(),
                nixl_lib: run.transport.nixl_lib.clone(),
            },
            senders: 1,
            decode_rank: None,
            kv_layout: None,
            forever: false,
            json_dir: None,
            matrix: false,
            serve_inherited: false,
            output: OutputArgs { quiet: true, ..Default::default() },
        }
    }
}

#[derive(Args, Clone, Debug)]
pub struct PairArgs {
    /// Loopback address the receiver listens on (port 0: any free port)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: String,
    /// The receiver's buffer memory [default: as --memory]
    #[arg(long, value_parser = memory_kind, help_heading = "Memory")]
    pub recv_memory: Option<MemoryKind>,
    /// The receiver's CUDA device [default: the next after --device]
    #[arg(long, value_parser = device_ordinal, allow_hyphen_values = true, help_heading = "Memory")]
    pub recv_device: Option<usize>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Clone, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt lengths in tokens, comma-separated (32k = 32768)
    #[arg(long, short = 'p', value_name = "LIST", default_value = "128,1024,8192,32768", value_parser = token_list, allow_hyphen_values = true)]
    pub prompt_lengths: ::std::vec::Vec<u32>, // one comma list, not repeated flags (clap opt-out)
    /// Granularities to show
    #[arg(long, short = 'g', value_name = "LIST", default_value = "all", value_parser = granularity_list)]
    pub granularity: ::std::vec::Vec<Granularity>,
    /// List the built-in models and exit
    #[arg(long)]
    pub list_models: bool,
    #[command(flatten)]
    pub blocks: BlockArgs,
    /// Also write the plan as JSON to FILE (with each block point's message offsets on both sides)
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub conversation: ConversationArgs,
}

impl PlanArgs {
    /// The plan `kvxfer plan` shows: one request of each point, nothing run.
    pub fn shown(&self, shape: &KvShape, granularities: Vec<Granularity>, tp: Option<TpPlan>) -> Plan {
        Plan {
            shape: shape.clone(),
            prompt_lengths: self.prompt_lengths.clone(),
            granularities,
            iterations: 1,
            warmup: 0,
            verify: crate::plan::VerifyMode::After,
            block_table: self.blocks.block_table,
            pool_blocks: self.blocks.pool_blocks,
            coalesce: self.blocks.coalesce,
            prefill: None,
            load: None,
            conversation: None,
            tp,
        }
    }
}

/// Multi-turn conversations: what each turn moves.
#[derive(Args, Clone, Debug)]
pub struct ConversationArgs {
    /// Turns of a conversation: show what each moves instead of the prompt lengths' messages
    #[arg(long, value_name = "N", requires = "turn_tokens", help_heading = "Conversations")]
    pub turns: Option<u32>,
    /// Tokens the user adds and the model generates each turn, both joining the context, IN[:OUT]
    #[arg(long, value_name = "IN[:OUT]", requires = "turns", help_heading = "Conversations")]
    pub turn_tokens: Option<String>,
    /// What each turn moves: full (the whole prompt's KV, vLLM's PD proxy), delta (the blocks decode lacks,
    /// NixlConnector), bidirectional (before each later turn the conversation's KV back from decode, then the
    /// delta), d-direct (PPD: turn 1 only)
    #[arg(long, value_name = "LIST", default_value = "full,delta,bidirectional,d-direct", value_parser = multi_turn_list, help_heading = "Conversations")]
    pub multi_turn: ::std::vec::Vec<MultiTurn>,
    /// The longest context the model takes [default: the preset's max_position_embeddings, or 131072]
    #[arg(long, value_name = "TOKENS", value_parser = positive_u32, help_heading = "Conversations")]
    pub max_context: Option<u32>,
}

fn expected_model(s: &str) -> Result<ModelSpec, String> {
    presets::lookup(s).map_err(|e| e.message)
}

fn multi_turn_list(s: &str) -> Result<Vec<MultiTurn>, String> {
    let items = units::list_items(s, "--multi-turn").map_err(|e| e.message)?;
    items.into_iter().map(|m| MultiTurn::parse(m).map_err(|e| e.message)).collect()
}

#[derive(Args, Clone, Debug)]
pub struct SizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt lengths of the traffic, comma-separated (32k = 32768)
    #[arg(long, short = 'p', value_name = "LIST", default_value = "1k,8k,32k", value_parser = token_list, allow_hyphen_values = true)]
    pub prompt_lengths: ::std::vec::Vec<u32>, // one comma list, not repeated flags (clap opt-out)
    /// Share of each prompt length, comma-separated, one per length [default: equal]
    #[arg(long, value_name = "LIST", value_parser = weight_list, allow_hyphen_values = true)]
    pub mix: Option<::std::vec::Vec<f64>>,
    /// The traffic as kvxfer-send spells it: TOKENS:WEIGHT,... (instead of -p and --mix)
    #[arg(long, value_name = "MIX", conflicts_with_all = ["prompt_lengths", "mix"], allow_hyphen_values = true)]
    pub prompt_mix: Option<String>,
    /// Requests whose KV sits received and not yet consumed on one decode GPU at
    /// once (bursts reach vLLM's --max-num-seqs)
    #[arg(long, default_value = "8", value_parser = positive_u32, allow_hyphen_values = true)]
    pub concurrent: u32,
    /// The decode GPU's memory (e.g. 141GB), to show the buffer's share of it
    #[arg(long, value_name = "SIZE", value_parser = byte_size, allow_hyphen_values = true)]
    pub gpu_memory: Option<u64>,
    /// A kvxfer --json report of the same model: adds each prompt's transfer time
    #[arg(long, value_name = "FILE")]
    pub run: Option<PathBuf>,
    /// Also write the advice as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

fn weight_list(s: &str) -> Result<Vec<f64>, String> {
    units::list_items(s, "--mix")
        .map_err(|e| e.message)?
        .into_iter()
        .map(|w| match w.parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
            _ => Err(format!("'{w}' is not a positive weight")),
        })
        .collect()
}

/// `kvxfer compare`: its own options first, then the run's.
#[derive(Args, Clone, Debug)]
pub struct CompareArgs {
    /// The candidates, comma-separated (tcp,ucx,ofi,nccl,nixl; one may repeat, to see the noise)
    #[arg(long, short = 't', value_name = "LIST", value_delimiter = ',', required = true, value_parser = transport_kind)]
    pub transport: Vec<TransportKind>,
    /// Rounds: every candidate runs once a round, in turn (6 or more give a 95% interval)
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Write the comparison (each round's figures, medians, intervals, ratios) to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// The run's options, as kvxfer pair takes them (or kvxfer-send's, with
    /// --connect to a kvxfer-recv --forever elsewhere), after compare's own
    #[arg(value_name = "RUN OPTIONS", trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
    pub args: Vec<String>,
}

#[derive(Args, Clone, Debug)]
pub struct ReportArgs {
    /// kvxfer --json reports to merge (transports, clusters, builds)
    #[arg(value_name = "RUN.json", required = true)]
    pub runs: Vec<PathBuf>,
    /// Folder for summary.md, summary.csv and the plots (PNG and SVG)
    #[arg(long, short = 'o', value_name = "DIR")]
    pub out: PathBuf,
    /// A run to compare every point with: a column of GB/s ratios to its
    /// point of the same granularity and prompt length (added to the runs
    /// if not among them)
    #[arg(long, value_name = "RUN.json")]
    pub baseline: Option<PathBuf>,
    /// Merge runs of different models or TP into one table and plot (each
    /// series then names its model and TP); refused without it
    #[arg(long)]
    pub allow_mixed: bool,
}

#[derive(Args, Clone, Debug)]
pub struct LaunchArgs {
    /// Where the receivers listen and the senders connect: each receiving
    /// rank's HOST:PORT, in rank order (each listens on every address, on
    /// its PORT). Built with the `mpi` feature, MPI finds them when this is
    /// left out
    #[arg(long, value_name = "HOST:PORT[,...]", value_delimiter = ',', required = !cfg!(feature = "mpi"))]
    pub rendezvous: Vec<String>,
    /// Each rank's role, by rank, e.g. send,send,recv (default: every rank
    /// sends but the last; one side must be a single rank)
    #[arg(long, value_name = "ROLE,...", value_delimiter = ',', value_parser = role)]
    pub roles: Vec<crate::session::Role>,
    /// The sending ranks connect from this address, which picks the NIC
    #[arg(long, value_name = "IP")]
    pub bind: Option<std::net::IpAddr>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `kvxfer doctor`: what this node has and which runs will work.
#[derive(Args, Clone, Debug)]
pub struct DoctorArgs {
    /// Also write the findings as JSON to FILE
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub libraries: LibraryArgs,
}

/// The transport libraries a receiver or `kvxfer doctor` loads.
#[derive(Args, Clone, Debug)]
pub struct LibraryArgs {
    /// The NCCL library to load [default: libnccl.so.2, then libnccl.so]
    #[arg(long, value_name = "PATH")]
    pub nccl_lib: Option<String>,
    /// The UCP library to load [default: libucp.so.0]
    #[arg(long, value_name = "PATH", env = "KVXFER_UCX_LIB")]
    pub ucx_lib: Option<String>,
    /// The libfabric library to load [default: libfabric.so.1]
    #[arg(long, value_name = "PATH", env = "KVXFER_OFI_LIB")]
    pub ofi_lib: Option<String>,
    /// NIXL's C API library [default: libnixl_capi.so, then a pip-installed nixl-cu13 or nixl-cu12]
    #[arg(long, value_name = "PATH", env = "KVXFER_NIXL_LIB")]
    pub nixl_lib: Option<String>,
}

impl LibraryArgs {
    pub fn local(&self) -> crate::transport::LocalOptions {
        crate::transport::LocalOptions {
            nccl_lib: self.nccl_lib.clone(),
            ucx_lib: self.ucx_lib.clone(),
            ofi_lib: self.ofi_lib.clone(),
            nixl_lib: self.nixl_lib.clone(),
        }
    }
}

/// `kvxfer matrix`: one rank of the all-pairs matrix.
#[derive(Args, Clone, Debug)]
pub struct MatrixArgs {
    /// Rank 0's HOST:PORT: it listens there, every rank reports to it and takes its pairs from it
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "hosts", conflicts_with = "hosts")]
    pub rendezvous: Option<String>,
    /// Without a launcher: the hosts, each running `kvxfer-recv --forever --matrix`, that send to
    /// and receive from each other (HOST or HOST:PORT, port 7477 by default)
    #[arg(long, value_name = "HOST[:PORT],...", value_delimiter = ',')]
    pub hosts: Vec<String>,
    /// Pairs of a step run at once: all (each rank sends once and receives once: the fabric loaded
    /// as serving loads it) or 1 (one pair at a time: each link alone)
    #[arg(long, value_name = "all|1", default_value = "all", value_parser = concurrency)]
    pub concurrent_pairs: crate::matrix::Concurrency,
    /// Flag the pairs below this percent of the median
    #[arg(long, value_name = "P", default_value = "80", value_parser = percent)]
    pub outlier_percent: f64,
    /// Ranks per node, where the launcher does not give each rank's rank on its node: a rank
    /// takes GPU --device + (rank mod this)
    #[arg(long, value_name = "N", value_parser = positive_u32)]
    pub ranks_per_node: Option<u32>,
    /// Connect and listen on this address, which picks the NIC
    #[arg(long, value_name = "IP")]
    pub bind: Option<std::net::IpAddr>,
    #[command(flatten)]
    pub run: RunArgs,
}

fn percent(s: &str) -> Result<f64, String> {
    match s.trim().trim_end_matches('%').parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(format!("{s:?}: give a percentage above 0, at most 100")),
    }
}

fn role(s: &str) -> Result<crate::session::Role, String> {
    match s.trim() {
        "send" | "sender" => Ok(crate::session::Role::Sender),
        "recv" | "receiver" => Ok(crate::session::Role::Receiver),
        other => Err(format!("unknown role '{other}' (send or recv)")),
    }
}
