//! `kvxfer plan --turns N --turn-tokens IN[:OUT]`: what each turn of a
//! conversation moves in each multi-turn mode, by the arithmetic of
//! `schedule::conversation`, with the saving against `full`.

use super::args::ConversationArgs;
use crate::error::{Error, Result};
use crate::kv::KvShape;
use crate::plan::Granularity;
use crate::schedule::conversation::{Conversation, MultiTurn, TurnMoves, DEFAULT_MAX_CONTEXT};
use crate::schedule::Arrival;
use crate::units::fmt_bytes;
use std::io::Write;

/// The conversation asked for, checked against the model's context.
pub fn conversation(a: &ConversationArgs, shape: &KvShape) -> Result<Option<Conversation>> {
    let (Some(turns), Some(tokens)) = (a.turns, &a.turn_tokens) else { return Ok(None) };
    let c = Conversation::parse(turns, tokens)?;
    c.check_context(max_context(a, shape))?;
    Ok(Some(c))
}

/// Refuses a conversation trace whose context outgrows the model's.
pub fn check_traced_context(a: &ConversationArgs, shape: &KvShape, trace: &[Arrival]) -> Result<()> {
    let most = max_context(a, shape);
    match trace.iter().find(|t| t.tokens as u64 + t.output_tokens.unwrap_or(0) as u64 > most as u64) {
        Some(t) => Err(Error::usage(format!(
            "the trace's turn {} of conversation {} reaches {} tokens of context, past the model's {most} \
             (--max-context)",
            t.turn.map_or(0, |t| t.1),
            t.turn.map_or(0, |t| t.0),
            t.tokens as u64 + t.output_tokens.unwrap_or(0) as u64
        ))),
        None => Ok(()),
    }
}

fn max_context(a: &ConversationArgs, shape: &KvShape) -> u32 {
    a.max_context.or(shape.model.max_context).unwrap_or(DEFAULT_MAX_CONTEXT)
}

/// The per-turn table: bytes each mode moves (both directions), then totals.
pub fn print(
    c: &Conversation,
    a: &ConversationArgs,
    shape: &KvShape,
    granularities: &[Granularity],
    out: &mut dyn Write,
) -> Result<()> {
    // Whole blocks for `full` only when blocks alone are asked for.
    let g = match granularities {
        [Granularity::Block] => Granularity::Block,
        _ => Granularity::Layer,
    };
    let modes = &a.multi_turn;
    let moves: Vec<Vec<TurnMoves>> = modes.iter().map(|&m| c.moves(m, g, shape.block_size)).collect();
    let last = c.turn(c.turns);
    writeln!(
        out,
        "conversation {} turns of {} input and {} output tokens: {} tokens of context after the last (the model \
         takes {})",
        c.turns,
        c.input,
        c.output,
        last.context_tokens,
        max_context(a, shape)
    )?;
    writeln!(
        out,
        "moves        bytes a turn, decode back to prefill + prefill to decode; delta and bidirectional's sends in \
         whole blocks of {} tokens, full and what comes back {}",
        shape.block_size,
        if g == Granularity::Block { "in whole blocks (-g block)" } else { "token-exact (layer messages)" }
    )?;
    writeln!(out)?;
    write!(out, "{:>5} {:>8}", "turn", "prompt")?;
    for m in modes {
        write!(out, " {:>16}", m.to_string())?;
    }
    writeln!(out)?;
    for t in 0..c.turns as usize {
        write!(out, "{:>5} {:>8}", t + 1, moves[0][t].turn.prompt_tokens)?;
        for per_mode in &moves {
            let m = &per_mode[t];
            let cell = match m.back {
                Some(b) => {
                    let back = b.bytes_ending(shape, m.turn.before_tokens);
                    format!("{} + {}", fmt_bytes(back), fmt_bytes(m.bytes(shape) - back))
                }
                None => fmt_bytes(m.bytes(shape)),
            };
            write!(out, " {cell:>16}")?;
        }
        writeln!(out)?;
    }
    let full: u64 = c.moves(MultiTurn::Full, g, shape.block_size).iter().map(|m| m.bytes(shape)).sum();
    write!(out, "{:>5} {:>8}", "total", "")?;
    for per_mode in &moves {
        let total: u64 = per_mode.iter().map(|m| m.bytes(shape)).sum();
        write!(
            out,
            " {:>16}",
            format!("{} {:.0}%", fmt_bytes(total), 100.0 * total as f64 / full.max(1) as f64)
        )?;
    }
    writeln!(out, "\n(total: all turns, and their share of full's)")?;
    if let Some(d) = modes.iter().position(|&m| m == MultiTurn::DDirect) {
        let flops: f64 =
            moves[d].iter().filter_map(|m| m.decode_prefill_flops(MultiTurn::DDirect, shape)).sum();
        match &shape.model.compute {
            Some(_) => writeln!(
                out,
                "d-direct: decode prefills turns 2-{} itself, {:.2} TFLOP in all (their new tokens over the cached \
                 context)",
                c.turns,
                flops / 1e12
            )?,
            None => writeln!(out, "d-direct: decode prefills turns 2-{} itself (the model's FLOPs are not known)", c.turns)?,
        }
    }
    Ok(())
}
