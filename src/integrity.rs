//! Writing and checking a whole request's pattern, outside the timed region,
//! spread over the machine's cores.

use crate::kv::pattern::{self, Mismatch};
use crate::plan::{RequestLayout, Side};
use std::ops::Range;

/// Below this many bytes per thread, more threads cost more than they save.
const MIN_BYTES_PER_THREAD: usize = 4 << 20;

/// Length of each thread's piece of a request of `bytes`.
fn piece_len(bytes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (bytes / MIN_BYTES_PER_THREAD).clamp(1, cores.min(16));
    bytes.div_ceil(threads).max(1)
}

/// One thread's share of a request: pieces of messages, each
/// (message index, offset in the message, place in the side's buffer).
type Share = Vec<(usize, usize, Range<usize>)>;

/// The request's bytes (its messages in order) cut into thread shares of
/// `per` bytes, each piece placed where `side`'s layout puts its message.
fn shares(layout: &RequestLayout, side: Side, per: usize) -> Vec<Share> {
    let mut out: Vec<Share> = vec![Vec::new(); layout.total_bytes().div_ceil(per).max(1)];
    for slot in layout.slots(side) {
        let start = layout.message_start(slot.index); // in the request
        let (mut pos, end) = (start, start + slot.len);
        while pos < end {
            let k = pos / per;
            let upto = end.min((k + 1) * per);
            let at = slot.offset + (pos - start);
            out[k].push((slot.index, pos - start, at..at + (upto - pos)));
            pos = upto;
        }
    }
    out
}

/// Writes the pattern of `request` into every message of the sender's buffer.
pub fn fill(region: &mut [u8], layout: &RequestLayout, request: u64) {
    let per = piece_len(layout.total_bytes());
    // Each piece's bytes, borrowed apart: pieces never overlap.
    let mut pieces: Vec<(usize, usize, usize, Range<usize>)> = shares(layout, Side::Sender, per)
        .into_iter()
        .enumerate()
        .flat_map(|(k, share)| share.into_iter().map(move |(i, off, r)| (k, i, off, r)))
        .collect();
    pieces.sort_unstable_by_key(|p| p.3.start);
    let mut by_thread: Vec<Vec<(usize, usize, &mut [u8])>> = Vec::new();
    let (mut rest, mut at) = (region, 0);
    for (k, index, offset, r) in pieces {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(r.start - at);
        let (mine, tail) = tail.split_at_mut(r.len());
        if by_thread.len() <= k {
            by_thread.resize_with(k + 1, Vec::new);
        }
        by_thread[k].push((index, offset, mine));
        (rest, at) = (tail, r.end);
    }
    let fill_share = |share: Vec<(usize, usize, &mut [u8])>| {
        for (index, offset, bytes) in share {
            // An operator's signal stops the run: the pattern need not be finished.
            if crate::signals::received().is_some() {
                return;
            }
            let start = layout.pattern_start(index) + offset as u64;
            pattern::fill_at(bytes, layout.seed(request, index), start);
        }
    };
    if by_thread.len() == 1 {
        return fill_share(by_thread.pop().expect("one share"));
    }
    std::thread::scope(|s| {
        for share in by_thread {
            let fill_share = &fill_share;
            s.spawn(move || fill_share(share));
        }
    });
}

/// What a check of one request found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Check {
    pub verified_bytes: u64,
    pub wrong_bytes: u64,
    /// Where the first wrong byte was, for the operator.
    pub first: Option<String>,
}

impl Check {
    pub fn merge(&mut self, other: Check) {
        self.verified_bytes += other.verified_bytes;
        self.wrong_bytes += other.wrong_bytes;
        if self.first.is_none() {
            self.first = other.first;
        }
    }

    /// Describes a message's mismatch: key, offset, expected and found byte.
    pub fn of_message(layout: &RequestLayout, request: u64, index: usize, m: Mismatch, bytes: u64) -> Check {
        Check {
            verified_bytes: bytes,
            wrong_bytes: m.wrong_bytes,
            first: m.first.map(|(off, want, got)| {
                format!(
                    "{} byte {off}: expected {want:#04x}, found {got:#04x}",
                    layout.name(request, index, off)
                )
            }),
        }
    }
}

/// Counts every byte of the receiver's buffer that differs from its pattern.
pub fn verify(region: &[u8], layout: &RequestLayout, request: u64) -> Check {
    let check_share = |share: Share| {
        let mut check = Check::default();
        for (index, offset, r) in share {
            if crate::signals::received().is_some() {
                break;
            }
            let len = r.len() as u64;
            let start = layout.pattern_start(index) + offset as u64;
            let m = pattern::verify_at(&region[r], layout.seed(request, index), start);
            check.merge(Check::of_message(layout, request, index, m, len));
        }
        check
    };
    let mut shares = shares(layout, Side::Receiver, piece_len(layout.total_bytes()));
    if shares.len() == 1 {
        return check_share(shares.pop().expect("one share"));
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = shares
            .into_iter()
            .map(|share| {
                let check_share = &check_share;
                s.spawn(move || check_share(share))
            })
            .collect();
        // In share order, so `first` is the first wrong byte of the request.
        handles.into_iter().fold(Check::default(), |mut total, h| {
            total.merge(h.join().expect("verify thread"));
            total
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{presets, KvShape};
    use crate::plan::Granularity;

    fn layout(g: Granularity, tokens: u32) -> RequestLayout {
        let shape = KvShape::new(presets::lookup("qwen2.5-7b").unwrap(), 1, 16).unwrap();
        RequestLayout::new(&shape, tokens, g)
    }

    /// One turn over a perfect wire: each message's bytes from the
    /// sender's slot to the receiver's (`misplace`: message 0 lands in
    /// message 1's place, as a delta block written at the wrong offset).
    fn move_turn(send: &[u8], recv: &mut [u8], l: &RequestLayout, misplace: bool) {
        let mut order: Vec<(usize, usize)> = (0..l.message_count).map(|i| (i, i)).collect();
        if misplace {
            order.push((0, 1)); // last, over message 1's place
        }
        for (i, place) in order {
            let (from, to) = (l.slot(Side::Sender, i), l.slot(Side::Receiver, place));
            recv[to.offset..to.offset + to.len].copy_from_slice(&send[from.offset..from.offset + to.len]);
        }
    }

    /// Five turns of a conversation (100 tokens in, 20 out), moved in full
    /// and in deltas at every granularity into a region for the whole
    /// conversation: after each turn the decode side's copy of every token
    /// so far checks whole, and at the end the whole context does.
    #[test]
    fn a_conversation_checks_whole_after_every_turn_in_full_and_in_deltas() {
        use crate::schedule::conversation::{Conversation, MultiTurn};
        let shape = KvShape::new(presets::lookup("qwen2.5-7b").unwrap(), 1, 16).unwrap();
        let c = Conversation::parse(5, "100:20").unwrap();
        let region = c.region_tokens(16) as u32;
        for g in Granularity::ALL {
            for mode in [MultiTurn::Full, MultiTurn::Delta] {
                let bytes = RequestLayout::span(&shape, g, 0, region, region).buffer_bytes();
                let (mut send, mut recv) = (vec![0u8; bytes], vec![0u8; bytes]);
                for m in c.moves(mode, g, 16) {
                    let span = m.forward.expect("full and delta move every turn");
                    let l = RequestLayout::span(&shape, g, span.from as u32, span.to as u32, region);
                    assert!(l.buffer_bytes() == bytes && !l.tiled() || span.from == 0, "{g} {mode}");
                    fill(&mut send, &l, 7);
                    move_turn(&send, &mut recv, &l, false);
                    let so_far = RequestLayout::span(&shape, g, 0, span.to as u32, region);
                    let check = verify(&recv, &so_far, 7);
                    assert_eq!(
                        (check.wrong_bytes, check.verified_bytes),
                        (0, so_far.total_bytes() as u64),
                        "{g} {mode} {m:?}"
                    );
                    // Decode writes its own generated tokens' KV.
                    if let Some(out) = c.generated(m.turn.turn, g, 16) {
                        let l = RequestLayout::span(&shape, g, out.from as u32, out.to as u32, region);
                        fill(&mut recv, &l, 7);
                    }
                }
                // The whole context at the end, generated tokens included.
                let end = match g {
                    Granularity::Block => region,
                    _ => c.turn(5).context_tokens as u32,
                };
                let whole = RequestLayout::span(&shape, g, 0, end, region);
                assert_eq!(verify(&recv, &whole, 7).wrong_bytes, 0, "{g} {mode}");
            }
        }
    }

    /// A delta block at the wrong offset: the turn's check names the block
    /// it overwrote (conversation, layer, K/V, block).
    #[test]
    fn a_delta_block_at_the_wrong_offset_is_named() {
        let shape = KvShape::new(presets::lookup("qwen2.5-7b").unwrap(), 1, 16).unwrap();
        let first = RequestLayout::span(&shape, Granularity::Block, 0, 112, 224);
        let bytes = first.buffer_bytes();
        let (mut send, mut recv) = (vec![0u8; bytes], vec![0u8; bytes]);
        fill(&mut send, &first, 7);
        move_turn(&send, &mut recv, &first, false);
        // Turn 2 sends blocks 6..14; its block 6 lands on block 7.
        let delta = RequestLayout::span(&shape, Granularity::Block, 96, 224, 224);
        fill(&mut send, &delta, 7);
        move_turn(&send, &mut recv, &delta, true);
        let check = verify(&recv, &RequestLayout::span(&shape, Granularity::Block, 0, 224, 224), 7);
        assert!(check.wrong_bytes > 0);
        let first = check.first.unwrap();
        assert!(first.starts_with("r7/L0/K/b7 byte"), "{first}");
    }

    #[test]
    fn filled_requests_verify_at_every_granularity() {
        for g in Granularity::ALL {
            let l = layout(g, 200);
            let mut buf = vec![0u8; l.total_bytes()];
            fill(&mut buf, &l, 3);
            let c = verify(&buf, &l, 3);
            assert_eq!((c.wrong_bytes, c.verified_bytes), (0, l.total_bytes() as u64), "{g}");
            // Each message is its own pattern, seeded by its key.
            let slot = l.slot(Side::Receiver, l.message_count - 1);
            let alone = pattern::verify(&buf[slot.offset..][..slot.len], l.key(3, slot.index).seed());
            assert_eq!(alone.wrong_bytes, 0);
        }
    }

    #[test]
    fn another_request_or_a_swap_is_caught() {
        let l = layout(Granularity::Block, 64);
        let mut buf = vec![0u8; l.total_bytes()];
        fill(&mut buf, &l, 1);
        assert_eq!(verify(&buf, &l, 2).wrong_bytes, l.total_bytes() as u64 - stray_matches(&buf, &l, 2));
        let (a, b) = (l.slot(Side::Receiver, 0), l.slot(Side::Receiver, 1));
        let first = buf[a.offset..a.offset + a.len].to_vec();
        buf.copy_within(b.offset..b.offset + b.len, a.offset);
        buf[b.offset..b.offset + b.len].copy_from_slice(&first);
        let c = verify(&buf, &l, 1);
        assert!(c.wrong_bytes > (a.len + b.len) as u64 * 9 / 10);
        assert!(c.first.unwrap().starts_with("r1/L0/K/b0 byte 0"));
    }

    #[test]
    fn blocks_placed_in_a_pool_are_written_and_checked_where_each_side_puts_them() {
        let shape = KvShape::new(presets::lookup("qwen2.5-7b").unwrap(), 1, 16).unwrap();
        let l = RequestLayout::in_pool(&shape, 100, crate::plan::BlockTable::Random { seed: 3 }, 20, true);
        let mut sent = vec![0u8; l.buffer_bytes()];
        fill(&mut sent, &l, 4);
        // Move each message from the sender's slot to the receiver's.
        let mut received = vec![0u8; l.buffer_bytes()];
        for i in 0..l.message_count {
            let (a, b) = (l.slot(Side::Sender, i), l.slot(Side::Receiver, i));
            received[b.offset..b.offset + b.len].copy_from_slice(&sent[a.offset..a.offset + a.len]);
        }
        let c = verify(&received, &l, 4);
        assert_eq!((c.wrong_bytes, c.verified_bytes), (0, l.total_bytes() as u64));
        // The sender's own buffer, read with the receiver's table, is wrong.
        assert!(verify(&sent, &l, 4).wrong_bytes > l.total_bytes() as u64 / 2);
    }

    /// P x D over a perfect wire: every pair's pieces from its prefill
    /// rank's blocks into its decode rank's; together a decode rank's
    /// pairs fill every byte of its blocks once, and each checks whole. A
    /// prefill rank that reads a head off (the test fault) is named.
    #[test]
    fn each_decode_rank_gets_its_heads_from_its_prefill_ranks() {
        use crate::plan::tp::{KvLayout, TpTopology};
        let model = presets::lookup("llama-3.1-8b").unwrap();
        let shape = KvShape::new(model.clone(), 1, 16).unwrap();
        for (p, d) in [(2, 1), (1, 2), (2, 4), (4, 16), (2, 2)] {
            for layout in [KvLayout::Hnd, KvLayout::Nhd, KvLayout::BlocksFirst] {
                let t = TpTopology { prefill_tp: p, decode_tp: d, layout };
                for dr in 0..d {
                    let mut covered: Option<Vec<u8>> = None;
                    for pr in t.sources(&model, dr) {
                        let cut = t.cut(&model, 16, pr, dr).unwrap();
                        let l = RequestLayout::in_pool(
                            &shape,
                            40,
                            crate::plan::BlockTable::Random { seed: 5 },
                            4,
                            true,
                        )
                        .with_cut(cut.clone());
                        let mut sent = vec![0u8; l.buffer_bytes()];
                        fill(&mut sent, &l, 9);
                        let received = covered.get_or_insert_with(|| vec![0u8; l.buffer_bytes()]);
                        for i in 0..l.message_count {
                            let (a, b) = (l.slot(Side::Sender, i), l.slot(Side::Receiver, i));
                            assert!(
                                received[b.offset..b.offset + b.len].iter().all(|&x| x == 0),
                                "{t} {pr}->{dr}: overlap"
                            );
                            received[b.offset..b.offset + b.len]
                                .copy_from_slice(&sent[a.offset..a.offset + a.len]);
                        }
                        let c = verify(received, &l, 9);
                        assert_eq!(
                            (c.wrong_bytes, c.verified_bytes),
                            (0, l.total_bytes() as u64),
                            "{t} {pr}->{dr}"
                        );
                        // The test fault: message 0's first head read from beside it.
                        let Some((from, to, len)) = l.neighbour_head() else { continue };
                        sent.copy_within(from..from + len, to);
                        let mut got = vec![0u8; l.buffer_bytes()];
                        for i in 0..l.message_count {
                            let (a, b) = (l.slot(Side::Sender, i), l.slot(Side::Receiver, i));
                            got[b.offset..b.offset + b.len]
                                .copy_from_slice(&sent[a.offset..a.offset + a.len]);
                        }
                        let c = verify(&got, &l, 9);
                        let named = c.first.unwrap_or_default();
                        assert!(
                            c.wrong_bytes > 0
                                && named.contains(&format!("decode rank {dr}, from prefill rank {pr}")),
                            "{t}: {named}"
                        );
                        assert!(named.contains(" head "), "{named}");
                        assert!(named.starts_with("r9/L0/K/b"), "{named}");
                    }
                    // The decode rank's blocks of the request: 3 of 4 pool blocks, all written.
                    let written = covered.unwrap().iter().filter(|&&x| x != 0).count();
                    let block = (8 / d).max(1) as usize * 16 * 256;
                    assert_eq!(written, 32 * 2 * 3 * block, "{t} decode rank {dr}");
                }
            }
        }
    }

    /// Bytes that match by chance between two random patterns (~1/128 each).
    fn stray_matches(buf: &[u8], l: &RequestLayout, request: u64) -> u64 {
        let mut other = vec![0u8; buf.len()];
        fill(&mut other, l, request);
        buf.iter().zip(&other).filter(|(a, b)| a == b).count() as u64
    }
}
