//! Multi-turn conversations in a plan: one point per mode and granularity,
//! `iterations` conversations each, one request per turn that moves KV.
//! Each turn's messages land in the conversation's region
//! (`RequestLayout::span`); after each turn the receiver checks everything
//! the decode side holds so far and writes the KV of the tokens it
//! generated itself, as decode would.

use super::{Granularity, RequestLayout};
use crate::kv::KvShape;
use crate::schedule::conversation::{Conversation, MultiTurn, TurnMoves};
use serde::{Deserialize, Serialize};

/// The conversations a plan runs and the modes it compares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConversationPlan {
    pub conversation: Conversation,
    pub modes: Vec<MultiTurn>,
}

/// One point's conversation: a mode at a granularity.
#[derive(Clone, Debug, PartialEq)]
pub struct PointTurns {
    pub mode: MultiTurn,
    pub conversation: Conversation,
    /// What every turn moves (by the arithmetic).
    pub moves: Vec<TurnMoves>,
    /// The turns that move KV to decode (indices into `moves`), one request each.
    pub moving: Vec<usize>,
    /// Per turn that moves: its messages, what the receiver then checks
    /// (all it holds so far), and what decode writes itself after it.
    pub layouts: Vec<RequestLayout>,
    pub checks: Vec<RequestLayout>,
    pub generated: Vec<Option<RequestLayout>>,
}

impl PointTurns {
    pub fn new(shape: &KvShape, c: Conversation, mode: MultiTurn, g: Granularity) -> PointTurns {
        let block = shape.block_size;
        let region = c.region_tokens(block) as u32;
        let moves = c.moves(mode, g, block);
        let moving: Vec<usize> = (0..moves.len()).filter(|&t| moves[t].forward.is_some()).collect();
        let span = |from: u64, to: u64| RequestLayout::span(shape, g, from as u32, to as u32, region);
        let layouts =
            moving.iter().map(|&t| moves[t].forward.map(|s| span(s.from, s.to)).expect("moving")).collect();
        let checks = moving.iter().map(|&t| span(0, moves[t].forward.expect("moving").to)).collect();
        let generated =
            moving.iter().map(|&t| c.generated(t as u32 + 1, g, block).map(|s| span(s.from, s.to))).collect();
        PointTurns { mode, conversation: c, moves, moving, layouts, checks, generated }
    }

    /// The region's layout: all of it, for the buffer's size.
    pub fn region(shape: &KvShape, c: &Conversation, g: Granularity) -> RequestLayout {
        let region = c.region_tokens(shape.block_size) as u32;
        RequestLayout::span(shape, g, 0, region, region)
    }

    /// Request `k` of the timed ones (warm-ups are turn 1): its conversation and its turn among `moving`.
    pub fn at(&self, k: u32) -> (u32, usize) {
        let per = self.moving.len() as u32;
        (k / per, (k % per) as usize)
    }
}
