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
    /// Per turn that moves: what decode first sends back to prefill (bidirectional).
    pub backs: Vec<Option<RequestLayout>>,
}

impl PointTurns {
    pub fn new(shape: &KvShape, c: Conversation, mode: MultiTurn, g: Granularity) -> PointTurns {
        let block = shape.block_size;
        let region = c.region_tokens(block) as u32;
        let moves = c.moves(mode, g, block);
        let moving: Vec<usize> = (0..moves.len()).filter(|&t| moves[t].forward.is_some()).collect();
        // Each span's KV ends at `end`: a partly filled last block follows it.
        let span = |from: u64, to: u64, end: u64| {
            RequestLayout::span(shape, g, from as u32, to as u32, region).filled_to(block, end as u32)
        };
        let forward = |t: usize| moves[t].forward.expect("a moving turn moves KV to decode");
        let prompt = |t: usize| moves[t].turn.prompt_tokens;
        let layouts = moving.iter().map(|&t| span(forward(t).from, forward(t).to, prompt(t))).collect();
        let checks = moving.iter().map(|&t| span(0, forward(t).to, prompt(t))).collect();
        let generated = moving
            .iter()
            .map(|&t| {
                let context = moves[t].turn.context_tokens;
                c.generated(t as u32 + 1, g, block).map(|s| span(s.from, s.to, context))
            })
            .collect();
        let backs = moving
            .iter()
            .map(|&t| moves[t].back.map(|s| span(s.from, s.to, moves[t].turn.before_tokens)))
            .collect();
        PointTurns { mode, conversation: c, moves, moving, layouts, checks, generated, backs }
    }

    /// The region's layout: all of it, for the buffer's size.
    pub fn region(shape: &KvShape, c: &Conversation, g: Granularity) -> RequestLayout {
        let region = c.region_tokens(shape.block_size) as u32;
        RequestLayout::span(shape, g, 0, region, region)
    }

    /// The block that held turn 1's last prompt token, as turn 1 sent it
    /// (partly filled), at block granularity: the `stale-block` fault.
    pub fn turn_one_partial_block(&self, shape: &KvShape) -> Option<RequestLayout> {
        let (block, end) = (shape.block_size, self.conversation.turn(1).prompt_tokens as u32);
        let region = self.conversation.region_tokens(block) as u32;
        let from = end / block * block;
        (self.layouts[0].granularity == Granularity::Block && end % block != 0).then(|| {
            RequestLayout::span(shape, Granularity::Block, from, from + block, region).filled_to(block, end)
        })
    }

    /// Request `k` of the timed ones (warm-ups are turn 1): its conversation and its turn among `moving`.
    pub fn at(&self, k: u32) -> (u32, usize) {
        let per = self.moving.len() as u32;
        (k / per, (k % per) as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::presets;

    /// 2 turns of 100 tokens in delta, 16-token blocks: turn 1 sends blocks
    /// 0-6, the last holding 4 tokens; turn 2 sends blocks 6-12 again from
    /// block 6, now full, the last holding 8.
    #[test]
    fn a_partly_filled_block_has_a_pattern_of_its_own_until_it_fills() {
        let shape = KvShape::new(presets::lookup("llama-3.1-8b").unwrap(), 1, 16).unwrap();
        let c = Conversation::parse(2, "100").unwrap();
        let t = PointTurns::new(&shape, c, MultiTurn::Delta, Granularity::Block);
        assert_eq!((t.layouts[0].first, t.layouts[0].blocks, t.layouts[0].last_fill), (0, 7, 4));
        assert_eq!((t.layouts[1].first, t.layouts[1].blocks, t.layouts[1].last_fill), (6, 7, 8));
        assert_eq!(t.checks[1].last_fill, 8);
        // Block 6 of turn 1 (4 tokens) is not block 6 of turn 2 (full); block 0 is.
        let (turn1, turn2) = (&t.layouts[0], &t.checks[1]);
        assert_ne!(turn1.seed(7, 6), turn2.seed(7, 6));
        assert_eq!(turn1.seed(7, 0), turn2.seed(7, 0));
        assert_eq!(turn2.seed(7, 6), t.layouts[1].seed(7, 0));
        // The fault's block is turn 1's block 6 as turn 1 sent it.
        let stale = t.turn_one_partial_block(&shape).unwrap();
        assert_eq!(stale.seed(7, 0), turn1.seed(7, 6));
        // Layer messages are token-exact: no block fills up.
        let layer = PointTurns::new(&shape, c, MultiTurn::Delta, Granularity::Layer);
        assert!(layer.layouts.iter().all(|l| l.last_fill == 0));
        assert!(layer.turn_one_partial_block(&shape).is_none());
    }
}
