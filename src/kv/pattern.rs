//! The integrity pattern: every 8-byte word is a hash of (message seed, word
//! index), where the seed is derived from the transfer key (request, layer,
//! K/V, block). A block delivered to the wrong place, a stale block from an
//! earlier request, a truncated or zero-filled one all fail the check.
//!
//! Every byte of the pattern has its low bit set, so no byte is ever zero and
//! a zero-filled delivery counts every one of its bytes as wrong.

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const NONZERO: u64 = 0x0101_0101_0101_0101;

#[inline(always)]
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Mixes several identifying numbers into one seed.
pub fn seed_of(parts: &[u64]) -> u64 {
    parts.iter().fold(0x6b76_7866_6572_u64, |acc, &p| splitmix64(acc ^ p))
}

#[inline(always)]
fn word(seed: u64, index: u64) -> u64 {
    splitmix64(seed ^ index.wrapping_mul(GOLDEN)) | NONZERO
}

/// Writes the pattern of `seed` over `buf`.
pub fn fill(buf: &mut [u8], seed: u64) {
    fill_at(buf, seed, 0)
}

/// Writes bytes `start..start + buf.len()` of the pattern of `seed`, so one
/// message can be filled in pieces by several threads.
pub fn fill_at(buf: &mut [u8], seed: u64, start: u64) {
    let head = head_len(start, buf.len());
    let (head_bytes, body) = buf.split_at_mut(head);
    if head > 0 {
        let k = (start % 8) as usize;
        head_bytes.copy_from_slice(&word(seed, start / 8).to_le_bytes()[k..k + head]);
    }
    let mut i = (start + head as u64) / 8;
    let mut chunks = body.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&word(seed, i).to_le_bytes());
        i += 1;
    }
    let tail = chunks.into_remainder();
    let n = tail.len();
    tail.copy_from_slice(&word(seed, i).to_le_bytes()[..n]);
}

/// Bytes before the first 8-byte boundary of the pattern at or after `start`.
fn head_len(start: u64, len: usize) -> usize {
    (((8 - start % 8) % 8) as usize).min(len)
}

/// What a check found in one message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mismatch {
    pub wrong_bytes: u64,
    /// Offset of the first wrong byte, with the byte expected and the byte found.
    pub first: Option<(u64, u8, u8)>,
}

impl Mismatch {
    fn add(&mut self, offset: u64, expected: &[u8], got: &[u8]) {
        for (k, (e, g)) in expected.iter().zip(got).enumerate() {
            if e != g {
                self.wrong_bytes += 1;
                if self.first.is_none() {
                    self.first = Some((offset + k as u64, *e, *g));
                }
            }
        }
    }

    pub fn merge(&mut self, other: Mismatch) {
        self.wrong_bytes += other.wrong_bytes;
        self.first = self.first.or(other.first);
    }
}

/// Counts the bytes of `buf` that differ from the pattern of `seed`.
pub fn verify(buf: &[u8], seed: u64) -> Mismatch {
    verify_at(buf, seed, 0)
}

/// Checks `buf` against bytes `start..start + buf.len()` of the pattern;
/// offsets in the result count from the pattern's start.
pub fn verify_at(buf: &[u8], seed: u64, start: u64) -> Mismatch {
    let mut found = Mismatch::default();
    let head = head_len(start, buf.len());
    let (head_bytes, body) = buf.split_at(head);
    if head > 0 {
        let k = (start % 8) as usize;
        let want = word(seed, start / 8).to_le_bytes();
        if head_bytes != &want[k..k + head] {
            found.add(start, &want[k..k + head], head_bytes);
        }
    }
    let mut i = (start + head as u64) / 8;
    let mut chunks = body.chunks_exact(8);
    for c in &mut chunks {
        let want = word(seed, i);
        let got = u64::from_le_bytes(c.try_into().unwrap());
        if got != want {
            found.add(i * 8, &want.to_le_bytes(), c);
        }
        i += 1;
    }
    let tail = chunks.remainder();
    let want = word(seed, i).to_le_bytes();
    if tail != &want[..tail.len()] {
        found.add(i * 8, &want[..tail.len()], tail);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_any_length() {
        for len in [0usize, 1, 7, 8, 9, 4096, 4099] {
            let mut b = vec![0u8; len];
            fill(&mut b, 42);
            assert_eq!(verify(&b, 42), Mismatch::default(), "len {len}");
            assert!(b.iter().all(|&x| x != 0), "no zero byte, len {len}");
        }
    }

    #[test]
    fn pieces_at_any_offset_equal_the_whole() {
        let mut whole = vec![0u8; 1000];
        fill(&mut whole, 99);
        for cut in [0usize, 1, 5, 8, 13, 512, 999, 1000] {
            let mut pieces = vec![0u8; 1000];
            let (a, b) = pieces.split_at_mut(cut);
            fill_at(a, 99, 0);
            fill_at(b, 99, cut as u64);
            assert_eq!(pieces, whole, "cut at {cut}");
            assert_eq!(verify_at(&whole[cut..], 99, cut as u64), Mismatch::default());
        }
        let mut bad = whole.clone();
        bad[700] ^= 4;
        let m = verify_at(&bad[513..], 99, 513);
        assert_eq!((m.wrong_bytes, m.first.unwrap().0), (1, 700));
    }

    #[test]
    fn counts_each_wrong_byte() {
        let mut b = vec![0u8; 100];
        fill(&mut b, 7);
        b[3] ^= 0xff;
        b[99] ^= 1;
        let m = verify(&b, 7);
        assert_eq!(m.wrong_bytes, 2);
        assert_eq!(m.first.unwrap().0, 3);
    }

    #[test]
    fn zero_fill_and_other_seeds_fail_everywhere() {
        let zeros = vec![0u8; 64];
        assert_eq!(verify(&zeros, 1).wrong_bytes, 64);
        let mut other = vec![0u8; 4096];
        fill(&mut other, seed_of(&[1, 2, 3]));
        // A block from a neighbouring key differs in nearly every byte.
        assert!(verify(&other, seed_of(&[1, 2, 4])).wrong_bytes > 4000);
    }

    #[test]
    fn seeds_depend_on_every_part_and_order() {
        let s = seed_of(&[1, 2, 3]);
        assert_ne!(s, seed_of(&[1, 2, 4]));
        assert_ne!(s, seed_of(&[2, 1, 3]));
        assert_ne!(s, seed_of(&[1, 2]));
    }
}
