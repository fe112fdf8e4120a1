//! Prefill and decode at different tensor parallelism, as vLLM's
//! NixlConnector moves the KV between them (nixl_connector.py,
//! `TpKVTopology` in kv_connector/utils.py).
//!
//! Each rank holds a range of the model's KV heads: K/TP of them from
//! rank x K/TP, or, past K ranks, one head replicated on TP/K ranks. With
//! tp_ratio = D/P > 0 (decode TP at least prefill's) decode rank d reads
//! from prefill rank d / ratio the heads it holds, a slice of every block;
//! with tp_ratio = -(P/D) < 0 it reads the whole (smaller) block of each of
//! prefill ranks d x |ratio| + i into its own part of its block. MLA's
//! latent is replicated: one read of whole blocks, from the first of those
//! ranks (the others are only notified).
//!
//! Where the slice sits in a block is the layout's business: HND
//! ([heads][tokens][head_dim], NixlConnector's default) keeps one rank's
//! heads contiguous, NHD ([tokens][heads][head_dim]) cuts a slice into one
//! piece per token; "blocks first" (FlashInfer) is HND inside the block
//! with a block's K and V side by side in the pool.

use crate::error::{Error, Result};
use crate::kv::{Attention, ModelSpec};
use serde::{Deserialize, Serialize};
use std::fmt;

/// How a layer's KV cache is laid out in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvLayout {
    /// [K/V][blocks][heads][tokens][head_dim]: NixlConnector's choice.
    #[default]
    Hnd,
    /// [K/V][blocks][tokens][heads][head_dim]: a head slice is strided.
    Nhd,
    /// [blocks][K/V][heads][tokens][head_dim] (FlashInfer): a block's K and
    /// V side by side.
    BlocksFirst,
}

crate::words::named_by_words!(KvLayout, "--kv-layout", {
    Hnd => "hnd",
    Nhd => "nhd",
    BlocksFirst => "blocks-first" | "flashinfer",
});

/// The TP sizes that NixlConnector pairs, and the layout on both sides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpTopology {
    pub prefill_tp: u32,
    pub decode_tp: u32,
    pub layout: KvLayout,
}

/// The largest TP size taken: vLLM's TP groups within a node and a bit.
pub const MAX_TP: u32 = 16;

/// The heads `[start, start + count)` that a rank holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heads {
    pub start: u32,
    pub count: u32,
}

impl Heads {
    /// Rank `rank` of `tp`, of a model with `kv_heads` KV heads.
    pub fn of(kv_heads: u32, tp: u32, rank: u32) -> Heads {
        Heads { start: rank * kv_heads / tp, count: (kv_heads / tp).max(1) }
    }

    fn end(&self) -> u32 {
        self.start + self.count
    }
}

impl TpTopology {
    pub fn validate(&self, model: &ModelSpec) -> Result<()> {
        for (flag, tp) in [("--prefill-tp", self.prefill_tp), ("--decode-tp", self.decode_tp)] {
            if !tp.is_power_of_two() || tp > MAX_TP {
                return Err(Error::usage(format!("{flag} {tp}: give a power of two from 1 to {MAX_TP}")));
            }
            if let Attention::Gqa { kv_heads, .. } = model.attention {
                let fits =
                    if tp <= kv_heads { kv_heads.is_multiple_of(tp) } else { tp.is_multiple_of(kv_heads) };
                if !fits {
                    return Err(Error::usage(format!(
                        "{flag} {tp} does not fit the {kv_heads} KV heads of {}: one must divide the other",
                        model.name
                    )));
                }
            }
        }
        match model.attention {
            Attention::Gqa { kv_heads, .. } if self.prefill_tp > kv_heads && self.decode_tp < self.prefill_tp => {
                Err(Error::usage(format!(
                    "prefill TP {} replicates the {kv_heads} KV heads of {} and decode TP {} is smaller: NixlConnector \
                     refuses that (a decode rank would read one head from several prefill ranks)",
                    self.prefill_tp, model.name, self.decode_tp
                )))
            }
            Attention::Mla { .. } if self.layout != KvLayout::Hnd => Err(Error::usage(format!(
                "--kv-layout {}: {} keeps one MLA latent per token, with no heads to lay out",
                self.layout, model.name
            ))),
            _ => Ok(()),
        }
    }

    /// vLLM's tp_ratio: D/P when decode's TP is at least prefill's, -(P/D) otherwise.
    pub fn ratio(&self) -> i64 {
        match self.decode_tp >= self.prefill_tp {
            true => (self.decode_tp / self.prefill_tp) as i64,
            false => -((self.prefill_tp / self.decode_tp) as i64),
        }
    }

    /// The prefill ranks decode rank `d` reads from, in order.
    pub fn sources(&self, model: &ModelSpec, d: u32) -> Vec<u32> {
        let (p, dt) = (self.prefill_tp, self.decode_tp);
        if dt >= p {
            return vec![d * p / dt];
        }
        let r = p / dt;
        match model.attention {
            // The latent is the same on all of them: one read, from the first.
            Attention::Mla { .. } => vec![d * r],
            Attention::Gqa { .. } => (d * r..(d + 1) * r).collect(),
        }
    }

    /// The decode ranks that read from prefill rank `p`, in order; none
    /// for an MLA prefill rank that is only notified.
    pub fn readers(&self, model: &ModelSpec, p: u32) -> Vec<u32> {
        (0..self.decode_tp).filter(|&d| self.sources(model, d).contains(&p)).collect()
    }

    /// What moves from prefill rank `p` to decode rank `d` in every block:
    /// the pieces of one (layer, K/V) block, contiguous on both sides.
    pub fn cut(&self, model: &ModelSpec, block_size: u32, p: u32, d: u32) -> Result<Cut> {
        if p >= self.prefill_tp || d >= self.decode_tp {
            return Err(Error::usage(format!(
                "prefill rank {p} or decode rank {d} is not a rank of prefill TP {} and decode TP {}",
                self.prefill_tp, self.decode_tp
            )));
        }
        if !self.sources(model, d).contains(&p) {
            return Err(Error::usage(format!(
                "decode rank {d} of TP {} reads from prefill rank{} {}, not {p} (prefill TP {})",
                self.decode_tp,
                if self.sources(model, d).len() > 1 { "s" } else { "" },
                join(&self.sources(model, d)),
                self.prefill_tp
            )));
        }
        let b = block_size as usize;
        let (kv_heads, head_bytes) = match model.attention {
            Attention::Gqa { kv_heads, head_dim } => (kv_heads, head_dim as u64 * model.dtype.bytes()),
            Attention::Mla { .. } => {
                // One latent per token, alike on every rank.
                let shape = crate::kv::KvShape { model: model.clone(), tp: 1, block_size, hma: true };
                let block = shape.block_bytes() as usize;
                let whole = Piece { sender: 0, receiver: 0, len: block };
                return Ok(Cut {
                    prefill_rank: p,
                    decode_rank: d,
                    layout: self.layout,
                    block_size,
                    head_bytes: 0,
                    sender: Heads { start: 0, count: 0 },
                    receiver: Heads { start: 0, count: 0 },
                    moved: Heads { start: 0, count: 0 },
                    sender_block: block,
                    receiver_block: block,
                    pieces: vec![whole],
                });
            }
        };
        let e = head_bytes as usize;
        let sender = Heads::of(kv_heads, self.prefill_tp, p);
        let receiver = Heads::of(kv_heads, self.decode_tp, d);
        let start = sender.start.max(receiver.start);
        let moved = Heads { start, count: sender.end().min(receiver.end()) - start };
        let (hs, hr, n) = (sender.count as usize, receiver.count as usize, moved.count as usize);
        let (s0, r0) = ((start - sender.start) as usize, (start - receiver.start) as usize);
        let pieces = match self.layout {
            _ if n == hs && n == hr => vec![Piece { sender: 0, receiver: 0, len: n * b * e }],
            KvLayout::Hnd | KvLayout::BlocksFirst => {
                vec![Piece { sender: s0 * b * e, receiver: r0 * b * e, len: n * b * e }]
            }
            KvLayout::Nhd => (0..b)
                .map(|t| Piece { sender: (t * hs + s0) * e, receiver: (t * hr + r0) * e, len: n * e })
                .collect(),
        };
        Ok(Cut {
            prefill_rank: p,
            decode_rank: d,
            layout: self.layout,
            block_size,
            head_bytes: e,
            sender,
            receiver,
            moved,
            sender_block: hs * b * e,
            receiver_block: hr * b * e,
            pieces,
        })
    }
}

impl fmt::Display for TpTopology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "prefill TP {} -> decode TP {} ({}, tp_ratio {})",
            self.prefill_tp,
            self.decode_tp,
            self.layout,
            self.ratio()
        )
    }
}

fn join(ranks: &[u32]) -> String {
    ranks.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
}

/// One contiguous run of a block's bytes: where it sits in the prefill
/// rank's block and in the decode rank's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Piece {
    pub sender: usize,
    pub receiver: usize,
    pub len: usize,
}

/// How one pair's blocks are cut: every (layer, K/V) block of the request
/// moves as `pieces`, each its own message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cut {
    pub prefill_rank: u32,
    pub decode_rank: u32,
    pub layout: KvLayout,
    pub block_size: u32,
    /// One head of one token (GQA); 0 for MLA.
    pub head_bytes: usize,
    /// The heads each side holds, and those that move (GQA).
    pub sender: Heads,
    pub receiver: Heads,
    pub moved: Heads,
    /// Bytes of one (layer, K/V) block on each side.
    pub sender_block: usize,
    pub receiver_block: usize,
    pub pieces: Vec<Piece>,
}

impl Cut {
    /// The same pieces the other way: decode's blocks as the sending side's
    /// (a conversation's KV sent back to prefill, or the tokens decode
    /// writes itself into its own blocks).
    pub fn reversed(&self) -> Cut {
        let mut r = self.clone();
        (r.sender, r.receiver) = (self.receiver, self.sender);
        (r.sender_block, r.receiver_block) = (self.receiver_block, self.sender_block);
        for p in &mut r.pieces {
            (p.sender, p.receiver) = (p.receiver, p.sender);
        }
        r
    }

    /// The (global head, token) of byte `at` of the decode rank's block.
    pub fn head_at(&self, at: usize) -> Option<(u32, u32)> {
        let e = self.head_bytes;
        if e == 0 {
            return None;
        }
        let (h, b) = (self.receiver.count as usize, self.block_size as usize);
        let (head, token) = match self.layout {
            KvLayout::Nhd => ((at % (h * e)) / e, at / (h * e)),
            KvLayout::Hnd | KvLayout::BlocksFirst => (at / (b * e), (at % (b * e)) / e),
        };
        Some((self.receiver.start + head as u32, token as u32))
    }

    /// Bytes from one head to the next in a block: a head's row in NHD,
    /// its tokens' run otherwise; None for MLA, which has no heads.
    pub fn head_step(&self) -> Option<usize> {
        match (self.head_bytes, self.layout) {
            (0, _) => None,
            (e, KvLayout::Nhd) => Some(e),
            (e, _) => Some(e * self.block_size as usize),
        }
    }

    /// The messages of one block, and their bytes, for `kvxfer plan`.
    pub fn describe(&self) -> String {
        let pieces = self.pieces.len();
        let bytes = crate::units::fmt_bytes(self.pieces[0].len as u64);
        match self.head_bytes {
            0 => format!("whole latent blocks: 1 piece of {bytes} a block"),
            _ => format!(
                "heads {}..{} ({} of the prefill rank's {}, into {} of the decode rank's): {pieces} piece{} of {bytes} a block",
                self.moved.start,
                self.moved.end() - 1,
                self.moved.count,
                self.sender.count,
                self.receiver.count,
                if pieces > 1 { "s" } else { "" }
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::presets;

    fn topo(p: u32, d: u32, layout: KvLayout) -> TpTopology {
        TpTopology { prefill_tp: p, decode_tp: d, layout }
    }

    #[test]
    fn ranks_read_as_nixl_connector_pairs_them() {
        let llama = presets::lookup("llama-3.1-8b").unwrap(); // 8 KV heads
        let t = topo(2, 4, KvLayout::Hnd);
        assert_eq!(t.ratio(), 2);
        assert_eq!((0..4).map(|d| t.sources(&llama, d)).collect::<Vec<_>>(), [[0], [0], [1], [1]]);
        assert_eq!(t.readers(&llama, 1), [2, 3]);
        let t = topo(4, 1, KvLayout::Hnd);
        assert_eq!(t.ratio(), -4);
        assert_eq!(t.sources(&llama, 0), [0, 1, 2, 3]);
        let ds = presets::lookup("deepseek-v3").unwrap();
        let t = topo(2, 1, KvLayout::Hnd);
        assert_eq!((t.sources(&ds, 0), t.readers(&ds, 1)), (vec![0], vec![]), "MLA: one read");
    }

    #[test]
    fn hnd_slices_are_one_piece_and_nhd_slices_one_per_token() {
        let llama = presets::lookup("llama-3.1-8b").unwrap(); // 8 heads of 128 bf16: 256 B
                                                              // P1 -> D2, decode rank 1: heads 4..8 of prefill rank 0's 8.
        let c = topo(1, 2, KvLayout::Hnd).cut(&llama, 16, 0, 1).unwrap();
        assert_eq!((c.sender_block, c.receiver_block), (8 * 16 * 256, 4 * 16 * 256));
        assert_eq!(c.pieces, [Piece { sender: 4 * 16 * 256, receiver: 0, len: 4 * 16 * 256 }]);
        let c = topo(1, 2, KvLayout::Nhd).cut(&llama, 16, 0, 1).unwrap();
        assert_eq!(c.pieces.len(), 16);
        assert_eq!(c.pieces[3], Piece { sender: (3 * 8 + 4) * 256, receiver: 3 * 4 * 256, len: 4 * 256 });
        // P2 -> D1, prefill rank 1: its whole block into the second half of decode's.
        let c = topo(2, 1, KvLayout::Hnd).cut(&llama, 16, 1, 0).unwrap();
        assert_eq!(c.pieces, [Piece { sender: 0, receiver: 4 * 16 * 256, len: 4 * 16 * 256 }]);
        let c = topo(2, 1, KvLayout::Nhd).cut(&llama, 16, 1, 0).unwrap();
        assert_eq!(c.pieces[1], Piece { sender: 4 * 256, receiver: (8 + 4) * 256, len: 4 * 256 });
        // Equal TP: whole blocks, whatever the layout.
        let c = topo(2, 2, KvLayout::Nhd).cut(&llama, 16, 1, 1).unwrap();
        assert_eq!(c.pieces, [Piece { sender: 0, receiver: 0, len: 4 * 16 * 256 }]);
        // P2 -> D4, decode rank 3: heads 6..8, the second half of prefill rank 1's.
        let c = topo(2, 4, KvLayout::Hnd).cut(&llama, 16, 1, 3).unwrap();
        assert_eq!((c.moved, c.pieces[0].sender), (Heads { start: 6, count: 2 }, 2 * 16 * 256));
        assert_eq!(c.head_at(16 * 256 + 5 * 256), Some((7, 5)));
        assert!(topo(2, 4, KvLayout::Hnd)
            .cut(&llama, 16, 0, 3)
            .unwrap_err()
            .message
            .contains("reads from prefill rank 1, not 0"));
    }

    #[test]
    fn replicated_heads_and_mla() {
        // 8 KV heads, decode TP 16: each decode rank holds one head, kept by two.
        let llama = presets::lookup("llama-3.1-8b").unwrap();
        let c = topo(4, 16, KvLayout::Hnd).cut(&llama, 16, 1, 5).unwrap();
        assert_eq!((c.sender, c.receiver), (Heads { start: 2, count: 2 }, Heads { start: 2, count: 1 }));
        assert_eq!(c.pieces, [Piece { sender: 0, receiver: 0, len: 16 * 256 }]);
        let e = topo(16, 4, KvLayout::Hnd).validate(&llama).unwrap_err();
        assert!(e.message.contains("replicates the 8 KV heads"), "{e}");
        let ds = presets::lookup("deepseek-v3").unwrap();
        let c = topo(2, 1, KvLayout::Hnd).cut(&ds, 64, 0, 0).unwrap();
        assert_eq!(c.pieces, [Piece { sender: 0, receiver: 0, len: 64 * 576 * 2 }]);
        assert!(topo(2, 1, KvLayout::Nhd).validate(&ds).is_err());
        assert!(topo(3, 1, KvLayout::Hnd).validate(&llama).unwrap_err().message.contains("power of two"));
        assert!(topo(32, 1, KvLayout::Hnd).validate(&llama).is_err());
    }
}
