//! Where a request's KV blocks sit in each side's KV cache, and the
//! descriptors that move them (block granularity, as NixlConnector).
//!
//! vLLM keeps each layer's KV cache as [K/V, pool blocks, block]: block b
//! of a request is block `table[b]` of the pool, the same for every layer
//! and for K and V. A fresh server hands out consecutive blocks; one that
//! has served a while hands out whatever its free list holds. Each side has
//! its own pool and table. NIXL merges descriptors that are adjacent in
//! memory on both sides (nixlAgent::makeXferReq), so a contiguous table
//! moves a layer's K and V in a run each, and a fragmented one block by block.

use crate::error::{Error, Result};
use crate::kv::pattern::seed_of;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Which side's buffer an offset is in: each side has its own block table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Sender,
    Receiver,
}

/// How a request's blocks are drawn from a side's pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum BlockTable {
    /// The first blocks of the pool, in order: a fresh server.
    #[default]
    Contiguous,
    /// Distinct blocks at seeded random places of the pool, in random
    /// order, as a long-running server's free list hands them out. Each
    /// side draws its own.
    Random { seed: u64 },
}

impl BlockTable {
    /// "contiguous", "random" (seed 1) or "random:SEED".
    pub fn parse(s: &str) -> Result<BlockTable> {
        let s = s.trim();
        match s.split_once(':') {
            None if s == "contiguous" => Ok(BlockTable::Contiguous),
            None if s == "random" => Ok(BlockTable::Random { seed: 1 }),
            Some(("random", seed)) => {
                seed.trim().parse().map(|seed| BlockTable::Random { seed }).map_err(|_| {
                    Error::usage(format!("--block-table random:SEED wants a number, got '{seed}'"))
                })
            }
            _ => Err(Error::usage(format!(
                "unknown --block-table '{s}': give contiguous, random or random:SEED"
            ))),
        }
    }

    /// The pool blocks holding blocks 0..`blocks` of a request on `side`.
    pub fn ids(&self, side: Side, blocks: u32, pool: u32) -> Vec<u32> {
        assert!(blocks <= pool, "a request of {blocks} blocks in a pool of {pool}");
        match *self {
            BlockTable::Contiguous => (0..blocks).collect(),
            BlockTable::Random { seed } => {
                // A partial Fisher-Yates shuffle: the first `blocks` of a
                // seeded permutation of the pool.
                let mut pool_ids: Vec<u32> = (0..pool).collect();
                let mut state = seed_of(&[seed, side as u64, blocks as u64, pool as u64]);
                for b in 0..blocks as usize {
                    state = seed_of(&[state]);
                    let pick = b + (state % (pool as u64 - b as u64)) as usize;
                    pool_ids.swap(b, pick);
                }
                pool_ids.truncate(blocks as usize);
                pool_ids
            }
        }
    }
}

impl fmt::Display for BlockTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockTable::Contiguous => f.write_str("contiguous"),
            BlockTable::Random { seed } => write!(f, "random:{seed}"),
        }
    }
}

/// One operation of a request: `count` messages from `first` on, `len`
/// bytes at `sender` in the sender's buffer and `receiver` in the receiver's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub first: usize,
    pub count: usize,
    pub sender: usize,
    pub receiver: usize,
    pub len: usize,
}

impl Descriptor {
    pub fn offset(&self, side: Side) -> usize {
        match side {
            Side::Sender => self.sender,
            Side::Receiver => self.receiver,
        }
    }
}

/// The descriptors of messages given by (sender offset, receiver offset,
/// length), in order; with `coalesce_within` Some(run), each merged into
/// the one before when it follows it in memory on both sides and both lie
/// in the same run (`run(index)`: a layer's, as a layer moves once computed).
pub fn descriptors(
    messages: impl Iterator<Item = (usize, usize, usize)>,
    coalesce_within: Option<&dyn Fn(usize) -> usize>,
) -> Vec<Descriptor> {
    let mut out: Vec<Descriptor> = Vec::new();
    for (i, (sender, receiver, len)) in messages.enumerate() {
        if let Some(d) = out.last_mut().filter(|d| {
            coalesce_within.is_some_and(|run| run(d.first) == run(i))
                && d.sender + d.len == sender
                && d.receiver + d.len == receiver
        }) {
            d.count += 1;
            d.len += len;
            continue;
        }
        out.push(Descriptor { first: i, count: 1, sender, receiver, len });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_parse_and_name_themselves() {
        assert_eq!(BlockTable::parse("contiguous").unwrap(), BlockTable::Contiguous);
        assert_eq!(BlockTable::parse("random").unwrap(), BlockTable::Random { seed: 1 });
        assert_eq!(BlockTable::parse("random:42").unwrap().to_string(), "random:42");
        for bad in ["", "random:", "random:x", "sorted", "contiguous:3"] {
            assert!(BlockTable::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn random_tables_are_distinct_blocks_of_the_pool_reproducible_per_side() {
        let t = BlockTable::Random { seed: 7 };
        let s = t.ids(Side::Sender, 100, 400);
        let mut sorted = s.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 100, "distinct");
        assert!(s.iter().all(|b| *b < 400));
        assert_eq!(s, t.ids(Side::Sender, 100, 400), "seeded");
        assert_ne!(s, t.ids(Side::Receiver, 100, 400), "each side its own");
        assert_ne!(s, BlockTable::Random { seed: 8 }.ids(Side::Sender, 100, 400));
        assert_eq!(BlockTable::Contiguous.ids(Side::Receiver, 3, 9), vec![0, 1, 2]);
        // A full pool is a permutation of it.
        let mut all = t.ids(Side::Sender, 50, 50);
        all.sort_unstable();
        assert_eq!(all, (0..50).collect::<Vec<_>>());
    }

    #[test]
    fn descriptors_merge_only_what_is_adjacent_on_both_sides() {
        // Three 10-byte messages adjacent on both sides, then one adjacent
        // on the sender only, then one adjacent on both again.
        let msgs = [(0, 100, 10), (10, 110, 10), (20, 120, 10), (30, 200, 10), (40, 210, 10)];
        let d = descriptors(msgs.iter().copied(), Some(&|_| 0));
        assert_eq!(
            d,
            vec![
                Descriptor { first: 0, count: 3, sender: 0, receiver: 100, len: 30 },
                Descriptor { first: 3, count: 2, sender: 30, receiver: 200, len: 20 },
            ]
        );
        // Runs of two messages (layers): no descriptor crosses from one to the next.
        let in_twos = descriptors(msgs.iter().copied(), Some(&|i| i / 2));
        assert_eq!(
            in_twos.iter().map(|d| (d.first, d.count)).collect::<Vec<_>>(),
            vec![(0, 2), (2, 1), (3, 1), (4, 1)]
        );
        let each = descriptors(msgs.iter().copied(), None);
        assert_eq!(each.len(), 5);
        assert!(each.iter().enumerate().all(|(i, d)| d.first == i && d.count == 1 && d.len == 10));
    }
}
