//! Requests of models whose layers do not all move alike: hybrid models under
//! vLLM's hybrid KV cache manager (a window's last blocks, a chunk's, a
//! state once) and DeepSeek-V3.2's indexer keys beside its latents. Their
//! messages differ in size, so each is listed: its key, length and place
//! on each side.
//!
//! Places follow vLLM's pools: per attention layer one region per tensor of
//! `pool` blocks, a request's blocks where its group's block table puts
//! them (each group its own table, as vLLM's KV cache groups have); per
//! state layer `STATE_SLOTS` pages of conv sub-projections then SSM state,
//! the request in one slot. Whole requests and layers tile the buffer.

use super::tp::Cut;
use super::{BlockTable, Granularity, Part, Side};
use crate::kv::{KvShape, LayerKind, StateBytes, TensorKind};
use std::sync::Arc;

/// State pages per state layer in a pool: a request's state is one page,
/// placed by the table among these (vLLM's pool holds one per running request).
pub const STATE_SLOTS: u32 = 4;

/// Each side's places, listed: (offset, bytes).
type SidePlaces = [Vec<(usize, usize)>; 2];

/// What `build` lists: the messages, each side's places, each message's place.
struct Listing {
    msgs: Vec<Msg>,
    places: SidePlaces,
    desc: Vec<[usize; 2]>,
}

/// One message: what it carries and where it lies on each side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msg {
    /// The layer's kind as it moves: its group.
    pub kind: LayerKind,
    pub layer: u32,
    pub part: Part,
    pub block: Option<u32>,
    pub len: usize,
    /// Offsets in the sender's and the receiver's buffer.
    pub at: [usize; 2],
    /// Where the message starts in its pattern: a turn's layer message
    /// continues the pattern of its tokens' positions.
    pub pattern_start: u64,
    /// Under different TP in NHD, the token row of the block's piece.
    pub token: Option<u16>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Irregular {
    pub msgs: Vec<Msg>,
    /// Where each message starts in the request's bytes taken in order,
    /// and (last) their total.
    pub starts: Vec<usize>,
    /// Bytes of each side's buffer the request spans (its pools, for blocks).
    pub buffer: usize,
    /// Every place a message of this geometry can sit on each side, as
    /// (offset, bytes): for blocks every block (or piece of one) of every
    /// tensor of the pool and every state region of every slot, as
    /// NixlConnector prepares its descriptor lists; otherwise the request's
    /// own messages.
    pub places: [Arc<Vec<(usize, usize)>>; 2],
    /// A fingerprint of each side's `places`, to find prepared lists by.
    pub places_digest: [u64; 2],
    /// Each message's place on the sender's and the receiver's side.
    pub desc: Vec<[usize; 2]>,
}

impl Irregular {
    fn new(
        msgs: Vec<Msg>,
        buffer: usize,
        places: [Vec<(usize, usize)>; 2],
        desc: Vec<[usize; 2]>,
    ) -> Irregular {
        let places_digest = [0, 1].map(|s| {
            let mut words = vec![places[s].len() as u64];
            words.extend(places[s].iter().flat_map(|p| [p.0 as u64, p.1 as u64]));
            crate::kv::pattern::seed_of(&words)
        });
        let places = places.map(Arc::new);
        let mut starts = Vec::with_capacity(msgs.len() + 1);
        let mut at = 0;
        for m in &msgs {
            starts.push(at);
            at += m.len;
        }
        starts.push(at);
        Irregular { msgs, starts, buffer, places, places_digest, desc }
    }

    pub fn total_bytes(&self) -> usize {
        *self.starts.last().unwrap_or(&0)
    }

    pub fn largest(&self) -> usize {
        self.msgs.iter().map(|m| m.len).max().unwrap_or(0)
    }

    /// The message holding byte `at` of the request taken in order.
    pub fn message_at(&self, at: usize) -> usize {
        self.starts.partition_point(|&s| s <= at).saturating_sub(1).min(self.msgs.len().saturating_sub(1))
    }
}

fn part_of(t: TensorKind) -> Part {
    match t {
        TensorKind::Key => Part::Key,
        TensorKind::Value => Part::Value,
        TensorKind::Latent => Part::Latent,
        TensorKind::Index => Part::Index,
    }
}

const CONV_PARTS: [Part; 3] = [Part::Conv0, Part::Conv1, Part::Conv2];

/// A group's own table: a random table drawn with a seed of its kind, so
/// that two groups' blocks of one request sit apart, as vLLM's groups' do.
fn group_table(table: BlockTable, kind: LayerKind) -> BlockTable {
    match table {
        BlockTable::Contiguous => table,
        BlockTable::Random { seed } => {
            let k = match kind {
                LayerKind::Full => 0,
                LayerKind::SlidingWindow { window } => 1 + window as u64,
                LayerKind::ChunkedLocal { chunk } => (1 << 32) + chunk as u64,
                LayerKind::State => 1 << 40,
            };
            BlockTable::Random { seed: crate::kv::pattern::seed_of(&[seed, k]) }
        }
    }
}

/// Which tokens a layout moves: `from..to` of KV that ends at `end` (what
/// each layer keeps is what it keeps at `end`), in a conversation's region
/// laid out for `region` tokens; `region` 0: a request alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub from: u32,
    pub to: u32,
    pub end: u32,
    pub region: u32,
}

impl Extent {
    /// A `prompt`-token request alone: the tokens prefill computed.
    pub fn request(shape: &KvShape, prompt: u32) -> Extent {
        let tokens = shape.moved_tokens(prompt);
        Extent { from: 0, to: tokens, end: tokens, region: 0 }
    }

    /// Tokens of layer `kind` this extent moves: from..to less what the
    /// layer no longer holds at `end` (its skipped whole blocks).
    fn tokens_of(&self, kind: LayerKind, block: u32) -> (u32, u32) {
        let from = self.from.max(kind.kept_from(self.end, block));
        (from, self.to.max(from))
    }
}

/// The messages of `extent` at `granularity`; blocks in pools of `pool`
/// blocks per tensor placed by `table` (a conversation's region: its own
/// blocks in order).
pub fn build(
    shape: &KvShape,
    extent: Extent,
    granularity: Granularity,
    table: BlockTable,
    pool: u32,
    tp: Option<&PairCut>,
) -> Irregular {
    let layers = shape.model.layers;
    let whole_layer = if shape.model.attention_is_mla() { Part::Latent } else { Part::KeyValue };
    let per_token: u64 = shape.attention_tensors().iter().map(|t| t.1).sum();
    let state = shape.state_bytes();
    let state_page = state.as_ref().map_or(0, |s| s.total() as usize);
    let mut msgs = Vec::new();
    let (mut places, mut desc): (SidePlaces, Vec<[usize; 2]>) = ([Vec::new(), Vec::new()], Vec::new());
    let mut at = 0usize;
    match granularity {
        Granularity::Request => {
            let len = shape.span_bytes(extent.from, extent.to, extent.end) as usize;
            msgs.push(Msg { len, ..of(LayerKind::Full, layers - 1) });
            at = len;
        }
        Granularity::Layer => {
            for l in 0..layers {
                let kind = shape.moving_kind(l);
                let len = shape.layer_span_bytes(l, extent.from, extent.to, extent.end) as usize;
                // A region keeps every layer's tokens in place: [layer][token].
                let (region_bytes, offset, pattern_start) = match (kind, extent.region) {
                    (_, 0) => (len, 0, 0),
                    (LayerKind::State, _) => (state_page, 0, 0),
                    (k, region) => {
                        let from = extent.tokens_of(k, shape.block_size).0 as u64 * per_token;
                        (region as usize * per_token as usize, from as usize, from)
                    }
                };
                if len > 0 {
                    // Nothing where a chunk has just begun.
                    let part = if kind == LayerKind::State { Part::State } else { whole_layer };
                    let place = at + offset;
                    msgs.push(Msg { part, len, at: [place, place], pattern_start, ..of(kind, l) });
                }
                at += region_bytes;
            }
        }
        Granularity::Block => {
            let mut out = Listing { msgs, places, desc };
            at = blocks(shape, extent, (table, pool), tp, &mut out);
            (msgs, places, desc) = (out.msgs, out.places, out.desc);
        }
    }
    if granularity != Granularity::Block {
        // The request's own messages are the places (as for a pool of one).
        places = [0, 1].map(|s| msgs.iter().map(|m| (m.at[s], m.len)).collect());
        desc = (0..msgs.len()).map(|i| [i, i]).collect();
    }
    Irregular::new(msgs, at, places, desc)
}

/// The blocks of `extent` (see `build`): each layer's pool regions in
/// order, a state layer's slots; the messages, each side's places and
/// each message's place are added to; returns the bytes a side spans.
fn blocks(
    shape: &KvShape,
    extent: Extent,
    (table, pool): (BlockTable, u32),
    tp: Option<&PairCut>,
    out: &mut Listing,
) -> usize {
    let layers = shape.model.layers;
    let state = shape.state_bytes();
    let state_page = state.as_ref().map_or(0, |s| s.total() as usize);
    let block = shape.block_size;
    let (span, all) = match extent.region {
        // A region: its blocks in order; `from` and `to` on block boundaries.
        0 => (false, shape.blocks_for(extent.end)),
        region => (true, shape.blocks_for(region)),
    };
    let pool = pool.max(all);
    let tensors = shape.attention_tensors();
    let mut ids_of = std::collections::HashMap::new();
    let mut side_at = [0usize; 2];
    for l in 0..layers {
        let kind = shape.moving_kind(l);
        let ids = ids_of.entry(kind).or_insert_with(|| {
            let t = if span { BlockTable::Contiguous } else { group_table(table, kind) };
            match kind {
                LayerKind::State => {
                    [t.ids(Side::Sender, 1, STATE_SLOTS), t.ids(Side::Receiver, 1, STATE_SLOTS)]
                }
                _ => [t.ids(Side::Sender, all, pool), t.ids(Side::Receiver, all, pool)],
            }
        });
        let slot = |k: usize| [ids[0][k] as usize, ids[1][k] as usize];
        if kind == LayerKind::State {
            // One page per slot: each conv sub-projection and the SSM its own region of it.
            let d = state.as_ref().expect("a state layer has a state shape");
            let pieces = state_pieces(d, tp);
            let pages = [tp.map_or(state_page, |t| t.sender_state.total() as usize), state_page];
            let part = |r: usize| if r < d.conv.len() { CONV_PARTS[r] } else { Part::Ssm };
            let region = Region { slots: STATE_SLOTS as usize, stride: pages, pieces: &pieces };
            region.list(out, &mut side_at, &[slot(0)], |_, r| Msg { part: part(r), ..of(kind, l) });
            continue;
        }
        let (lo, hi) = extent.tokens_of(kind, block);
        let blocks: Vec<u32> = (lo / block..hi.div_ceil(block)).collect();
        let moved: Vec<[usize; 2]> = blocks.iter().map(|&b| slot(b as usize)).collect();
        for &(t, per_token) in &tensors {
            let block_bytes = (block as u64 * per_token) as usize;
            // A block's pieces under different TP (the cut's), or the block.
            let (stride, pieces): ([usize; 2], Vec<([usize; 2], usize)>) = match tp {
                Some(t) => (
                    [t.cut.sender_block, t.cut.receiver_block],
                    t.cut.pieces.iter().map(|p| ([p.sender, p.receiver], p.len)).collect(),
                ),
                None => ([block_bytes; 2], vec![([0, 0], block_bytes)]),
            };
            let n = pieces.len();
            let region = Region { slots: pool as usize, stride, pieces: &pieces };
            region.list(out, &mut side_at, &moved, |i, k| Msg {
                part: part_of(t),
                block: Some(blocks[i]),
                token: (n > 1).then_some(k as u16),
                ..of(kind, l)
            });
        }
    }
    side_at[0].max(side_at[1])
}

/// A message of layer `l` of `kind`, its part, place and size to be set.
fn of(kind: LayerKind, layer: u32) -> Msg {
    Msg { kind, layer, part: Part::Whole, block: None, len: 0, at: [0, 0], pattern_start: 0, token: None }
}

/// One region of a layer's pool on each side: `slots` blocks or pages,
/// `stride` bytes apart, each cut into `pieces` (offset on each side, bytes).
struct Region<'a> {
    slots: usize,
    stride: [usize; 2],
    pieces: &'a [([usize; 2], usize)],
}

impl Region<'_> {
    /// Lists every place of the region, and a message per piece of each
    /// slot in `moved` (its slot on each side), named by `name(item, piece)`;
    /// moves `side_at` past the region.
    fn list(
        &self,
        out: &mut Listing,
        side_at: &mut [usize; 2],
        moved: &[[usize; 2]],
        name: impl Fn(usize, usize) -> Msg,
    ) {
        let (first, n) = (out.places[0].len(), self.pieces.len());
        for (s, place) in out.places.iter_mut().enumerate() {
            for slot in 0..self.slots {
                place.extend(
                    self.pieces.iter().map(|(o, len)| (side_at[s] + slot * self.stride[s] + o[s], *len)),
                );
            }
        }
        for (i, slots) in moved.iter().enumerate() {
            for (k, (o, len)) in self.pieces.iter().enumerate() {
                out.desc.push([0, 1].map(|s| first + slots[s] * n + k));
                let at = [0, 1].map(|s| side_at[s] + slots[s] * self.stride[s] + o[s]);
                out.msgs.push(Msg { len: *len, at, ..name(i, k) });
            }
        }
        for (s, a) in side_at.iter_mut().enumerate() {
            *a += self.slots * self.stride[s];
        }
    }
}

/// Prefill and decode at different TP (tp.rs): this pair's cut of every
/// attention block, and the prefill rank's state, of which decode reads its
/// slice (D >= P) or into which it reads the whole (P > D; `source` is
/// this prefill rank among decode's sources).
#[derive(Clone, Debug)]
pub struct PairCut {
    pub cut: Cut,
    pub ratio: i64,
    pub source: usize,
    pub sender_state: StateBytes,
}

/// Each state region of a page as (offset on each side, bytes): alike
/// without a cut; under different TP as NixlConnector's Mamba transfer
/// reads them (base_worker.py `_build_mamba_remote`, and for P > D its
/// local handles split per source rank).
fn state_pieces(decode: &StateBytes, tp: Option<&PairCut>) -> Vec<([usize; 2], usize)> {
    let regions = decode.regions();
    let Some(t) = tp else {
        return regions.iter().map(|&(o, len)| ([o as usize; 2], len as usize)).collect();
    };
    let sender = t.sender_state.regions();
    regions
        .iter()
        .zip(&sender)
        .map(|(&(d_off, d_len), &(p_off, p_len))| {
            let (d_off, d_len, p_off, p_len) =
                (d_off as usize, d_len as usize, p_off as usize, p_len as usize);
            match t.ratio {
                // Decode's slice of the prefill rank's region.
                r if r >= 1 => {
                    let local = t.cut.decode_rank as usize % r as usize;
                    ([p_off + local * d_len, d_off], d_len)
                }
                // The prefill rank's whole region into its part of decode's.
                _ => ([p_off, d_off + t.source * p_len], p_len),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::presets::lookup;

    fn shape(model: &str) -> KvShape {
        let m = lookup(model).unwrap();
        let block = crate::kv::vllm_block_size(&m, 1, None).unwrap();
        KvShape::new(m, 1, block).unwrap()
    }

    /// No two messages overlap on either side, and each lies in the buffer.
    fn apart(x: &Irregular) {
        for side in 0..2 {
            let mut spans: Vec<(usize, usize)> = x.msgs.iter().map(|m| (m.at[side], m.len)).collect();
            spans.sort_unstable();
            for w in spans.windows(2) {
                assert!(w[0].0 + w[0].1 <= w[1].0, "overlap on side {side}: {w:?}");
            }
            let last = spans.last().unwrap();
            assert!(last.0 + last.1 <= x.buffer);
            // Each message is at its descriptor's place.
            for (m, d) in x.msgs.iter().zip(&x.desc) {
                assert_eq!(x.places[side][d[side]], (m.at[side], m.len));
            }
        }
    }

    #[test]
    fn every_granularity_moves_the_same_bytes() {
        for model in ["gpt-oss-120b", "qwen3-next-80b-a3b", "deepseek-v3.2", "llama-4-scout"] {
            let s = shape(model);
            for tokens in [1, 100, 1000, 9000] {
                for g in Granularity::ALL {
                    let want = match g {
                        Granularity::Block => s.request_block_bytes(tokens),
                        _ => s.request_bytes(tokens),
                    } as usize;
                    for table in [BlockTable::Contiguous, BlockTable::Random { seed: 5 }] {
                        let x =
                            build(&s, Extent::request(&s, tokens), g, table, s.blocks_for(tokens) + 3, None);
                        assert_eq!(x.total_bytes(), want, "{model} {tokens} {g} {table}");
                        apart(&x);
                    }
                }
            }
        }
    }

    #[test]
    fn a_window_moves_its_last_blocks_and_a_state_its_regions() {
        let s = shape("gpt-oss-120b");
        let x = build(&s, Extent::request(&s, 1000), Granularity::Block, BlockTable::Contiguous, 17, None);
        // Layer 0 slides over 128 tokens in blocks of 64: blocks 13..16 of 16
        // (skip 873 tokens = 13 blocks), K then V; layer 1 moves all 16.
        let l0: Vec<_> = x.msgs.iter().filter(|m| m.layer == 0).map(|m| (m.part, m.block.unwrap())).collect();
        assert_eq!(
            l0,
            vec![
                (Part::Key, 13),
                (Part::Key, 14),
                (Part::Key, 15),
                (Part::Value, 13),
                (Part::Value, 14),
                (Part::Value, 15)
            ]
        );
        assert_eq!(x.msgs.iter().filter(|m| m.layer == 1).count(), 32);
        let q = shape("qwen3-next-80b-a3b");
        let y = build(&q, Extent::request(&q, 1000), Granularity::Block, BlockTable::Contiguous, 3, None);
        let l0: Vec<_> = y.msgs.iter().filter(|m| m.layer == 0).map(|m| (m.part, m.len)).collect();
        assert_eq!(
            l0,
            vec![(Part::Conv0, 12_288), (Part::Conv1, 12_288), (Part::Conv2, 24_576), (Part::Ssm, 1_048_576)]
        );
    }
}
