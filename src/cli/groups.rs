//! `kvxfer plan` for a hybrid model: each layer group, what a request moves
//! in it at each prompt length, and the ratio to counting every layer in full.

use crate::error::Result;
use crate::kv::{KvShape, LayerKind};
use crate::units::fmt_bytes;
use std::io::Write;

/// The groups' lines, or nothing for a model whose layers are all full attention.
pub fn print(shape: &KvShape, prompts: &[u32], out: &mut dyn Write) -> Result<()> {
    if !shape.model.is_hybrid() && shape.model.indexer_dim.is_none() {
        return Ok(());
    }
    let hma = match (shape.model.is_hybrid(), shape.hma) {
        (false, _) => "every layer in full",
        (true, true) => "vLLM's hybrid KV cache manager on (--hma off: every attention layer in full)",
        (true, false) => "--hma off: every attention layer in full",
    };
    writeln!(out, "layer groups {hma}; a request's bytes as NixlConnector moves them (whole blocks)")?;
    write!(out, "{:<26} {:>6}  {:<40}", "group", "layers", "moves")?;
    for p in prompts {
        write!(out, " {:>11}", format!("{p} tok"))?;
    }
    writeln!(out)?;
    let first = prompts.first().copied().unwrap_or(1);
    for (kind, layers, _) in shape.groups(first) {
        write!(out, "{:<26} {:>6}  {:<40}", kind.to_string(), layers, moves(shape, kind))?;
        for &p in prompts {
            let bytes = shape.groups(p).iter().find(|g| g.0 == kind).map_or(0, |g| g.2);
            write!(out, " {:>11}", fmt_bytes(bytes))?;
        }
        writeln!(out)?;
    }
    write!(out, "{:<26} {:>6}  {:<40}", "a request", shape.model.layers, "")?;
    for &p in prompts {
        write!(out, " {:>11}", fmt_bytes(shape.request_block_bytes(p)))?;
    }
    writeln!(out)?;
    write!(
        out,
        "{:<26} {:>6}  {:<40}",
        "every layer in full", shape.model.layers, "as if all were full attention"
    )?;
    for &p in prompts {
        write!(out, " {:>11}", fmt_bytes(shape.all_full_block_bytes(p)))?;
    }
    writeln!(out)?;
    write!(out, "{:<26} {:>6}  {:<40}", "ratio", "", "a request / every layer in full")?;
    for &p in prompts {
        let ratio = shape.request_block_bytes(p) as f64 / shape.all_full_block_bytes(p).max(1) as f64;
        write!(out, " {:>11}", format!("{ratio:.3}"))?;
    }
    writeln!(out)?;
    if shape.model.has_state() {
        writeln!(
            out,
            "prefill stops one token short of the prompt (decode recomputes the last from the state before it)"
        )?;
    }
    writeln!(out)?;
    Ok(())
}

/// What a layer of `kind` moves per request, in words.
fn moves(shape: &KvShape, kind: LayerKind) -> String {
    let b = shape.block_size;
    match kind {
        LayerKind::Full => "every block".into(),
        LayerKind::SlidingWindow { window } => {
            format!("its window's blocks, at most {}", window.div_ceil(b) + 1)
        }
        LayerKind::ChunkedLocal { .. } => "the current chunk's blocks".into(),
        LayerKind::State => match shape.state_bytes() {
            Some(s) => format!(
                "{} once (conv {} + SSM {})",
                fmt_bytes(s.total()),
                fmt_bytes(s.conv_bytes()),
                fmt_bytes(s.ssm)
            ),
            None => "its state once".into(),
        },
    }
}

/// The groups as JSON for `kvxfer plan --json`.
pub fn json(shape: &KvShape, prompts: &[u32]) -> serde_json::Value {
    let groups: Vec<serde_json::Value> = shape
        .groups(prompts.first().copied().unwrap_or(1))
        .into_iter()
        .map(|(kind, layers, _)| {
            let bytes: Vec<u64> = prompts
                .iter()
                .map(|&p| shape.groups(p).iter().find(|g| g.0 == kind).map_or(0, |g| g.2))
                .collect();
            serde_json::json!({ "kind": kind, "layers": layers, "bytes": bytes })
        })
        .collect();
    serde_json::json!({
        "hma": shape.hma,
        "prompt_tokens": prompts,
        "groups": groups,
        "request_bytes": prompts.iter().map(|&p| shape.request_block_bytes(p)).collect::<Vec<_>>(),
        "every_layer_in_full_bytes": prompts.iter().map(|&p| shape.all_full_block_bytes(p)).collect::<Vec<_>>(),
    })
}
