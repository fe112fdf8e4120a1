//! `kvxfer plan`: what a run would move, message by message, without hardware; the models kvxfer knows.

use super::*;

pub(super) fn plan(a: &PlanArgs) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if a.list_models {
        return list_models(&mut out);
    }
    let shape = a.model.resolve()?;
    crate::plan::not_yet_for_hybrid(&shape, a.conversation.turns.is_some(), a.model.topology().is_some())?;
    if let Some(t) = a.model.topology() {
        crate::plan::hybrid_topology(&shape, &t)?;
    }
    if let Some(t) = a.model.topology() {
        if a.conversation.turns.is_some() {
            return Err(Error::usage(
                "--turns with --prefill-tp/--decode-tp: not yet; show one or the other",
            ));
        }
        return tp_plan::print(a, &shape, t, &mut out);
    }
    if let Some(c) = turns::conversation(&a.conversation, &shape)? {
        return turns::print(&c, &a.conversation, &shape, &a.granularity, &mut out);
    }
    let heads = match shape.heads_per_rank() {
        Some(h) => format!("{h} KV heads per rank"),
        None => "MLA latent, not split by TP".into(),
    };
    let plan = a.shown(&shape, a.granularity.clone(), None);
    plan.validate()?;
    writeln!(out, "model        {}", shape.model.describe())?;
    writeln!(out, "TP           {} ({heads})", shape.tp)?;
    writeln!(out, "block size   {} tokens", shape.block_size)?;
    writeln!(
        out,
        "KV per token {} bytes ({}) per rank = {} attention layers x {} bytes",
        shape.bytes_per_token(),
        fmt_bytes(shape.bytes_per_token()),
        (0..shape.model.layers).filter(|&l| shape.model.layer_kind(l).is_attention()).count(),
        shape.layer_bytes_per_token()
    )?;
    groups::print(&shape, &plan.prompt_lengths, &mut out)?;
    if a.granularity.contains(&crate::plan::Granularity::Block) {
        writeln!(
            out,
            "blocks       table {}, pools of {} blocks per (layer, K/V) on each side, descriptors {}",
            plan.block_table,
            plan.pool(),
            if plan.coalesce { "merged where adjacent on both sides (as NIXL)" } else { "one per block" }
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:>8} {:>8} {:>9} {:>12} {:>12} {:>14} {:>9}",
        "prompt", "gran", "messages", "msg size", "request", "request bytes", "ops"
    )?;
    let mut rows = Vec::new();
    for point in plan.points() {
        let l = point.layout;
        let ops = l.descriptors();
        writeln!(
            out,
            "{:>8} {:>8} {:>9} {:>12} {:>12} {:>14} {:>9}",
            l.tokens,
            l.granularity.to_string(),
            l.message_count,
            fmt_bytes(l.message_bytes as u64),
            fmt_bytes(l.total_bytes() as u64),
            l.total_bytes(),
            ops.len()
        )?;
        let mut row = serde_json::to_value(&l).expect("a layout serializes");
        row["operations"] = ops.len().into();
        if l.granularity == crate::plan::Granularity::Block {
            // Where each message sits on each side: what another tool needs to move the same blocks.
            let offsets = |side| l.slots(side).map(|s| s.offset).collect::<Vec<_>>();
            row["sender_offsets"] = offsets(crate::plan::Side::Sender).into();
            row["receiver_offsets"] = offsets(crate::plan::Side::Receiver).into();
            row["buffer_bytes"] = l.buffer_bytes().into();
        }
        rows.push((l, row));
    }
    if rows
        .iter()
        .any(|(l, _)| l.granularity == crate::plan::Granularity::Block && l.tokens % shape.block_size != 0)
    {
        writeln!(
            out,
            "\nblock rows move whole blocks: a partly filled last block travels in full, as in vLLM"
        )?;
    }
    writeln!(out, "ops: operations per request (descriptors after merging, for blocks)")?;
    if let Some(path) = &a.json {
        let doc = serde_json::json!({
            "shape": shape,
            "kv_bytes_per_token": shape.bytes_per_token(),
            "layer_groups": groups::json(&shape, &plan.prompt_lengths),
            "block_table": plan.block_table,
            "pool_blocks": plan.pool(),
            "coalesce": plan.coalesce,
            "points": rows.into_iter().map(|(_, row)| row).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&doc).expect("plan serializes");
        crate::cli::outputs::write_text(path, text + "\n")?;
    }
    Ok(())
}

/// `kvxfer plan --list-models`: each preset, its bytes per token, its aliases.
pub(super) fn list_models(out: &mut dyn Write) -> Result<()> {
    for name in presets::names() {
        let model = presets::lookup(name)?;
        let block = crate::kv::vllm_block_size(&model, 1, None)?;
        let shape = crate::kv::KvShape::new(model, 1, block)?;
        let also = match presets::aliases(name) {
            [] => String::new(),
            names => format!(" (also {})", names.join(", ")),
        };
        // A hybrid model's bytes per token depend on the prompt: say them at 32k.
        let hma = match shape.model.is_hybrid() {
            true => {
                format!("; with HMA {} B/token at 32k tokens", shape.request_block_bytes(32768) / 32768)
            }
            false => String::new(),
        };
        writeln!(
            out,
            "{:<18} {:>9} B/token  {}{also}{hma}",
            name,
            shape.bytes_per_token(),
            shape.model.describe()
        )?;
    }
    Ok(())
}
