//! Multi-turn conversations: what moves each turn (pure). A conversation
//! adds `input` tokens each turn (the user's) and `output` tokens (the
//! model's), both joining the context; each turn's prompt is the context so
//! far plus the new input. How much of it crosses the link depends on the
//! connector:
//!
//! - `full`: the whole prompt's KV every turn (vLLM's PD proxy sends every
//!   turn to prefill; P2pNcclConnector sends what prefill computed).
//! - `delta`: only the blocks the decode side lacks. Its prefix cache holds
//!   the full blocks of the context it has seen (prompt and generated
//!   tokens); the last, partly filled one is not cached and travels again,
//!   whole, as NixlConnector pulls whole blocks.
//! - `bidirectional`: before each later turn the prefill side first pulls
//!   the conversation's KV back from decode (generated tokens included; in
//!   whole blocks at block granularity, token-exact in layer and request
//!   messages), then sends the new turn's delta.
//! - `d-direct` (PPD): turn 1 as `full`; later turns are prefilled by the
//!   decode side itself, so nothing moves, and decode computes the new
//!   tokens instead.
//!
//! Spans are token ranges of the conversation's KV. Whole-block spans start
//! and end on block boundaries; `full` at layer or request granularity is
//! token-exact, as kvxfer's layer messages are.

use crate::error::{Error, Result};
use crate::kv::KvShape;
use crate::plan::Granularity;
use serde::{Deserialize, Serialize};

/// What a conversation's turns move, by connector behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MultiTurn {
    Full,
    Delta,
    Bidirectional,
    DDirect,
}

crate::words::named_by_words!(MultiTurn, "--multi-turn", {
    Full => "full",
    Delta => "delta",
    Bidirectional => "bidirectional",
    DDirect => "d-direct",
});

/// A conversation of `turns` turns, each adding `input` then `output` tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    pub turns: u32,
    pub input: u32,
    pub output: u32,
}

/// The longest context a model takes unless told (Llama-3.1's).
pub const DEFAULT_MAX_CONTEXT: u32 = 131_072;

impl Conversation {
    /// `--turn-tokens IN[:OUT]`.
    pub fn parse(turns: u32, turn_tokens: &str) -> Result<Conversation> {
        let bad = || {
            Error::usage(format!(
                "--turn-tokens wants IN[:OUT], the tokens the user adds and the model generates each turn \
                 (100 or 100:50), got '{turn_tokens}'"
            ))
        };
        let (input, output) = match turn_tokens.split_once(':') {
            Some((i, o)) => (i.trim(), o.trim()),
            None => (turn_tokens.trim(), "0"),
        };
        if input == "0" {
            return Err(Error::usage("--turn-tokens: each turn adds at least one input token"));
        }
        let input = crate::units::parse_token_count(input).map_err(|_| bad())?;
        let output = match output {
            "0" => 0,
            o => crate::units::parse_token_count(o).map_err(|_| bad())?,
        };
        if turns == 0 {
            return Err(Error::usage("--turns must be at least 1"));
        }
        Ok(Conversation { turns, input, output })
    }

    /// Refuses a conversation whose last prompt outgrows the model's context.
    pub fn check_context(&self, max_context: u32) -> Result<()> {
        let last = self.turn(self.turns);
        if last.context_tokens > max_context as u64 {
            return Err(Error::usage(format!(
                "{} turns of {}:{} tokens reach {} tokens of context, past the model's {max_context} \
                 (--max-context)",
                self.turns, self.input, self.output, last.context_tokens
            )));
        }
        Ok(())
    }

    /// Turn `t` (from 1): its prompt and the context after it.
    pub fn turn(&self, t: u32) -> Turn {
        let per_turn = (self.input + self.output) as u64;
        let before = (t as u64 - 1) * per_turn;
        Turn {
            turn: t,
            before_tokens: before,
            prompt_tokens: before + self.input as u64,
            context_tokens: before + per_turn,
        }
    }

    /// Every turn's tokens, in order.
    pub fn turns(&self) -> Vec<Turn> {
        (1..=self.turns).map(|t| self.turn(t)).collect()
    }

    /// What every turn moves in `mode` at `granularity`, with `block` tokens a block.
    pub fn moves(&self, mode: MultiTurn, granularity: Granularity, block: u32) -> Vec<TurnMoves> {
        moves(&self.turns(), mode, granularity, block)
    }

    /// The KV decode writes itself after turn `t` (see `generated`).
    pub fn generated(&self, t: u32, granularity: Granularity, block: u32) -> Option<Span> {
        generated(&self.turn(t), granularity, block)
    }

    /// The tokens a conversation's region holds: its whole context, in blocks.
    pub fn region_tokens(&self, block: u32) -> u64 {
        region_tokens(&self.turns(), block)
    }
}

/// What every turn of a conversation (its `turns` in order, alike or
/// not, as a trace gives them) moves in `mode` at `granularity`.
pub fn moves(turns: &[Turn], mode: MultiTurn, granularity: Granularity, block: u32) -> Vec<TurnMoves> {
    let block = block as u64;
    let whole = |tokens: u64| tokens.div_ceil(block) * block;
    turns
        .iter()
        .map(|&turn| {
            let full = Span {
                from: 0,
                to: match granularity {
                    Granularity::Block => whole(turn.prompt_tokens),
                    _ => turn.prompt_tokens,
                },
            };
            // Decode caches the full blocks of what it has seen: every earlier turn's context.
            let delta = Span { from: turn.before_tokens / block * block, to: whole(turn.prompt_tokens) };
            let (forward, back) = match (mode, turn.turn) {
                (MultiTurn::Full, _) | (MultiTurn::DDirect, 1) => (Some(full), None),
                (MultiTurn::Delta, _) | (MultiTurn::Bidirectional, 1) => (Some(delta), None),
                (MultiTurn::Bidirectional, _) => {
                    // What decode holds: whole blocks, or token-exact messages.
                    let held = match granularity {
                        Granularity::Block => whole(turn.before_tokens),
                        _ => turn.before_tokens,
                    };
                    (Some(delta), Some(Span { from: 0, to: held }))
                }
                (MultiTurn::DDirect, _) => (None, None),
            };
            TurnMoves { turn, forward, back }
        })
        .collect()
}

/// The KV the decode side writes itself after `turn`: its generated
/// tokens' (in whole blocks at block granularity, whose earlier tokens it
/// rewrites unchanged); None without output.
pub fn generated(turn: &Turn, granularity: Granularity, block: u32) -> Option<Span> {
    let (block, from, to) = (block as u64, turn.prompt_tokens, turn.context_tokens);
    (to > from).then(|| match granularity {
        Granularity::Block => Span { from: from / block * block, to: to.div_ceil(block) * block },
        _ => Span { from, to },
    })
}

/// The tokens a conversation's region holds: its whole context, in blocks.
pub fn region_tokens(turns: &[Turn], block: u32) -> u64 {
    turns.last().map_or(0, |t| t.context_tokens).div_ceil(block as u64) * block as u64
}

/// One turn's tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    pub turn: u32,
    /// The context before the turn: earlier turns' input and output.
    pub before_tokens: u64,
    /// The turn's prompt: the context before it and its input.
    pub prompt_tokens: u64,
    /// The context after the turn's output.
    pub context_tokens: u64,
}

/// Tokens `from..to` of a conversation's KV.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub from: u64,
    pub to: u64,
}

impl Span {
    pub fn tokens(&self) -> u64 {
        self.to - self.from
    }

    pub fn bytes(&self, shape: &KvShape) -> u64 {
        self.tokens() * shape.bytes_per_token()
    }

    /// The bytes of a span of KV that ends at `end`: a hybrid model's
    /// windowed and chunked layers move only what they hold then.
    pub fn bytes_ending(&self, shape: &KvShape, end: u64) -> u64 {
        shape.span_bytes(self.from as u32, self.to as u32, end as u32)
    }
}

/// What one turn moves: prefill to decode, and decode back to prefill.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnMoves {
    pub turn: Turn,
    pub forward: Option<Span>,
    pub back: Option<Span>,
}

impl TurnMoves {
    /// Bytes over the link in both directions.
    pub fn bytes(&self, shape: &KvShape) -> u64 {
        let forward = self.forward.map_or(0, |s| s.bytes_ending(shape, self.turn.prompt_tokens));
        forward + self.back.map_or(0, |s| s.bytes_ending(shape, self.turn.before_tokens))
    }

    /// With `d-direct`, the FLOPs the decode side spends prefilling the
    /// turn's new tokens over its cached context: causal attention makes
    /// them the prefill of the whole prompt less that of the context before.
    pub fn decode_prefill_flops(&self, mode: MultiTurn, shape: &KvShape) -> Option<f64> {
        let c = shape.model.compute.as_ref()?;
        let total = |tokens: u64| -> f64 {
            (0..shape.model.layers)
                .map(|l| c.layer_flops_of(l, shape.model.layer_kind(l), tokens as u32))
                .sum()
        };
        (mode == MultiTurn::DDirect && self.turn.turn > 1)
            .then(|| total(self.turn.prompt_tokens) - total(self.turn.before_tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::presets;

    fn llama() -> KvShape {
        KvShape::new(presets::lookup("llama-3.1-8b").unwrap(), 1, 16).unwrap()
    }

    fn tokens(moves: &[TurnMoves], pick: fn(&TurnMoves) -> Option<Span>) -> Vec<u64> {
        moves.iter().map(|m| pick(m).map_or(0, |s| s.tokens())).collect()
    }

    /// The seed's example (context/seeds/004): 10 turns of 100 tokens on
    /// Llama-3.1-8B (128 KiB a token, 16-token blocks).
    #[test]
    fn ten_turns_of_a_hundred_tokens() {
        let (c, shape) = (Conversation::parse(10, "100").unwrap(), llama());
        // Full: 100 + 200 + ... + 1000 = 5,500 tokens, 688 MiB.
        let full = c.moves(MultiTurn::Full, Granularity::Layer, 16);
        assert_eq!(tokens(&full, |m| m.forward), (1..=10).map(|t| 100 * t).collect::<Vec<u64>>());
        let bytes: u64 = full.iter().map(|m| m.bytes(&shape)).sum();
        assert_eq!(bytes, 5_500 * 131_072);
        // In whole blocks: ceil(100t / 16) blocks a turn, 348 blocks (5,568 tokens).
        let blocks = c.moves(MultiTurn::Full, Granularity::Block, 16);
        assert_eq!(tokens(&blocks, |m| m.forward).iter().sum::<u64>(), 348 * 16);
        // Delta: 7 blocks every turn, 70 in all (1,120 tokens): the 1,000
        // new tokens fill 63 (62.5), and the partly filled last block of
        // each earlier context not a multiple of 16 (100t for t = 1..9, all
        // but 400 and 800) travels again: 7 blocks, 112 tokens' worth.
        let delta = c.moves(MultiTurn::Delta, Granularity::Layer, 16);
        let sent = tokens(&delta, |m| m.forward);
        assert_eq!(sent, vec![112; 10]);
        assert_eq!(sent.iter().sum::<u64>(), 70 * 16);
        let new_blocks = 1000u64.div_ceil(16);
        let partial = (1..10u64).filter(|t| (100 * t) % 16 != 0).count() as u64;
        assert_eq!((new_blocks, partial, new_blocks + partial), (63, 7, 70));
        // Turn 2: decode caches blocks 0-5 (96 tokens); blocks 6-12 move.
        assert_eq!(delta[1].forward, Some(Span { from: 96, to: 208 }));
        // The same at every granularity: vLLM moves whole blocks.
        assert_eq!(c.moves(MultiTurn::Delta, Granularity::Request, 16), delta);
        assert!(delta.iter().all(|m| m.back.is_none()));
    }

    /// Generated tokens join the context: decode holds them, prefill not.
    #[test]
    fn output_tokens_join_the_context_and_come_back_in_bidirectional() {
        let c = Conversation::parse(3, "100:20").unwrap();
        assert_eq!(c.turn(2), Turn { turn: 2, before_tokens: 120, prompt_tokens: 220, context_tokens: 240 });
        let b = c.moves(MultiTurn::Bidirectional, Granularity::Block, 16);
        // Turn 1 sends its prompt; turn 2 first pulls back the 120 tokens
        // (8 blocks), then sends blocks 7-13 (the 8th was partly filled).
        assert_eq!((b[0].forward, b[0].back), (Some(Span { from: 0, to: 112 }), None));
        assert_eq!(b[1].back, Some(Span { from: 0, to: 128 }));
        assert_eq!(b[1].forward, Some(Span { from: 112, to: 224 }));
        assert_eq!(b[2].back, Some(Span { from: 0, to: 240 }));
        assert_eq!(b[2].forward, Some(Span { from: 240, to: 352 }));
        // Decode writes the KV of the 20 tokens it generates: 100..120 of
        // turn 1, 220..240 of turn 2 (blocks 13-14 at block granularity).
        assert_eq!(c.generated(1, Granularity::Layer, 16), Some(Span { from: 100, to: 120 }));
        assert_eq!(c.generated(2, Granularity::Block, 16), Some(Span { from: 208, to: 240 }));
        assert_eq!(Conversation::parse(2, "100").unwrap().generated(1, Granularity::Layer, 16), None);
        assert_eq!(c.region_tokens(16), 368);
    }

    /// PPD: after turn 1 nothing moves, and decode prefills the new tokens.
    #[test]
    fn d_direct_moves_turn_one_only_and_decode_computes_the_rest() {
        let (c, shape) = (Conversation::parse(3, "100").unwrap(), llama());
        let d = c.moves(MultiTurn::DDirect, Granularity::Layer, 16);
        assert_eq!(tokens(&d, |m| m.forward), vec![100, 0, 0]);
        assert_eq!(d[0].decode_prefill_flops(MultiTurn::DDirect, &shape), None);
        // Turn 2's 100 tokens attend to 200: more than a first 100, less than 200 from scratch.
        let cost = |m: &TurnMoves| m.decode_prefill_flops(MultiTurn::DDirect, &shape).unwrap();
        let c = shape.model.compute.as_ref().unwrap();
        let scratch = |n: u32| -> f64 {
            (0..shape.model.layers).map(|l| c.layer_flops_of(l, shape.model.layer_kind(l), n)).sum()
        };
        assert!(cost(&d[1]) > scratch(100) && cost(&d[1]) < scratch(200));
        assert!(cost(&d[2]) > cost(&d[1]));
    }

    #[test]
    fn bad_conversations_are_refused() {
        assert!(Conversation::parse(0, "100").unwrap_err().message.contains("--turns must be at least 1"));
        assert!(Conversation::parse(3, "0").unwrap_err().message.contains("at least one input token"));
        assert!(Conversation::parse(3, "a:b").unwrap_err().message.contains("IN[:OUT]"));
        let long = Conversation::parse(200, "1k:24").unwrap();
        let e = long.check_context(DEFAULT_MAX_CONTEXT).unwrap_err();
        assert!(
            e.message.contains("reach 209600 tokens of context, past the model's 131072"),
            "{}",
            e.message
        );
        assert!(Conversation::parse(100, "1k:24").unwrap().check_context(DEFAULT_MAX_CONTEXT).is_ok());
        assert_eq!(MultiTurn::parse("d-direct").unwrap(), MultiTurn::DDirect);
    }
}
