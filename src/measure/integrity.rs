//! Writing and checking a whole request's pattern, outside the timed region,
//! spread over the machine's cores.

use crate::kv::pattern::{self, Mismatch};
use crate::plan::RequestLayout;
use std::ops::Range;

/// Below this many bytes per thread, more threads cost more than they save.
const MIN_BYTES_PER_THREAD: usize = 4 << 20;

/// Length of each thread's piece of a request of `bytes`.
fn piece_len(bytes: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (bytes / MIN_BYTES_PER_THREAD).clamp(1, cores.min(16));
    bytes.div_ceil(threads).max(1)
}

/// Calls `f(message index, byte offset in that message, piece)` for every
/// piece of every message inside `range` of the request buffer.
fn walk(layout: &RequestLayout, range: Range<usize>, mut f: impl FnMut(usize, usize, Range<usize>)) {
    let m = layout.message_bytes;
    let mut pos = range.start;
    while pos < range.end {
        let index = pos / m;
        let msg_end = ((index + 1) * m).min(range.end);
        f(index, pos - index * m, pos - range.start..msg_end - range.start);
        pos = msg_end;
    }
}

/// Writes the pattern of `request` into every message of the request buffer.
pub fn fill(region: &mut [u8], layout: &RequestLayout, request: u64) {
    let bytes = layout.total_bytes();
    let per = piece_len(bytes);
    let fill_piece = |k: usize, piece: &mut [u8]| {
        walk(layout, k * per..k * per + piece.len(), |index, offset, r| {
            pattern::fill_at(&mut piece[r], layout.key(request, index).seed(), offset as u64)
        })
    };
    if per >= bytes {
        return fill_piece(0, &mut region[..bytes]);
    }
    std::thread::scope(|s| {
        for (k, piece) in region[..bytes].chunks_mut(per).enumerate() {
            let fill_piece = &fill_piece;
            s.spawn(move || fill_piece(k, piece));
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
                format!("{} byte {off}: expected {want:#04x}, found {got:#04x}", layout.key(request, index))
            }),
        }
    }
}

/// Counts every byte of the request buffer that differs from its pattern.
pub fn verify(region: &[u8], layout: &RequestLayout, request: u64) -> Check {
    let bytes = layout.total_bytes();
    let per = piece_len(bytes);
    let check_piece = |k: usize, piece: &[u8]| {
        let mut check = Check::default();
        walk(layout, k * per..k * per + piece.len(), |index, offset, r| {
            let len = r.len() as u64;
            let m = pattern::verify_at(&piece[r], layout.key(request, index).seed(), offset as u64);
            check.merge(Check::of_message(layout, request, index, m, len));
        });
        check
    };
    if per >= bytes {
        return check_piece(0, &region[..bytes]);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = region[..bytes]
            .chunks(per)
            .enumerate()
            .map(|(k, piece)| {
                let check_piece = &check_piece;
                s.spawn(move || check_piece(k, piece))
            })
            .collect();
        // In piece order, so `first` is the first wrong byte of the request.
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

    #[test]
    fn filled_requests_verify_at_every_granularity() {
        for g in Granularity::ALL {
            let l = layout(g, 200);
            let mut buf = vec![0u8; l.total_bytes()];
            fill(&mut buf, &l, 3);
            let c = verify(&buf, &l, 3);
            assert_eq!((c.wrong_bytes, c.verified_bytes), (0, l.total_bytes() as u64), "{g}");
            // Each message is its own pattern, seeded by its key.
            let slot = l.slot(l.message_count - 1);
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
        let (a, b) = (l.slot(0), l.slot(1));
        let first = buf[a.offset..a.offset + a.len].to_vec();
        buf.copy_within(b.offset..b.offset + b.len, a.offset);
        buf[b.offset..b.offset + b.len].copy_from_slice(&first);
        let c = verify(&buf, &l, 1);
        assert!(c.wrong_bytes > (a.len + b.len) as u64 * 9 / 10);
        assert!(c.first.unwrap().starts_with("r1/L0/K/b0 byte 0"));
    }

    /// Bytes that match by chance between two random patterns (~1/128 each).
    fn stray_matches(buf: &[u8], l: &RequestLayout, request: u64) -> u64 {
        let mut other = vec![0u8; buf.len()];
        fill(&mut other, l, request);
        buf.iter().zip(&other).filter(|(a, b)| a == b).count() as u64
    }
}
