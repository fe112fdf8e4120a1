//! Multi-turn conversations, on the receiver: each turn's transfer time
//! and bytes over the point's conversations, and what the mode moved
//! against `full` (plan::turns, schedule::conversation).

use super::stats::{self, LatencySummary};
use crate::kv::KvShape;
use crate::plan::turns::PointTurns;
use crate::schedule::conversation::{MultiTurn, TurnMoves};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A conversation point's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConversationFigures {
    pub mode: MultiTurn,
    pub conversations: u32,
    pub turns: Vec<TurnFigures>,
    /// Bytes one conversation moves to decode, and what `full` would.
    pub bytes: u64,
    pub full_bytes: u64,
    /// d-direct: FLOPs decode spends prefilling the later turns itself, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_prefill_flops: Option<f64>,
}

/// One turn, over the point's conversations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TurnFigures {
    pub turn: u32,
    pub prompt_tokens: u64,
    /// Tokens' KV moved (whole blocks where the mode moves blocks) and bytes; 0 where nothing moves.
    pub moved_tokens: u64,
    pub bytes: u64,
    pub cumulative_bytes: u64,
    pub messages: usize,
    /// Each conversation's transfer of the turn, go to last byte; empty where nothing moves.
    pub transfer_ns: LatencySummary,
}

/// The receiver's account of a conversation point's timed turns.
pub struct TurnsTally {
    per_turn: Vec<Histogram<u64>>,
}

impl TurnsTally {
    pub fn new(turns: &PointTurns) -> Self {
        TurnsTally { per_turn: turns.moving.iter().map(|_| stats::new_histogram()).collect() }
    }

    /// The `k`th moving turn of a conversation took `ns`.
    pub fn turn(&mut self, k: usize, ns: u64) {
        self.per_turn[k].saturating_record(ns.max(1));
    }

    pub fn figures(&self, turns: &PointTurns, shape: &KvShape, conversations: u32) -> ConversationFigures {
        let c = &turns.conversation;
        let full: Vec<TurnMoves> = c.moves(
            MultiTurn::Full,
            turns.layouts.first().map_or(crate::plan::Granularity::Layer, |l| l.granularity),
            shape.block_size,
        );
        let mut cumulative = 0;
        let figures = turns
            .moves
            .iter()
            .enumerate()
            .map(|(t, m)| {
                let bytes = m.forward.map_or(0, |s| s.bytes(shape));
                cumulative += bytes;
                let k = turns.moving.iter().position(|&i| i == t);
                TurnFigures {
                    turn: m.turn.turn,
                    prompt_tokens: m.turn.prompt_tokens,
                    moved_tokens: m.forward.map_or(0, |s| s.tokens()),
                    bytes,
                    cumulative_bytes: cumulative,
                    messages: k.map_or(0, |k| turns.layouts[k].message_count),
                    transfer_ns: k.map(|k| LatencySummary::of(&self.per_turn[k])).unwrap_or_default(),
                }
            })
            .collect();
        let flops: Vec<f64> =
            turns.moves.iter().filter_map(|m| m.decode_prefill_flops(turns.mode, shape)).collect();
        ConversationFigures {
            mode: turns.mode,
            conversations,
            turns: figures,
            bytes: cumulative,
            full_bytes: full.iter().map(|m| m.forward.map_or(0, |s| s.bytes(shape))).sum(),
            decode_prefill_flops: (!flops.is_empty()).then(|| flops.iter().sum()),
        }
    }
}
