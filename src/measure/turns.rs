//! Multi-turn conversations, on the receiver: each turn's transfer time
//! and bytes over the point's conversations, and what the mode moved
//! against `full` (plan::turns, schedule::conversation); and, in
//! bidirectional mode, the round that brings a conversation's KV back
//! from decode to prefill before a later turn.

use super::{allowance, RequestLink, RoundSink, SLOWEST_DATA_BYTES_PER_SEC, SLOWEST_PATTERN_BYTES_PER_SEC};
use crate::error::Result;
use crate::figures::conversation::{ConversationFigures, TurnFigures};
use crate::figures::{self, LatencySummary};
use crate::integrity::Check;
use crate::kv::KvShape;
use crate::memory::Buffer;
use crate::plan::turns::{ConversationTurns, PointTurns};
use crate::plan::{RequestLayout, VerifyMode};
use crate::schedule::conversation::{self, MultiTurn, Span, Turn, TurnMoves};
use crate::session::{Control, Msg};
use crate::transport::{nanos, AtOnce, RecvSide, SendSide};
use hdrhistogram::Histogram;
use std::time::{Duration, Instant};

/// The receiver's account of a conversation point's timed turns, by turn number.
pub struct TurnsTally {
    per_turn: Vec<Histogram<u64>>,
    back: Vec<Histogram<u64>>,
}

impl TurnsTally {
    pub fn new(turns: &PointTurns) -> Self {
        let each = || (0..turns.most_turns()).map(|_| figures::new_histogram()).collect();
        TurnsTally { per_turn: each(), back: each() }
    }

    /// A conversation's turn `turn` (from 1) took `ns`.
    pub fn turn(&mut self, turn: u32, ns: u64) {
        self.per_turn[turn as usize - 1].saturating_record(ns.max(1));
    }

    /// Before it, its KV came back to prefill in `ns`.
    pub fn back(&mut self, turn: u32, ns: u64) {
        self.back[turn as usize - 1].saturating_record(ns.max(1));
    }

    /// Per turn number, what the conversations that reach it moved (their
    /// mean, the same for conversations alike) and its times.
    pub fn figures(&self, turns: &PointTurns, shape: &KvShape) -> ConversationFigures {
        let g = turns.region.granularity;
        let n = turns.conversations.len().max(1) as u64;
        let mut cumulative = 0;
        let figures = (0..turns.most_turns())
            .map(|t| {
                let reach: Vec<&ConversationTurns> =
                    turns.conversations.iter().filter(|c| c.moves.len() > t).collect();
                let mean = |f: &dyn Fn(&ConversationTurns) -> u64| {
                    reach.iter().map(|c| f(c)).sum::<u64>() / reach.len().max(1) as u64
                };
                let span =
                    |f: fn(&TurnMoves) -> Option<Span>| mean(&|c| f(&c.moves[t]).map_or(0, |s| s.tokens()));
                // The bytes the turn's layouts move (a hybrid model's layers each their own).
                let moved = |f: fn(&ConversationTurns, usize) -> u64| {
                    mean(&|c| c.moving.iter().position(|&i| i == t).map_or(0, |k| f(c, k)))
                };
                let bytes = moved(|c, k| c.layouts[k].total_bytes() as u64);
                let back_bytes = moved(|c, k| c.backs[k].as_ref().map_or(0, |b| b.total_bytes() as u64));
                cumulative += bytes + back_bytes;
                let messages = mean(&|c| match c.moving.iter().position(|&i| i == t) {
                    Some(k) => c.layouts[k].message_count as u64,
                    None => 0,
                });
                TurnFigures {
                    turn: t as u32 + 1,
                    prompt_tokens: mean(&|c| c.moves[t].turn.prompt_tokens),
                    moved_tokens: span(|m| m.forward),
                    bytes,
                    back_tokens: span(|m| m.back),
                    back_bytes,
                    cumulative_bytes: cumulative,
                    messages: messages as usize,
                    transfer_ns: LatencySummary::of(&self.per_turn[t]),
                    transfer_histogram: figures::encode_histogram(&self.per_turn[t]),
                    back_ns: LatencySummary::of(&self.back[t]),
                }
            })
            .collect();
        let turns_of = |c: &ConversationTurns| -> Vec<Turn> { c.moves.iter().map(|m| m.turn).collect() };
        let full: u64 = turns
            .conversations
            .iter()
            .flat_map(|c| conversation::moves(&turns_of(c), MultiTurn::Full, g, shape.block_size))
            .map(|m| m.forward.map_or(0, |s| s.bytes_ending(shape, m.turn.prompt_tokens)))
            .sum();
        // Under different TP a pair moves its cut of every block: of full's too.
        let full = match &turns.region.cut {
            Some(_) => {
                let t = turns.region.region_tokens;
                let whole = crate::plan::RequestLayout::span_to(shape, g, 0, t, t, t).total_bytes();
                (full as u128 * turns.region.total_bytes() as u128 / whole.max(1) as u128) as u64
            }
            None => full,
        };
        let flops: Vec<f64> = turns
            .conversations
            .iter()
            .flat_map(|c| c.moves.iter().filter_map(|m| m.decode_prefill_flops(turns.mode, shape)))
            .collect();
        ConversationFigures {
            mode: turns.mode,
            conversations: turns.conversations.len() as u32,
            turns: figures,
            bytes: cumulative,
            full_bytes: full / n,
            regions: turns.regions,
            region_bytes: turns.region.buffer_bytes() as u64,
            decode_prefill_flops: (!flops.is_empty()).then(|| flops.iter().sum::<f64>() / n as f64),
        }
    }
}

/// Bidirectional, on the prefill side: before a later turn, pulls the
/// conversation's KV back from decode into its own copy (`layout`), checks
/// it, and tells decode how long it took and what the check found.
pub(super) fn pull_back(
    ctrl: &mut Control,
    back: &mut dyn RecvSide,
    buf: &mut Buffer,
    layout: &RequestLayout,
    (point, request): (usize, u64),
    verify: VerifyMode,
) -> Result<()> {
    let bytes = layout.total_bytes();
    let by = allowance(ctrl.timeout, bytes, SLOWEST_PATTERN_BYTES_PER_SEC);
    ctrl.expect_by(
        by,
        &format!("waiting for decode to offer {}'s KV back", crate::plan::Req(request)),
        |m| match m {
            Msg::Ready { point: p, request: r } if p == point && r == request => Ok(()),
            other => Err(other),
        },
    )?;
    let mut sink = RoundSink::new(layout, verify == VerifyMode::Inline);
    sink.begin(request);
    let deadline = allowance(ctrl.timeout, bytes, SLOWEST_DATA_BYTES_PER_SEC);
    let go = (!back.go_in_band()).then_some(Msg::Go { point, request });
    let t0 = Instant::now();
    let mut link = RequestLink { ctrl, go, request, fan: None, computes: false };
    let timing = back.recv(buf, layout, request, deadline, &mut link, &sink)?;
    let host_ns = nanos(timing.landed.unwrap_or_else(Instant::now) - t0);
    sink.check_complete()?;
    let found = sink.found(verify, buf, layout)?;
    let ns = timing.elapsed_ns.unwrap_or(host_ns).max(1);
    ctrl.send(&Msg::Pulled {
        request,
        ns,
        verified_bytes: found.verified_bytes,
        wrong_bytes: found.wrong_bytes,
        first: found.first,
    })
}

/// Bidirectional, on the decode side: offers the conversation's KV it
/// holds (`layout`) back to prefill, sends it, and returns the time and
/// check prefill reports.
pub(super) fn send_back(
    ctrl: &mut Control,
    back: &mut dyn SendSide,
    buf: &Buffer,
    layout: &RequestLayout,
    (point, request): (usize, u64),
) -> Result<(u64, Check)> {
    let bytes = layout.total_bytes();
    ctrl.send(&Msg::Ready { point, request })?;
    let mut deadline = allowance(ctrl.timeout, bytes, SLOWEST_DATA_BYTES_PER_SEC);
    let by = allowance(ctrl.timeout, 0, 1.0);
    if back.go_in_band() {
        deadline += by.saturating_duration_since(Instant::now());
    } else {
        ctrl.expect_by(
            by,
            &format!("waiting for prefill's go to send {}'s KV back", crate::plan::Req(request)),
            |m| match m {
                Msg::Go { point: p, request: r } if p == point && r == request => Ok(()),
                other => Err(other),
            },
        )?;
    }
    let mut link = RequestLink { ctrl, go: None, request, fan: None, computes: false };
    back.send(buf, layout, request, deadline, &mut link, &AtOnce)?;
    // Prefill checks what it pulled before it answers.
    let by = deadline + Duration::from_secs_f64(bytes as f64 / SLOWEST_PATTERN_BYTES_PER_SEC);
    ctrl.expect_by(
        by,
        &format!("waiting for prefill to check {}'s KV back", crate::plan::Req(request)),
        |m| match m {
            Msg::Pulled { request: r, ns, verified_bytes, wrong_bytes, first } if r == request => {
                Ok((ns, Check { verified_bytes, wrong_bytes, first }))
            }
            other => Err(other),
        },
    )
}
