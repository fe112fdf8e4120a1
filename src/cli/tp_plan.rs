//! `kvxfer plan --prefill-tp P --decode-tp D`: for each decode rank, the
//! prefill ranks it reads, how each block is cut, and how many descriptors
//! a request takes, as NixlConnector would post them.

use crate::cli::args::PlanArgs;
use crate::error::{Error, Result};
use crate::kv::KvShape;
use crate::plan::{Granularity, TpPlan, TpTopology};
use crate::units::fmt_bytes;
use std::io::Write;

pub fn print(a: &PlanArgs, shape: &KvShape, topology: TpTopology, out: &mut dyn Write) -> Result<()> {
    let model = &shape.model;
    let base = a.shown(shape, vec![Granularity::Block], Some(TpPlan::new(topology)));
    base.validate()?;
    writeln!(out, "model        {}", model.describe())?;
    writeln!(out, "TP           {topology}")?;
    writeln!(out, "block size   {} tokens", shape.block_size)?;
    writeln!(
        out,
        "blocks       table {}, pools of {} blocks per (layer, K/V) on each side, descriptors {}",
        base.block_table,
        base.pool(),
        if base.coalesce { "merged where adjacent on both sides (as NIXL)" } else { "one per block piece" }
    )?;
    let others: Vec<String> =
        a.granularity.iter().filter(|g| **g != Granularity::Block).map(|g| g.to_string()).collect();
    if !others.is_empty() {
        writeln!(
            out,
            "granularity  {}: NixlConnector moves a P x D run block by block (a decode rank's share is a slice of \
             every block unless it is the whole block), so only block rows follow",
            others.join(", ")
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:>6} {:>7} {:>8} {:>9} {:>12} {:>12} {:>12}  cut of each (layer, K/V) block",
        "decode", "prefill", "prompt", "messages", "msg size", "request", "descriptors"
    )?;
    let mut rows = Vec::new();
    for d in 0..topology.decode_tp {
        for p in topology.sources(model, d) {
            let mut pair = base.clone();
            pair.tp = Some(TpPlan { pair: Some((p, d)), ..TpPlan::new(topology) });
            pair.validate()?;
            let cut = pair
                .cut()
                .ok_or_else(|| Error::usage(format!("no cut for prefill rank {p}, decode rank {d}")))?;
            for point in pair.points() {
                let l = &point.layout;
                let descriptors = l.descriptors().len();
                writeln!(
                    out,
                    "{d:>6} {p:>7} {:>8} {:>9} {:>12} {:>12} {descriptors:>12}  {}",
                    l.tokens,
                    l.message_count,
                    fmt_bytes(l.message_bytes as u64),
                    fmt_bytes(l.total_bytes() as u64),
                    cut.describe()
                )?;
                rows.push(serde_json::json!({
                    "decode_rank": d,
                    "prefill_rank": p,
                    "prompt_tokens": l.tokens,
                    "messages": l.message_count,
                    "message_bytes": l.message_bytes,
                    "request_bytes": l.total_bytes(),
                    "descriptors": descriptors,
                    "cut": cut,
                }));
            }
        }
    }
    let idle: Vec<String> = (0..topology.prefill_tp)
        .filter(|&p| topology.readers(model, p).is_empty())
        .map(|p| p.to_string())
        .collect();
    if !idle.is_empty() {
        writeln!(
            out,
            "prefill rank{} {} read by no decode rank: the MLA latent is replicated and read once (NixlConnector only \
             notifies the others)",
            if idle.len() > 1 { "s" } else { "" },
            idle.join(", ")
        )?;
    }
    writeln!(
        out,
        "descriptors: operations per request, one per contiguous piece of each block, after merging"
    )?;
    if let Some(path) = &a.json {
        let doc = serde_json::json!({
            "shape": shape,
            "topology": topology,
            "tp_ratio": topology.ratio(),
            "block_table": base.block_table,
            "pool_blocks": base.pool(),
            "coalesce": base.coalesce,
            "pairs": rows,
        });
        let text = serde_json::to_string_pretty(&doc).expect("plan serializes");
        crate::cli::outputs::write_text(path, text + "\n")?;
    }
    Ok(())
}
