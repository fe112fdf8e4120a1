//! `kvxfer size`: the decode-side buffers a connector needs for a model and
//! a traffic mix, printed as the settings to paste.

use super::args::SizeArgs;
use crate::error::{Error, Result};
use crate::report::RunReport;
use crate::size::{self, Sizing};
use crate::units::{fmt_bytes, fmt_ns};
use std::io::Write;

pub fn run(a: &SizeArgs) -> Result<()> {
    if a.model.topology().is_some() {
        // The buffer is per decode rank: its share is the one at decode's TP.
        return Err(Error::usage("kvxfer size sizes one decode rank's buffer: give --tp D, decode's TP"));
    }
    let shape = a.model.resolve()?;
    let mix = match &a.prompt_mix {
        // The spelling of kvxfer-send and pair.
        Some(m) => crate::schedule::parse_mix(m)?,
        None => {
            let weights = a.mix.clone().unwrap_or_else(|| vec![1.0; a.prompt_lengths.len()]);
            if weights.len() != a.prompt_lengths.len() {
                return Err(Error::usage(format!(
                    "--mix gives {} shares for {} prompt lengths",
                    weights.len(),
                    a.prompt_lengths.len()
                )));
            }
            a.prompt_lengths.iter().copied().zip(weights).collect()
        }
    };
    let report = a.run.as_ref().map(|p| read_run(p, shape.bytes_per_token())).transpose()?;
    let s = size::size(&shape, &mix, a.concurrent, report.as_ref().map(|r| &r.points[..]));
    print(&mut std::io::stdout().lock(), a, &shape, &s, report.as_ref())?;
    if let Some(path) = &a.json {
        let doc = serde_json::json!({
            "model": shape.model.describe(),
            "tp": shape.tp,
            "kv_bytes_per_token": shape.bytes_per_token(),
            "sizing": s,
            "p2p_nccl_kv_transfer_config": s.p2p_nccl_consumer_config(),
        });
        crate::cli::outputs::write_text(
            path,
            serde_json::to_string_pretty(&doc).expect("serializes") + "\n",
        )?;
    }
    Ok(())
}

/// A recorded run, which must be of the same KV shape as the advice.
fn read_run(path: &std::path::Path, bytes_per_token: u64) -> Result<RunReport> {
    let r = crate::report::compare::load(path)?;
    if r.kv_bytes_per_token != bytes_per_token {
        return Err(Error::usage(format!(
            "{} measured {} ({} bytes of KV per token per rank); this advice is for {} bytes per token: \
             size the model and TP of the run",
            path.display(),
            r.model,
            r.kv_bytes_per_token,
            bytes_per_token
        )));
    }
    Ok(r)
}

fn print(
    out: &mut dyn Write,
    a: &SizeArgs,
    shape: &crate::kv::KvShape,
    s: &Sizing,
    run: Option<&RunReport>,
) -> Result<()> {
    let gb = |b: u64| format!("{b} ({})", fmt_bytes(b));
    writeln!(out, "model        {}", shape.model.describe())?;
    writeln!(out, "per rank     TP {}: {} of KV per token", shape.tp, fmt_bytes(shape.bytes_per_token()))?;
    hybrid_note(out, shape, s)?;
    writeln!(out, "concurrency  {} requests received and not yet consumed on one decode GPU", s.concurrent)?;
    writeln!(out)?;
    writeln!(
        out,
        "{:>8} {:>6} {:>12} {:>12} {:>14} {:>12} {:>11} {:>11}",
        "prompt", "share", "request", "layer", "layer, pooled", "LMCache", "xfer p50", "xfer p99"
    )?;
    for p in &s.prompts {
        let (p50, p99) = match &p.transfer {
            Some(m) => (fmt_ns(m.p50_ns as f64), crate::report::table::tail(m.p99_ns)),
            None => ("-".into(), "-".into()),
        };
        writeln!(
            out,
            "{:>8} {:>5.0}% {:>12} {:>12} {:>14} {:>12} {:>11} {:>11}",
            p.tokens,
            100.0 * p.share,
            fmt_bytes(p.request_bytes),
            fmt_bytes(p.layer_tensor_bytes),
            fmt_bytes(p.pooled_layer_bytes),
            fmt_bytes(p.lmcache_bytes),
            p50,
            p99
        )?;
    }
    writeln!(out)?;
    let share = a
        .gpu_memory
        .map(|m| {
            format!(
                ", {:.1}% of the GPU's {} (vLLM's guide: 5-10%)",
                100.0 * s.kv_buffer_size as f64 / m as f64,
                fmt_bytes(m)
            )
        })
        .unwrap_or_default();
    writeln!(out, "vLLM P2pNcclConnector, decode side:")?;
    writeln!(
        out,
        "  kv_buffer_size    {}: {} requests of the longest prompt never spill{share}",
        gb(s.kv_buffer_size),
        s.concurrent
    )?;
    if let Some(hma) = s.hma_bytes.filter(|_| !s.needs_hma) {
        writeln!(
            out,
            "                    ({} of them as vLLM's hybrid KV cache manager keeps them, in a connector that \
             supports it: NixlConnector, Mooncake)",
            gb(hma)
        )?;
    }
    writeln!(
        out,
        "                    {} would hold {} requests of the mix's mean size; bursts of long prompts then spill",
        gb(s.kv_buffer_size_mean),
        s.concurrent
    )?;
    if let Some(m) = a.gpu_memory.filter(|m| s.kv_buffer_size as f64 > 0.1 * *m as f64) {
        writeln!(
            out,
            "                    note: above 10% of the GPU, the decode instance keeps that much less KV cache for \
             decoding; a smaller threshold ({} at 10%) spills the rest to the pinned pool at PCIe speed",
            fmt_bytes(m / 10)
        )?;
    }
    let rounding = 100.0 * (s.pinned_pool_bytes as f64 / s.kv_buffer_size as f64 - 1.0);
    writeln!(
        out,
        "  mem_pool_size_gb  {}: the pinned host pool for {} spilled requests of the longest prompt \
         ({} after rounding each layer tensor up to a power of two, +{rounding:.0}%)",
        s.mem_pool_size_gb,
        s.concurrent,
        fmt_bytes(s.pinned_pool_bytes)
    )?;
    writeln!(out, "  --kv-transfer-config '{}'", s.p2p_nccl_consumer_config())?;
    writeln!(out, "  (add kv_port and the proxy's kv_connector_extra_config; the prefill side can keep kv_buffer_size 1e1 in PUT modes)")?;
    writeln!(out)?;
    writeln!(
        out,
        "LMCache PD mode, decoder: pd_buffer_size {} ({} requests of the longest prompt in {}-token chunks)",
        gb(s.lmcache_pd_buffer_size),
        s.concurrent,
        size::LMCACHE_CHUNK_TOKENS
    )?;
    if let Some(r) = run {
        writeln!(out)?;
        added_ttft(out, r, s)?;
        measured_load(out, r, s)?;
    }
    Ok(())
}

/// What the run says KV transfer adds to time-to-first-token: measured
/// against emulated prefill where the run had it, else the transfer of one
/// request alone (what `--overlap none` adds; a layer-wise pipeline hides
/// most of it).
fn added_ttft(out: &mut dyn Write, r: &RunReport, s: &Sizing) -> Result<()> {
    let measured = s.prompts.iter().filter_map(|p| p.transfer.as_ref()).find_map(|m| m.added.as_ref());
    match measured {
        Some(a) => writeln!(
            out,
            "Added time to first token, measured in the run ({}, {}): from the end of the emulated prefill to \
             the decode side holding the last byte, overlap {}",
            r.transport.kind, r.started_at, a.overlap
        )?,
        None => writeln!(
            out,
            "Added time to first token, from the run ({}, {}): each request's transfer, after prefill \
             (no emulated prefill in the run: --prefill-tflops or --prefill-ms measures the overlap)",
            r.transport.kind, r.started_at
        )?,
    }
    for p in &s.prompts {
        match (&p.transfer, p.transfer.as_ref().and_then(|m| m.added.as_ref())) {
            (Some(m), Some(a)) => writeln!(
                out,
                "  {:>8} tokens: {} median, {} p99, on a prefill of {} (least possible {}; the transfer alone {}, \
                 {} granularity)",
                p.tokens,
                fmt_ns(a.p50_ns as f64),
                crate::report::table::tail(a.p99_ns),
                fmt_ns(a.prefill_p50_ns as f64),
                fmt_ns(a.lower_bound_ns as f64),
                fmt_ns(m.p50_ns as f64),
                m.granularity
            )?,
            (Some(m), None) => writeln!(
                out,
                "  {:>8} tokens: {} median, {} p99 ({} granularity, {:.1} GB/s{})",
                p.tokens,
                fmt_ns(m.p50_ns as f64),
                crate::report::table::tail(m.p99_ns),
                m.granularity,
                m.gbps,
                m.under_load.as_ref().map(|a| format!(", under {a} arrivals: not alone")).unwrap_or_default()
            )?,
            (None, _) => writeln!(out, "  {:>8} tokens: not in the run", p.tokens)?,
        }
    }
    Ok(())
}

/// What a run under load measured on the decode side, next to the
/// arithmetic above: its peak of resident bytes per arrival rate, and how
/// many requests of the mix's mean size that peak is.
fn measured_load(out: &mut dyn Write, r: &RunReport, s: &Sizing) -> Result<()> {
    let points: Vec<_> = r.points.iter().filter_map(|p| p.load.as_ref().map(|l| (p, l))).collect();
    if points.is_empty() {
        return Ok(());
    }
    let mean = s.kv_buffer_size_mean as f64 / s.concurrent as f64;
    writeln!(out)?;
    writeln!(
        out,
        "Measured under load in the run (KV held from each request's go to its release; arithmetic above: \
         kv_buffer_size {} for {} requests of the longest prompt, {} for the mix's mean)",
        fmt_bytes(s.kv_buffer_size),
        s.concurrent,
        fmt_bytes(s.kv_buffer_size_mean)
    )?;
    for (p, l) in points {
        // Buffer and pool together: what would never have spilled.
        let peak = l.decode_buffer.as_ref().map_or(l.resident.peak_bytes, |b| b.demand_peak_bytes);
        let spill = match &l.decode_buffer {
            Some(b) if b.spilled_tensors > 0 => format!(
                "; past its {} buffer {} tensors ({}) spilled",
                fmt_bytes(b.capacity_bytes),
                b.spilled_tensors,
                fmt_bytes(b.spilled_bytes)
            ),
            Some(b) => format!("; nothing spilled past its {} buffer", fmt_bytes(b.capacity_bytes)),
            None => String::new(),
        };
        writeln!(
            out,
            "  {:<18} {} granularity: achieved {:.1}/s, peak {} held (about {:.1} requests of the mix's mean), p99 in \
             the buffer {}{}{}",
            l.arrivals.to_string(),
            p.granularity,
            l.achieved_qps,
            fmt_bytes(peak),
            peak as f64 / mean.max(1.0),
            fmt_bytes(l.resident.p99_bytes),
            if l.saturated { ", SATURATED" } else { "" },
            spill
        )?;
    }
    Ok(())
}

/// For a hybrid model: why the connectors sized here count every layer in
/// full, or, with state layers, cannot run it.
fn hybrid_note(out: &mut dyn Write, shape: &crate::kv::KvShape, s: &Sizing) -> Result<()> {
    if shape.model.is_hybrid() && s.needs_hma {
        writeln!(
            out,
            "hybrid KV    its state layers need vLLM's hybrid KV cache manager, which P2pNcclConnector and LMCache \
             do not support: vLLM refuses to start them with this model. The figures below are what the manager \
             keeps, for a connector that supports it (NixlConnector, Mooncake)"
        )?;
    } else if shape.model.is_hybrid() && shape.hma {
        writeln!(
            out,
            "hybrid KV    P2pNcclConnector and LMCache do not support vLLM's hybrid KV cache manager, so vLLM turns it \
             off for them: every attention layer counts in full below"
        )?;
    }
    Ok(())
}
