//! Multi-turn conversations in a plan: one point per mode and granularity,
//! one request per turn that moves KV. Conversations run one after another
//! (`iterations` of them), or under arrivals, where each conversation in
//! progress holds a region of its own on both sides: `--turns` conversations
//! take turns in arrival order (every conversation's turn 1, then every turn
//! 2, ...), a trace gives each turn's time. Each turn's messages land in its
//! conversation's region (`RequestLayout::span`); after each turn the
//! receiver checks everything the decode side holds of that conversation and
//! writes the KV of the tokens it generated itself, as decode would.

use super::tp::Cut;
use super::{Granularity, RequestLayout};
use crate::kv::KvShape;
use crate::schedule::conversation::{self, Conversation, MultiTurn, Span, Turn, TurnMoves};
use serde::{Deserialize, Serialize};

/// The conversations a plan runs and the modes it compares.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConversationPlan {
    /// `--turns` and `--turn-tokens`: every conversation alike; None where
    /// a trace gives each conversation's turns (the load's trace).
    pub conversation: Option<Conversation>,
    pub modes: Vec<MultiTurn>,
}

/// One conversation of a point: what its turns move, and where.
#[derive(Clone, Debug, PartialEq)]
pub struct ConversationTurns {
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
    /// Per turn that moves: the tokens its prefill computes (see `computed`).
    pub computes: Vec<Span>,
}

impl ConversationTurns {
    /// `turns` in `mode` at `g`, in a region of `region` tokens at byte
    /// `base` of each side's buffer; under different TP each block cut as
    /// this pair moves it (what decode sends back or writes itself, the
    /// other way).
    fn new(
        shape: &KvShape,
        turns: &[Turn],
        mode: MultiTurn,
        g: Granularity,
        at: (u32, usize),
        cut: Option<&Cut>,
    ) -> Self {
        let (block, (region, base)) = (shape.block_size, at);
        let moves = conversation::moves(turns, mode, g, block);
        let moving: Vec<usize> = (0..moves.len()).filter(|&t| moves[t].forward.is_some()).collect();
        // Each span's KV ends at `end`: a partly filled last block follows it.
        let cut_as = |l: RequestLayout, back: bool| match cut {
            Some(c) => l.with_cut(if back { c.reversed() } else { c.clone() }),
            None => l,
        };
        let span_as = |from: u64, to: u64, end: u64, back: bool| {
            let mut l = RequestLayout::span_to(shape, g, from as u32, to as u32, region, end as u32);
            l.base = base;
            cut_as(l, back)
        };
        let span = |from: u64, to: u64, end: u64| span_as(from, to, end, false);
        let forward = |t: usize| moves[t].forward.expect("a moving turn moves KV to decode");
        let prompt = |t: usize| moves[t].turn.prompt_tokens;
        let layouts = moving.iter().map(|&t| span(forward(t).from, forward(t).to, prompt(t))).collect();
        let checks = moving.iter().map(|&t| span(0, forward(t).to, prompt(t))).collect();
        let generated = moving
            .iter()
            .map(|&t| {
                let context = moves[t].turn.context_tokens;
                conversation::generated(&moves[t].turn, g, block)
                    .map(|s| span_as(s.from, s.to, context, true))
            })
            .collect();
        let backs = moving
            .iter()
            .map(|&t| moves[t].back.map(|s| span_as(s.from, s.to, moves[t].turn.before_tokens, true)))
            .collect();
        let computes = moving.iter().map(|&t| computed(&moves, t, mode, block)).collect();
        ConversationTurns { moves, moving, layouts, checks, generated, backs, computes }
    }
}

/// The tokens turn `t`'s prefill computes: its prompt past what prefill's
/// prefix cache holds, in whole blocks (vLLM's prefix caching, on by
/// default). Prefill has computed the earlier turns' prompts, not the
/// tokens decode generated, so it computes those again (full, delta,
/// d-direct's turn 1), unless decode has sent its KV back (bidirectional).
fn computed(moves: &[TurnMoves], t: usize, mode: MultiTurn, block: u32) -> Span {
    let turn = moves[t].turn;
    let held = match (mode, t) {
        (_, 0) => 0,
        (MultiTurn::Bidirectional, _) => turn.before_tokens,
        _ => moves[t - 1].turn.prompt_tokens,
    };
    let block = block as u64;
    Span { from: held / block * block, to: turn.prompt_tokens }
}

/// A timed request of a conversation point: a conversation's turn that moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TurnRequest {
    pub conversation: u32,
    /// Among the conversation's turns that move (`ConversationTurns::moving`).
    pub moving: usize,
}

/// One point's conversations: a mode at a granularity.
#[derive(Clone, Debug, PartialEq)]
pub struct PointTurns {
    pub mode: MultiTurn,
    pub conversations: Vec<ConversationTurns>,
    /// The timed requests in the order they go (warm-ups are a turn 1 of
    /// conversation 0's region, under keys of their own).
    pub requests: Vec<TurnRequest>,
    /// Regions each side holds: conversations in progress at once.
    pub regions: u32,
    /// One region, laid out whole: its bytes.
    pub region: RequestLayout,
}

impl PointTurns {
    /// Conversations' `turns` (each its own, in order) in `mode` at `g`,
    /// their turns going in `order` (conversation, turn number from 1):
    /// each conversation holds a region from its first turn to its last.
    pub fn new(
        shape: &KvShape,
        turns: &[Vec<Turn>],
        order: &[(u32, u32)],
        (mode, g): (MultiTurn, Granularity),
        cut: Option<&Cut>,
    ) -> PointTurns {
        let block = shape.block_size;
        let tokens = turns.iter().map(|t| conversation::region_tokens(t, block)).max().unwrap_or(0) as u32;
        let mut region = RequestLayout::span_to(shape, g, 0, tokens, tokens, tokens);
        if let Some(c) = cut {
            region = region.with_cut(c.clone());
        }
        let (slots, regions) = regions_in_order(turns.len(), order);
        let conversations: Vec<ConversationTurns> = turns
            .iter()
            .zip(&slots)
            .map(|(t, &slot)| {
                let at = (tokens, slot as usize * region.buffer_bytes());
                ConversationTurns::new(shape, t, mode, g, at, cut)
            })
            .collect();
        let requests = order
            .iter()
            .filter_map(|&(c, turn)| {
                let moving = conversations[c as usize].moving.iter().position(|&t| t + 1 == turn as usize)?;
                Some(TurnRequest { conversation: c, moving })
            })
            .collect();
        PointTurns { mode, conversations, requests, regions, region }
    }

    /// `iterations` conversations alike, one after another.
    pub fn one_after_another(
        shape: &KvShape,
        c: Conversation,
        n: u32,
        (mode, g): (MultiTurn, Granularity),
        cut: Option<&Cut>,
    ) -> Self {
        let order: Vec<(u32, u32)> = (0..n).flat_map(|k| (1..=c.turns).map(move |t| (k, t))).collect();
        PointTurns::new(shape, &vec![c.turns(); n as usize], &order, (mode, g), cut)
    }

    /// `n` conversations alike under arrivals, taking turns: every
    /// conversation's turn 1, then every turn 2, ...
    pub fn taking_turns(
        shape: &KvShape,
        c: Conversation,
        n: u32,
        (mode, g): (MultiTurn, Granularity),
        cut: Option<&Cut>,
    ) -> Self {
        let order: Vec<(u32, u32)> = (1..=c.turns).flat_map(|t| (0..n).map(move |k| (k, t))).collect();
        PointTurns::new(shape, &vec![c.turns(); n as usize], &order, (mode, g), cut)
    }

    /// Timed request `k`: its conversation's turns, and which of those that move it is.
    pub fn at(&self, k: u32) -> (&ConversationTurns, TurnRequest) {
        let r = self.requests[k as usize];
        (&self.conversations[r.conversation as usize], r)
    }

    /// Conversation `c`'s `k`th turn that moves: its turn number.
    pub fn turn_number(&self, r: TurnRequest) -> u32 {
        let c = &self.conversations[r.conversation as usize];
        c.moves[c.moving[r.moving]].turn.turn
    }

    /// The longest turn count of the point's conversations.
    pub fn most_turns(&self) -> usize {
        self.conversations.iter().map(|c| c.moves.len()).max().unwrap_or(0)
    }

    /// The block that held conversation 0's turn-1 last prompt token, as
    /// turn 1 sent it (partly filled), at block granularity: the
    /// `stale-block` fault.
    pub fn turn_one_partial_block(&self, shape: &KvShape) -> Option<RequestLayout> {
        let c = &self.conversations[0];
        let (block, end) = (shape.block_size, c.moves[0].turn.prompt_tokens as u32);
        let from = end / block * block;
        let tokens = self.region.region_tokens;
        (c.layouts[0].granularity == Granularity::Block && end % block != 0).then(|| {
            let mut l = RequestLayout::span_to(shape, Granularity::Block, from, from + block, tokens, end);
            l.base = c.layouts[0].base;
            match &c.layouts[0].cut {
                Some(cut) => l.with_cut((**cut).clone()),
                None => l,
            }
        })
    }
}

/// Gives each of `n` conversations a region slot, held from its first turn
/// in `order` to its last, the lowest slot free then; returns each one's
/// slot and how many slots there are.
pub fn regions_in_order(n: usize, order: &[(u32, u32)]) -> (Vec<u32>, u32) {
    let mut last = vec![0usize; n];
    for (k, &(c, _)) in order.iter().enumerate() {
        last[c as usize] = k;
    }
    let (mut slots, mut held): (Vec<Option<u32>>, Vec<bool>) = (vec![None; n], Vec::new());
    for (k, &(c, _)) in order.iter().enumerate() {
        let c = c as usize;
        if slots[c].is_none() {
            let free = held.iter().position(|h| !h).unwrap_or_else(|| {
                held.push(false);
                held.len() - 1
            });
            held[free] = true;
            slots[c] = Some(free as u32);
        }
        if last[c] == k {
            held[slots[c].expect("given above") as usize] = false;
        }
    }
    (slots.into_iter().map(|s| s.unwrap_or(0)).collect(), held.len().max(1) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::presets;

    /// 3 turns of 100 in and 20 out, 16-token blocks: prefill computes its
    /// prompt past the whole blocks it has cached, its own earlier prompt
    /// (100, then 220), or with the KV sent back the whole context before
    /// the turn (120, then 240).
    #[test]
    fn each_turn_computes_what_prefill_has_not_cached() {
        let shape = KvShape::new(presets::lookup("llama-3.1-8b").unwrap(), 1, 16).unwrap();
        let c = Conversation::parse(3, "100:20").unwrap();
        let spans = |mode| {
            let t = PointTurns::one_after_another(&shape, c, 1, (mode, Granularity::Block), None);
            t.conversations[0].computes.iter().map(|s| (s.from, s.to)).collect::<Vec<_>>()
        };
        let own_prompts = vec![(0, 100), (96, 220), (208, 340)];
        assert_eq!(spans(MultiTurn::Full), own_prompts);
        assert_eq!(spans(MultiTurn::Delta), own_prompts);
        assert_eq!(spans(MultiTurn::Bidirectional), vec![(0, 100), (112, 220), (240, 340)]);
        // Decode prefills the later turns itself: only turn 1 goes to prefill.
        assert_eq!(spans(MultiTurn::DDirect), vec![(0, 100)]);
    }

    /// 2 turns of 100 tokens in delta, 16-token blocks: turn 1 sends blocks
    /// 0-6, the last holding 4 tokens; turn 2 sends blocks 6-12 again from
    /// block 6, now full, the last holding 8.
    #[test]
    fn a_partly_filled_block_has_a_pattern_of_its_own_until_it_fills() {
        let shape = KvShape::new(presets::lookup("llama-3.1-8b").unwrap(), 1, 16).unwrap();
        let c = Conversation::parse(2, "100").unwrap();
        let t = PointTurns::one_after_another(&shape, c, 1, (MultiTurn::Delta, Granularity::Block), None);
        let one = &t.conversations[0];
        assert_eq!((one.layouts[0].first, one.layouts[0].blocks, one.layouts[0].last_fill), (0, 7, 4));
        assert_eq!((one.layouts[1].first, one.layouts[1].blocks, one.layouts[1].last_fill), (6, 7, 8));
        assert_eq!(one.checks[1].last_fill, 8);
        // Block 6 of turn 1 (4 tokens) is not block 6 of turn 2 (full); block 0 is.
        let (turn1, turn2) = (&one.layouts[0], &one.checks[1]);
        assert_ne!(turn1.seed(7, 6), turn2.seed(7, 6));
        assert_eq!(turn1.seed(7, 0), turn2.seed(7, 0));
        assert_eq!(turn2.seed(7, 6), one.layouts[1].seed(7, 0));
        // The fault's block is turn 1's block 6 as turn 1 sent it.
        let stale = t.turn_one_partial_block(&shape).unwrap();
        assert_eq!(stale.seed(7, 0), turn1.seed(7, 6));
        // Layer messages are token-exact: no block fills up.
        let layer = PointTurns::one_after_another(&shape, c, 1, (MultiTurn::Delta, Granularity::Layer), None);
        assert!(layer.conversations[0].layouts.iter().all(|l| l.last_fill == 0));
        assert!(layer.turn_one_partial_block(&shape).is_none());
    }

    /// Conversations one after another share one region; taking turns,
    /// each holds its own, at its own place in the buffer.
    #[test]
    fn conversations_in_progress_at_once_each_hold_a_region() {
        let shape = KvShape::new(presets::lookup("llama-3.1-8b").unwrap(), 1, 16).unwrap();
        let c = Conversation::parse(3, "100").unwrap();
        let apart = PointTurns::one_after_another(&shape, c, 4, (MultiTurn::Full, Granularity::Layer), None);
        assert_eq!((apart.regions, apart.requests.len()), (1, 12));
        assert_eq!(apart.requests[4], TurnRequest { conversation: 1, moving: 1 });
        let together = PointTurns::taking_turns(&shape, c, 4, (MultiTurn::Full, Granularity::Layer), None);
        assert_eq!((together.regions, together.requests.len()), (4, 12));
        assert_eq!(together.requests[4], TurnRequest { conversation: 0, moving: 1 });
        let region = together.region.buffer_bytes();
        assert_eq!(region, 304 * 128 * 1024);
        let bases: Vec<usize> = together.conversations.iter().map(|c| c.layouts[0].base).collect();
        assert_eq!(bases, vec![0, region, 2 * region, 3 * region]);
        assert_eq!(together.conversations[3].checks[2].buffer_bytes(), 4 * region);
        // d-direct moves turn 1 only: the later turns are no requests.
        let d = PointTurns::taking_turns(&shape, c, 4, (MultiTurn::DDirect, Granularity::Layer), None);
        assert_eq!(d.requests.len(), 4);
        assert_eq!(d.turn_number(d.requests[3]), 1);
    }

    /// A region is free again once its conversation's last turn has gone.
    #[test]
    fn regions_are_reused_after_a_conversation_ends() {
        // Requests a: 0-2, b: 1-3, c: 4-5 (after a and b ended), d: 6.
        let order = [(0, 1), (1, 1), (0, 2), (1, 2), (2, 1), (2, 2), (3, 1)];
        assert_eq!(regions_in_order(4, &order), (vec![0, 1, 0, 0], 2));
        assert_eq!(regions_in_order(1, &[(0, 1), (0, 2)]), (vec![0], 1));
    }
}
