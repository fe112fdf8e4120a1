//! From a KV shape and a workload to the transfers of a run: every sweep
//! point (prompt length x granularity) is a request cut into messages of one
//! size, each with a stable key that both sides derive alike. Whole requests
//! and layers tile the buffer in order; blocks sit where each side's block
//! table puts them in its KV cache pool (blocks.rs).

pub mod blocks;
pub mod gate;
pub mod hybrid;
pub mod prefill;
pub mod tp;
pub mod turns;

use crate::error::{Error, Result};
use crate::kv::{pattern, Attention, KvShape};
use crate::schedule::conversation::MultiTurn;
use crate::schedule::residency::OnFull;
use crate::schedule::{Arrival, Arrivals, Bound};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

pub use blocks::{BlockTable, Descriptor, Side};
pub use prefill::{Overlap, Prefill};
pub use tp::{KvLayout, TpTopology};

/// How a request's KV is cut into messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    /// One contiguous message per request (Mooncake prefix bench, LMCache-like bulk).
    Request,
    /// One message per (request, layer), K and V together (vLLM P2pNcclConnector).
    Layer,
    /// One message per (layer, K/V, block) (vLLM NixlConnector descriptors).
    Block,
}

impl Granularity {
    pub const ALL: [Granularity; 3] = [Granularity::Request, Granularity::Layer, Granularity::Block];

    pub fn parse_list(s: &str) -> Result<Vec<Granularity>> {
        let mut out = Vec::new();
        for item in crate::units::list_items(s, "the list of granularities")? {
            let g = if item == "all" { Granularity::ALL.to_vec() } else { vec![Granularity::parse(item)?] };
            for g in g {
                if !out.contains(&g) {
                    out.push(g);
                }
            }
        }
        Ok(out)
    }
}

crate::words::named_by_words!(Granularity, "granularity", { Request => "request" | "req", Layer => "layer", Block => "block" });

/// Which part of a layer a message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(u8)]
pub enum Part {
    /// Every layer, K and V: a whole request.
    Whole = 0,
    /// K and V of one layer together.
    KeyValue = 1,
    Key = 2,
    Value = 3,
    /// The MLA latent of one layer.
    Latent = 4,
    /// DeepSeek-V3.2's indexer keys of one layer.
    Index = 5,
    /// A state layer's conv sub-projections (x, B, C or q, k, v) and SSM state.
    Conv0 = 6,
    Conv1 = 7,
    Conv2 = 8,
    Ssm = 9,
    /// A state layer's whole state.
    State = 10,
}

impl Part {
    fn from_u8(v: u8) -> Option<Part> {
        Some(match v {
            0 => Part::Whole,
            1 => Part::KeyValue,
            2 => Part::Key,
            3 => Part::Value,
            4 => Part::Latent,
            5 => Part::Index,
            6 => Part::Conv0,
            7 => Part::Conv1,
            8 => Part::Conv2,
            9 => Part::Ssm,
            10 => Part::State,
            _ => return None,
        })
    }
}

/// The stable identity of one transfer: (request, layer, K/V, block).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TransferKey {
    pub request: u64,
    pub layer: Option<u32>,
    pub part: Part,
    pub block: Option<u32>,
    /// The token row of a block's slice cut into one piece per token (NHD
    /// under different TP, see tp.rs).
    pub token: Option<u16>,
}

impl TransferKey {
    pub const WIRE_LEN: usize = 20;
    const NONE: u32 = u32::MAX;

    /// Seed of the integrity pattern of this message.
    pub fn seed(&self) -> u64 {
        let mut parts = vec![
            self.request,
            self.layer.unwrap_or(Self::NONE) as u64,
            self.part as u64,
            self.block.unwrap_or(Self::NONE) as u64,
        ];
        parts.extend(self.token.map(u64::from));
        pattern::seed_of(&parts)
    }

    pub fn to_wire(&self) -> [u8; Self::WIRE_LEN] {
        let mut b = [0u8; Self::WIRE_LEN];
        b[0..8].copy_from_slice(&self.request.to_le_bytes());
        b[8..12].copy_from_slice(&self.layer.unwrap_or(Self::NONE).to_le_bytes());
        b[12..16].copy_from_slice(&self.block.unwrap_or(Self::NONE).to_le_bytes());
        b[16] = self.part as u8;
        b[18..20].copy_from_slice(&self.token.unwrap_or(u16::MAX).to_le_bytes());
        b
    }

    /// None when the bytes do not spell a key at all.
    pub fn from_wire(b: &[u8; Self::WIRE_LEN]) -> Option<TransferKey> {
        let opt = |v: u32| (v != Self::NONE).then_some(v);
        Some(TransferKey {
            request: u64::from_le_bytes(b[0..8].try_into().unwrap()),
            layer: opt(u32::from_le_bytes(b[8..12].try_into().unwrap())),
            block: opt(u32::from_le_bytes(b[12..16].try_into().unwrap())),
            part: Part::from_u8(b[16]).filter(|_| b[17] == 0)?,
            token: Some(u16::from_le_bytes([b[18], b[19]])).filter(|t| *t != u16::MAX),
        })
    }
}

impl fmt::Display for TransferKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.request)?;
        if let Some(l) = self.layer {
            write!(f, "/L{l}")?;
        }
        match self.part {
            Part::Whole | Part::KeyValue => {}
            Part::Key => f.write_str("/K")?,
            Part::Value => f.write_str("/V")?,
            Part::Latent => f.write_str("/latent")?,
            Part::Index => f.write_str("/index")?,
            Part::Conv0 => f.write_str("/conv0")?,
            Part::Conv1 => f.write_str("/conv1")?,
            Part::Conv2 => f.write_str("/conv2")?,
            Part::Ssm => f.write_str("/ssm")?,
            Part::State => f.write_str("/state")?,
        }
        if let Some(b) = self.block {
            write!(f, "/b{b}")?;
        }
        if let Some(t) = self.token {
            write!(f, "/t{t}")?;
        }
        Ok(())
    }
}

/// One message of a request: where it lies in the request buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    pub index: usize,
    pub offset: usize,
    pub len: usize,
}

/// How one request of one sweep point is cut into messages. Messages all have
/// the same size and are numbered layer by layer, K before V, block by
/// block. They tile the request buffer in that order, except blocks placed
/// in a pool: block b of a (layer, K/V) tensor is then pool block
/// `table[b]` of that tensor, each side by its own table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestLayout {
    pub granularity: Granularity,
    pub tokens: u32,
    pub layers: u32,
    pub tensors_per_layer: u32,
    pub mla: bool,
    /// Blocks per tensor (block granularity only; the last may be partly filled).
    pub blocks: u32,
    pub message_count: usize,
    pub message_bytes: usize,
    /// Blocks per (layer, K/V) tensor of each side's KV cache pool; 0 where
    /// the messages tile the buffer (whole requests, layers).
    #[serde(default)]
    pub pool_blocks: u32,
    #[serde(default)]
    pub table: BlockTable,
    /// Adjacent descriptors merge into one operation (NIXL's way).
    #[serde(default)]
    pub coalesce: bool,
    /// Each side's block ids, drawn once: (sender, receiver).
    #[serde(skip)]
    ids: Option<Arc<(Vec<u32>, Vec<u32>)>>,
    /// A turn of a conversation (`span`): the tokens its region is laid out
    /// for, and where the messages start in it (a token for request and
    /// layer messages, a block for blocks); 0 for a request alone.
    #[serde(default)]
    pub region_tokens: u32,
    #[serde(default)]
    pub first: u32,
    /// A turn's partly filled last block: the tokens it holds (0 where it
    /// is full, or not a turn's block). Its pattern follows that count, so
    /// a block left from an earlier turn, when it held fewer tokens,
    /// differs from the one the turn sends.
    #[serde(default)]
    pub last_fill: u32,
    /// Where a conversation's region starts in each side's buffer, when
    /// conversations under arrivals each hold one; 0 otherwise.
    #[serde(default)]
    pub base: usize,
    /// Prefill and decode at different TP (tp.rs): each block moves as
    /// this pair's pieces of it, from and into blocks of each side's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<Box<tp::Cut>>,
    /// A model whose layers do not all move alike (hybrid.rs): every
    /// message listed, of its own size; `message_bytes` is the largest.
    #[serde(skip)]
    irregular: Option<Arc<hybrid::Irregular>>,
}

impl RequestLayout {
    pub fn new(shape: &KvShape, tokens: u32, granularity: Granularity) -> RequestLayout {
        if !shape.is_uniform() {
            let pool = shape.blocks_for(shape.moved_tokens(tokens));
            return RequestLayout::irregular(
                shape,
                tokens,
                granularity,
                BlockTable::Contiguous,
                pool,
                false,
                Irregular::Request,
            );
        }
        let layers = shape.model.layers;
        let tensors = shape.tensors_per_layer();
        let blocks = shape.blocks_for(tokens);
        let (count, bytes) = match granularity {
            Granularity::Request => (1u64, tokens as u64 * shape.bytes_per_token()),
            Granularity::Layer => (layers as u64, tokens as u64 * shape.layer_bytes_per_token()),
            // vLLM moves whole blocks: a partly filled last block travels in full.
            Granularity::Block => (layers as u64 * tensors as u64 * blocks as u64, shape.block_bytes()),
        };
        RequestLayout::uniform(shape, tokens, granularity, count as usize, bytes as usize)
    }

    /// `count` messages of `bytes` tiling a buffer, nothing else set.
    fn uniform(
        shape: &KvShape,
        tokens: u32,
        granularity: Granularity,
        count: usize,
        bytes: usize,
    ) -> RequestLayout {
        let blocks = shape.blocks_for(tokens);
        RequestLayout {
            granularity,
            tokens,
            layers: shape.model.layers,
            tensors_per_layer: shape.tensors_per_layer(),
            mla: matches!(shape.model.attention, Attention::Mla { .. }),
            blocks: if granularity == Granularity::Block { blocks } else { 0 },
            message_count: count,
            message_bytes: bytes,
            pool_blocks: 0,
            table: BlockTable::Contiguous,
            coalesce: false,
            ids: None,
            region_tokens: 0,
            first: 0,
            last_fill: 0,
            base: 0,
            cut: None,
            irregular: None,
        }
    }

    fn irregular(
        shape: &KvShape,
        tokens: u32,
        granularity: Granularity,
        table: BlockTable,
        pool_blocks: u32,
        coalesce: bool,
        of: Irregular,
    ) -> RequestLayout {
        let (extent, pair) = match of {
            Irregular::Request => (hybrid::Extent::request(shape, tokens), None),
            Irregular::Span(e) => (e, None),
            Irregular::Pair(p) => (hybrid::Extent::request(shape, tokens), Some(p)),
        };
        let x = hybrid::build(shape, extent, granularity, table, pool_blocks, pair.as_ref());
        let block = granularity == Granularity::Block;
        RequestLayout {
            tensors_per_layer: shape.attention_tensors().len() as u32,
            blocks: if block { shape.blocks_for(shape.moved_tokens(tokens)) } else { 0 },
            message_count: x.msgs.len(),
            message_bytes: x.largest(),
            pool_blocks: if block { pool_blocks } else { 0 },
            table,
            coalesce,
            irregular: Some(Arc::new(x)),
            cut: pair.map(|p| Box::new(p.cut)),
            ..RequestLayout::uniform(shape, tokens, granularity, 0, 0)
        }
    }

    /// A hybrid model's request between one pair of a P x D run: each
    /// attention block in the pair's pieces, its state slice.
    fn irregular_pair(shape: &KvShape, tokens: u32, plan: &Plan, pair: hybrid::PairCut) -> RequestLayout {
        let pool = plan.pool();
        RequestLayout::irregular(
            shape,
            tokens,
            Granularity::Block,
            plan.block_table,
            pool,
            plan.coalesce,
            Irregular::Pair(pair),
        )
    }

    /// Whether messages differ in size (a hybrid model, an indexer cache).
    pub fn is_irregular(&self) -> bool {
        self.irregular.is_some()
    }

    /// Bytes of message `index`.
    pub fn message_len(&self, index: usize) -> usize {
        match &self.irregular {
            Some(x) => x.msgs[index].len,
            None => self.message_bytes,
        }
    }

    /// Where message `index` starts in the request's bytes taken in order.
    pub fn message_start(&self, index: usize) -> usize {
        match &self.irregular {
            Some(x) => x.starts[index],
            None => index * self.message_bytes,
        }
    }

    /// The message holding byte `at` of the request taken in order.
    pub fn message_at(&self, at: usize) -> usize {
        match &self.irregular {
            Some(x) => x.message_at(at),
            None => at / self.message_bytes.max(1),
        }
    }

    /// Where byte `at` of the request (its messages in order) lies in `side`'s buffer.
    pub fn byte_place(&self, side: Side, at: usize) -> usize {
        let i = self.message_at(at);
        self.slot(side, i).offset + (at - self.message_start(i))
    }

    /// The test fault `misplaced-state`: (from, to, len) in the sender's
    /// buffer that put the next message's bytes in the first state
    /// region's place (or the first windowed or chunked block's); None for
    /// a model without such layers.
    pub fn misplaced_state(&self) -> Option<(usize, usize, usize)> {
        let x = self.irregular.as_ref()?;
        let i = x.msgs.iter().position(|m| m.kind == crate::kv::LayerKind::State);
        let i = i.or_else(|| x.msgs.iter().position(|m| m.kind != crate::kv::LayerKind::Full))?;
        let next = x.msgs.get(i + 1).or_else(|| i.checked_sub(1).map(|p| &x.msgs[p]))?;
        let to = self.slot(Side::Sender, i);
        Some((self.base + next.at[0], to.offset, to.len.min(next.len)))
    }

    /// The layer whose compute must end before message `index` may move.
    pub fn layer_of(&self, index: usize) -> usize {
        if let Some(x) = &self.irregular {
            return x.msgs[index].layer as usize;
        }
        match self.granularity {
            Granularity::Request => self.layers as usize - 1,
            Granularity::Layer => index,
            Granularity::Block => {
                index / self.pieces() / (self.tensors_per_layer as usize * self.blocks as usize)
            }
        }
    }

    /// Blocks moved as one pair of a P x D topology cuts them: one message
    /// per piece of each (layer, K/V) block.
    pub fn with_cut(mut self, cut: tp::Cut) -> RequestLayout {
        debug_assert_eq!(self.granularity, Granularity::Block);
        self.message_count =
            self.layers as usize * self.tensors_per_layer as usize * self.blocks as usize * cut.pieces.len();
        self.message_bytes = cut.pieces[0].len;
        self.cut = Some(Box::new(cut));
        self
    }

    /// The test fault `shift-head`: (from, to, len) in the sender's buffer
    /// that put the head beside message 0's first head in its place, as a
    /// decode rank reading one head off would get it; None without heads.
    pub fn neighbour_head(&self) -> Option<(usize, usize, usize)> {
        if self.irregular.is_some() {
            return None;
        }
        let c = self.cut.as_ref()?;
        let step = c.head_step()?;
        let at = self.slot(Side::Sender, 0).offset;
        let block_end = at - c.pieces[0].sender + c.sender_block;
        let len = c.head_bytes.min(self.message_bytes);
        let from = if at + step + len <= block_end { at + step } else { at.checked_sub(step)? };
        Some((from, at, len))
    }

    /// Messages per block of a tensor: a cut's pieces, or the block.
    fn pieces(&self) -> usize {
        self.cut.as_ref().map_or(1, |c| c.pieces.len())
    }

    /// Bytes of one (layer, K/V) block in `side`'s pool.
    fn block_bytes(&self, side: Side) -> usize {
        match (&self.cut, side) {
            (Some(c), Side::Sender) => c.sender_block,
            (Some(c), Side::Receiver) => c.receiver_block,
            (None, _) => self.message_bytes,
        }
    }

    /// Tokens `from..to` of a conversation whose KV region is laid out for
    /// `region_tokens` (both sides alike), so that every turn's messages
    /// land where that turn's tokens belong: blocks in a pool of the
    /// region's blocks per (layer, K/V); layer messages in a region of
    /// [layer][token]; a request message in one of [token][layer]. `from`
    /// (and `to`, for blocks) fall on block boundaries. Keys and patterns
    /// follow the position, not the turn: any turn that moves a byte
    /// writes the same value there.
    pub fn span(
        shape: &KvShape,
        granularity: Granularity,
        from: u32,
        to: u32,
        region_tokens: u32,
    ) -> RequestLayout {
        let tokens = to - from;
        let mut l = match granularity {
            Granularity::Block => {
                let region_blocks = shape.blocks_for(region_tokens);
                RequestLayout::in_pool(shape, tokens, BlockTable::Contiguous, region_blocks, true)
            }
            g => RequestLayout::new(shape, tokens, g),
        };
        l.region_tokens = region_tokens;
        // A contiguous table needs no drawn ids (see `block_id`): conversations hold many layouts.
        l.ids = None;
        l.first = match granularity {
            Granularity::Block => from / shape.block_size,
            _ => from,
        };
        l
    }

    /// `span` of KV that ends at token `end` (`filled_to`). A hybrid
    /// model's layers move what each still holds at `end`: a window's
    /// blocks, the current chunk's.
    pub fn span_to(
        shape: &KvShape,
        granularity: Granularity,
        from: u32,
        to: u32,
        region_tokens: u32,
        end: u32,
    ) -> RequestLayout {
        if shape.is_uniform() {
            return RequestLayout::span(shape, granularity, from, to, region_tokens)
                .filled_to(shape.block_size, end);
        }
        let block = shape.block_size;
        let extent = hybrid::Extent { from, to, end, region: region_tokens };
        let region_blocks = shape.blocks_for(region_tokens);
        let mut l = RequestLayout::irregular(
            shape,
            to - from,
            granularity,
            BlockTable::Contiguous,
            region_blocks,
            true,
            Irregular::Span(extent),
        );
        l.region_tokens = region_tokens;
        l.first = if granularity == Granularity::Block { from / block } else { from };
        if granularity == Granularity::Block {
            l.blocks = to.div_ceil(block) - from / block;
            let fill = end % block;
            // The block that holds token end - 1 follows how full it is.
            l.last_fill = if end > 0 && (from..to).contains(&(end - 1)) { fill } else { 0 };
        }
        l
    }

    /// A block span whose KV ends at token `end` inside its last block:
    /// that block's pattern follows how full it is (`last_fill`).
    pub fn filled_to(mut self, block_size: u32, end: u32) -> RequestLayout {
        if self.granularity == Granularity::Block && self.blocks > 0 {
            let last_start = (self.first + self.blocks - 1) * block_size;
            let fill = end.saturating_sub(last_start);
            self.last_fill = if fill < block_size { fill } else { 0 };
        }
        self
    }

    /// Seed of message `index`'s pattern: its key's, and for a turn's
    /// partly filled last block also how many tokens it holds.
    pub fn seed(&self, request: u64, index: usize) -> u64 {
        let seed = self.key(request, index).seed();
        // Under different TP, which heads a piece holds: a piece read from the wrong ones differs.
        let seed = match &self.cut {
            Some(c) => pattern::seed_of(&[seed, c.moved.start as u64, c.moved.count as u64]),
            None => seed,
        };
        if let Some(m) = self.irregular.as_ref().map(|x| &x.msgs[index]) {
            // A turn's partly filled last block.
            let last = (self.first + self.blocks).saturating_sub(1);
            return match (self.last_fill, m.block) {
                (0, _) | (_, None) => seed,
                (fill, Some(b)) if b == last => pattern::seed_of(&[seed, fill as u64]),
                _ => seed,
            };
        }
        let blocks = self.blocks as usize;
        match self.last_fill {
            0 => seed,
            fill if (index / self.pieces()) % blocks == blocks - 1 => pattern::seed_of(&[seed, fill as u64]),
            _ => seed,
        }
    }

    /// Where in its pattern message `index` starts: a turn's layer or
    /// request message continues the pattern of its tokens' positions.
    pub fn pattern_start(&self, index: usize) -> u64 {
        if let Some(x) = &self.irregular {
            return x.msgs[index].pattern_start;
        }
        match (self.region_tokens, self.granularity) {
            (0, _) | (_, Granularity::Block) => 0,
            _ => self.first as u64 * (self.message_bytes as u64 / self.tokens.max(1) as u64),
        }
    }

    /// Blocks of a request placed in pools of `pool_blocks` per tensor by
    /// `table`, moved as merged descriptors with `coalesce`.
    pub fn in_pool(
        shape: &KvShape,
        tokens: u32,
        table: BlockTable,
        pool_blocks: u32,
        coalesce: bool,
    ) -> RequestLayout {
        if !shape.is_uniform() {
            return RequestLayout::irregular(
                shape,
                tokens,
                Granularity::Block,
                table,
                pool_blocks,
                coalesce,
                Irregular::Request,
            );
        }
        let mut l = RequestLayout::new(shape, tokens, Granularity::Block);
        let ids = (
            table.ids(Side::Sender, l.blocks, pool_blocks),
            table.ids(Side::Receiver, l.blocks, pool_blocks),
        );
        (l.pool_blocks, l.table, l.coalesce, l.ids) = (pool_blocks, table, coalesce, Some(Arc::new(ids)));
        l
    }

    /// The bytes the request moves.
    pub fn total_bytes(&self) -> usize {
        match &self.irregular {
            Some(x) => x.total_bytes(),
            None => self.message_count * self.message_bytes,
        }
    }

    /// The bytes of a side's buffer the request spans: its pool, for blocks;
    /// a conversation's region, for a turn.
    pub fn buffer_bytes(&self) -> usize {
        if let Some(x) = &self.irregular {
            return self.base + x.buffer;
        }
        self.base
            + match self.pool_blocks {
                0 if self.region_tokens > 0 => {
                    self.total_bytes() / self.tokens.max(1) as usize * self.region_tokens as usize
                }
                0 => self.total_bytes(),
                pool => {
                    let block = self.block_bytes(Side::Sender).max(self.block_bytes(Side::Receiver));
                    self.layers as usize * self.tensors_per_layer as usize * pool as usize * block
                }
            }
    }

    /// Whether every message sits at index x size on both sides.
    pub fn tiled(&self) -> bool {
        if let Some(x) = &self.irregular {
            return x.msgs.iter().zip(&x.starts).all(|(m, &s)| m.at == [s, s]) && self.base == 0;
        }
        let alone = self.region_tokens == 0 || (self.first == 0 && self.region_tokens == self.tokens);
        alone
            && self.base == 0
            && self.cut.is_none()
            && (self.pool_blocks == 0
                || (self.pool_blocks == self.blocks && self.table == BlockTable::Contiguous))
    }

    /// Where message `index` sits in `side`'s buffer.
    pub fn slot(&self, side: Side, index: usize) -> Slot {
        debug_assert!(index < self.message_count);
        if let Some(x) = &self.irregular {
            let m = &x.msgs[index];
            return Slot { index, offset: self.base + m.at[side as usize], len: m.len };
        }
        let (bytes, blocks) = (self.message_bytes, self.blocks as usize);
        let offset = match self.pool_blocks {
            0 if self.region_tokens > 0 => {
                // A turn's message: its layer's (or the request's) tokens from `first` on.
                let per_token = bytes / self.tokens.max(1) as usize;
                index * self.region_tokens as usize * per_token + self.first as usize * per_token
            }
            0 => index * bytes,
            pool => {
                let (pieces, pool, tensors) = (self.pieces(), pool as usize, self.tensors_per_layer as usize);
                let (tensor, piece) = (index / pieces / blocks, index % pieces); // layer x K/V, in order
                let block = self.block_id(side, index / pieces % blocks) as usize + self.first as usize;
                let place = match self.cut.as_ref().map(|c| c.layout) {
                    // A block's K and V side by side (FlashInfer).
                    Some(tp::KvLayout::BlocksFirst) => {
                        (tensor / tensors * pool + block) * tensors + tensor % tensors
                    }
                    _ => tensor * pool + block,
                };
                let within = self.cut.as_ref().map_or(0, |c| match side {
                    Side::Sender => c.pieces[piece].sender,
                    Side::Receiver => c.pieces[piece].receiver,
                });
                place * self.block_bytes(side) + within
            }
        };
        Slot { index, offset: self.base + offset, len: bytes }
    }

    /// The pool block that holds block `b` of the request on `side`.
    fn block_id(&self, side: Side, b: usize) -> u32 {
        match (&self.ids, side) {
            (Some(ids), Side::Sender) => ids.0[b],
            (Some(ids), Side::Receiver) => ids.1[b],
            (None, _) if self.table == BlockTable::Contiguous => b as u32,
            // A layout read back from a report: drawn again, alike.
            (None, _) => self.table.ids(side, self.blocks, self.pool_blocks)[b],
        }
    }

    /// Each message's bytes in `side`'s buffer `region`, by message index.
    pub fn split_mut<'a>(&self, side: Side, region: &'a mut [u8]) -> Vec<(usize, &'a mut [u8])> {
        let mut by_place: Vec<Slot> = self.slots(side).collect();
        by_place.sort_unstable_by_key(|s| s.offset);
        let mut out = Vec::with_capacity(by_place.len());
        let (mut rest, mut at) = (region, 0);
        for s in by_place {
            // Slots never overlap: each starts at or after the end of the last.
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(s.offset - at);
            let (mine, tail) = tail.split_at_mut(s.len);
            out.push((s.index, mine));
            (rest, at) = (tail, s.offset + s.len);
        }
        out.sort_unstable_by_key(|(i, _)| *i);
        out
    }

    pub fn slots(&self, side: Side) -> impl ExactSizeIterator<Item = Slot> + '_ {
        (0..self.message_count).map(move |i| self.slot(side, i))
    }

    /// The operations that move a request: one per message, or, with
    /// `coalesce` (blocks only), runs of one layer's messages adjacent on
    /// both sides.
    pub fn descriptors(&self) -> Vec<Descriptor> {
        let messages = (0..self.message_count).map(|i| {
            (self.slot(Side::Sender, i).offset, self.slot(Side::Receiver, i).offset, self.message_len(i))
        });
        let layer_of = |i: usize| self.layer_of(i);
        blocks::descriptors(
            messages,
            (self.coalesce && self.granularity == Granularity::Block)
                .then_some(&layer_of as &dyn Fn(usize) -> usize),
        )
    }

    /// Every place in `side`'s buffer where a message of this layout's
    /// geometry can sit: for blocks, every block (and piece of a block) of
    /// every tensor of the pool, as NixlConnector prepares its descriptor
    /// lists once over all blocks; otherwise the request's own messages.
    /// `desc_index` finds a message in it.
    pub fn desc_space(&self, side: Side) -> DescSpace {
        if let Some(x) = &self.irregular {
            return DescSpace {
                base: self.base,
                stride: 0,
                places: x.places[side as usize].len(),
                pieces: vec![0],
                len: 0,
                listed: Some((x.places_digest[side as usize], x.places[side as usize].clone())),
            };
        }
        let pieces: Vec<usize> = match &self.cut {
            Some(c) => {
                c.pieces.iter().map(|p| if side == Side::Sender { p.sender } else { p.receiver }).collect()
            }
            None => vec![0],
        };
        match self.pool_blocks {
            0 => {
                let (first, second) =
                    (self.slot(side, 0).offset, self.slot(side, 1.min(self.message_count - 1)));
                DescSpace {
                    base: first,
                    stride: (second.offset - first).max(self.message_bytes),
                    places: self.message_count,
                    pieces: vec![0],
                    len: self.message_bytes,
                    listed: None,
                }
            }
            pool => DescSpace {
                base: self.base,
                stride: self.block_bytes(side),
                places: self.layers as usize * self.tensors_per_layer as usize * pool as usize,
                pieces,
                len: self.message_bytes,
                listed: None,
            },
        }
    }

    /// Where message `index` is in `side`'s `desc_space`.
    pub fn desc_index(&self, side: Side, index: usize) -> usize {
        if let Some(x) = &self.irregular {
            return x.desc[index][side as usize];
        }
        match self.pool_blocks {
            0 => index,
            _ => {
                let pieces = self.pieces();
                let piece = index % pieces;
                let within = self.cut.as_ref().map_or(0, |c| match side {
                    Side::Sender => c.pieces[piece].sender,
                    Side::Receiver => c.pieces[piece].receiver,
                });
                let place = (self.slot(side, index).offset - self.base - within) / self.block_bytes(side);
                place * pieces + piece
            }
        }
    }

    /// Every message's `desc_index`, in message order, computed as a
    /// connector computes them from a request's block ids (vLLM's
    /// `_compute_desc_ids`: region offset plus block id), at a few ns a
    /// message: a request of 327,680 blocks must not spend milliseconds here.
    pub fn desc_indices(&self, side: Side) -> Vec<usize> {
        if let Some(x) = &self.irregular {
            return x.desc.iter().map(|d| d[side as usize]).collect();
        }
        if self.pool_blocks == 0 {
            return (0..self.message_count).collect();
        }
        let (pieces, pool, tensors) =
            (self.pieces(), self.pool_blocks as usize, self.tensors_per_layer as usize);
        let drawn;
        let ids: &[u32] = match (&self.ids, side) {
            (Some(ids), Side::Sender) => &ids.0,
            (Some(ids), Side::Receiver) => &ids.1,
            (None, _) => {
                drawn = (0..self.blocks as usize).map(|b| self.block_id(side, b)).collect::<Vec<u32>>();
                &drawn
            }
        };
        let blocks_first = matches!(self.cut.as_ref().map(|c| c.layout), Some(tp::KvLayout::BlocksFirst));
        let mut out = Vec::with_capacity(self.message_count);
        for tensor in 0..self.layers as usize * tensors {
            for &id in ids {
                let block = id as usize + self.first as usize;
                let place = match blocks_first {
                    true => (tensor / tensors * pool + block) * tensors + tensor % tensors,
                    false => tensor * pool + block,
                };
                out.extend((0..pieces).map(|piece| place * pieces + piece));
            }
        }
        out
    }

    /// Names byte `at` of message `index` for an operator: its key, and
    /// under different TP the head and token it holds and the ranks.
    pub fn name(&self, request: u64, index: usize, at: u64) -> String {
        let key = self.key(request, index);
        if let Some(m) = self.irregular.as_ref().map(|x| &x.msgs[index]) {
            // Which group: a state region, a window's or a chunk's block.
            let ranks = self.cut.as_ref().map_or(String::new(), |c| {
                format!(", decode rank {}, from prefill rank {}", c.decode_rank, c.prefill_rank)
            });
            return match m.part {
                Part::Whole => key.to_string(),
                _ => format!("{key} ({} layer{ranks})", m.kind),
            };
        }
        let Some(c) = &self.cut else { return key.to_string() };
        let ranks = format!("decode rank {}, from prefill rank {}", c.decode_rank, c.prefill_rank);
        let within = c.pieces[index % self.pieces()].receiver + at as usize;
        match c.head_at(within) {
            Some((head, token)) => format!("{key} head {head} token {token} ({ranks})"),
            None => format!("{key} ({ranks})"),
        }
    }

    pub fn key(&self, request: u64, index: usize) -> TransferKey {
        if let Some(x) = &self.irregular {
            let m = &x.msgs[index];
            let layer = (m.part != Part::Whole).then_some(m.layer);
            return TransferKey { request, layer, part: m.part, block: m.block, token: m.token };
        }
        let whole_layer = if self.mla { Part::Latent } else { Part::KeyValue };
        match self.granularity {
            Granularity::Request => {
                TransferKey { request, layer: None, part: Part::Whole, block: None, token: None }
            }
            Granularity::Layer => TransferKey {
                request,
                layer: Some(index as u32),
                part: whole_layer,
                block: None,
                token: None,
            },
            Granularity::Block => {
                let pieces = self.pieces();
                let token = (pieces > 1).then_some((index % pieces) as u16);
                let index = index / pieces;
                let per_layer = self.tensors_per_layer as usize * self.blocks as usize;
                let tensor = (index % per_layer) / self.blocks as usize;
                let part = match (self.mla, tensor) {
                    (true, _) => Part::Latent,
                    (false, 0) => Part::Key,
                    (false, _) => Part::Value,
                };
                TransferKey {
                    request,
                    layer: Some((index / per_layer) as u32),
                    part,
                    block: Some((index % self.blocks as usize) as u32 + self.first),
                    token,
                }
            }
        }
    }
}

/// Places spaced `stride` bytes apart from `base`, each holding messages
/// of `len` bytes at the offsets `pieces`: descriptor `place * pieces.len()
/// + piece` lies at `base + place * stride + pieces[piece]`.
#[derive(Clone, Debug)]
pub struct DescSpace {
    pub base: usize,
    pub stride: usize,
    pub places: usize,
    pub pieces: Vec<usize>,
    pub len: usize,
    /// Places of many sizes (hybrid.rs): (offset from `base`, bytes) each,
    /// with a fingerprint that stands for them in comparisons.
    pub listed: Option<(u64, Places)>,
}

/// What an irregular layout (hybrid.rs) moves: a request alone, a span of
/// a conversation's region, or a request between one pair of a P x D run.
enum Irregular {
    Request,
    Span(hybrid::Extent),
    Pair(hybrid::PairCut),
}

/// Places listed one by one: (offset, bytes) each.
pub type Places = Arc<Vec<(usize, usize)>>;

impl PartialEq for DescSpace {
    fn eq(&self, o: &DescSpace) -> bool {
        let listed = |d: &DescSpace| d.listed.as_ref().map(|l| (l.0, l.1.len()));
        (self.base, self.stride, self.places, &self.pieces, self.len, listed(self))
            == (o.base, o.stride, o.places, &o.pieces, o.len, listed(o))
    }
}

impl Eq for DescSpace {}

impl std::hash::Hash for DescSpace {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        (self.base, self.stride, self.places, &self.pieces, self.len).hash(h);
        self.listed.as_ref().map(|l| (l.0, l.1.len())).hash(h);
    }
}

impl DescSpace {
    pub fn count(&self) -> usize {
        match &self.listed {
            Some((_, l)) => l.len(),
            None => self.places * self.pieces.len(),
        }
    }

    /// Offset of descriptor `i` in the buffer.
    pub fn offset(&self, i: usize) -> usize {
        if let Some((_, l)) = &self.listed {
            return self.base + l[i].0;
        }
        let n = self.pieces.len();
        self.base + (i / n) * self.stride + self.pieces[i % n]
    }

    /// Bytes of descriptor `i`.
    pub fn len_of(&self, i: usize) -> usize {
        match &self.listed {
            Some((_, l)) => l[i].1,
            None => self.len,
        }
    }

    /// How far the descriptor beside `i` is (the fault `neighbour-block`).
    pub fn step(&self) -> usize {
        if self.listed.is_some() {
            1
        } else {
            self.pieces.len()
        }
    }
}

/// Whether and when the receiver checks the integrity pattern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyMode {
    /// Every message of every request, after its timed region.
    After,
    /// Every message as it arrives, inside the timed region.
    Inline,
    Off,
}

crate::words::named_by_words!(VerifyMode, "--verify", { After => "after", Inline => "inline", Off => "off" });

/// Everything both sides must agree on before the first byte moves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub shape: KvShape,
    pub prompt_lengths: Vec<u32>,
    pub granularities: Vec<Granularity>,
    pub iterations: u32,
    pub warmup: u32,
    pub verify: VerifyMode,
    /// Block granularity: where a request's blocks sit in each side's pool.
    #[serde(default)]
    pub block_table: BlockTable,
    /// Block granularity: blocks per (layer, K/V) tensor of each side's
    /// pool; None: one more than the largest request has, so that a
    /// contiguous request's K and V runs stay apart, as in a serving pool.
    #[serde(default)]
    pub pool_blocks: Option<u32>,
    /// Block granularity: adjacent descriptors merge (NIXL does; reports
    /// written before this existed moved one operation per block).
    #[serde(default)]
    pub coalesce: bool,
    /// Emulated prefill on the sender, and when its KV moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill: Option<Prefill>,
    /// Serving load: requests that arrive at a rate, paced by the receiver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<Load>,
    /// Multi-turn conversations: a point per mode and granularity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<turns::ConversationPlan>,
    /// Prefill and decode at different TP, and which pair this is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tp: Option<TpPlan>,
}

/// A run of P prefill ranks and D decode ranks: the topology all share, and
/// the (prefill rank, decode rank) of this pair once both sides know it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TpPlan {
    pub topology: tp::TpTopology,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pair: Option<(u32, u32)>,
    /// Prefill instances (each `topology.prefill_tp` ranks) that feed the
    /// decode instance, each with its own arrivals; this sender's is `instance`.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub instances: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub instance: u32,
}

impl TpPlan {
    pub fn new(topology: tp::TpTopology) -> TpPlan {
        TpPlan { topology, pair: None, instances: 1, instance: 0 }
    }

    /// The senders a decode rank serves: its prefill ranks in every instance.
    pub fn senders_of(&self, model: &crate::kv::ModelSpec, decode_rank: u32) -> usize {
        self.topology.sources(model, decode_rank).len() * self.instances as usize
    }
}

fn one() -> u32 {
    1
}

fn is_one(v: &u32) -> bool {
    *v == 1
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Serving load: one point per arrival rate and granularity, `iterations`
/// requests each, prompt lengths drawn from the mix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Load {
    pub arrivals: Vec<Arrivals>,
    /// Prompt lengths and their weights (`--prompt-mix`, or `-p` evenly).
    pub mix: Vec<(u32, f64)>,
    pub seed: u64,
    /// How long decode keeps a request's KV after its last byte.
    pub decode_hold_ns: u64,
    /// With a trace's output tokens: each request held that many times this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpot_ns: Option<u64>,
    /// `--duration`: the requests that arrive in it, instead of `iterations`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ns: Option<u64>,
    /// `--arrivals trace:FILE`: its requests, read by the sender.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trace: Vec<Arrival>,
    /// `--decode-buffer`: the bytes the decode side holds (kv_buffer_size),
    /// and what it does past them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_buffer: Option<(u64, OnFull)>,
    /// Requests in flight at once (`--concurrency`): each on its own lane,
    /// a transport connection and buffer region of its own; 1 is one at a
    /// time in arrival order (P2pNccl's send queue, NCCL's stream order).
    #[serde(default = "one_in_flight")]
    pub concurrency: u32,
}

fn one_in_flight() -> u32 {
    1
}

/// The most lanes `--concurrency` opens: each is a connection and a
/// buffer on both sides.
pub const MAX_CONCURRENCY: u32 = 64;

impl Load {
    /// The most a request may wait for room in the decode buffer (--on-full
    /// wait): every earlier request's hold, for the sender's patience.
    pub fn longest_wait(&self, point: &Point) -> std::time::Duration {
        let holds = match (self.decode_buffer, &point.load) {
            (Some((_, OnFull::Wait)), Some(l)) => {
                l.schedule.iter().fold(0u64, |t, a| t.saturating_add(self.hold_ns(a)))
            }
            _ => 0,
        };
        std::time::Duration::from_nanos(holds)
    }

    /// How long decode holds a request's KV after its last byte.
    pub fn hold_ns(&self, a: &Arrival) -> u64 {
        match (a.output_tokens, self.tpot_ns) {
            (Some(n), Some(tpot)) => (n as u64).saturating_mul(tpot),
            _ => self.decode_hold_ns,
        }
    }
}

/// A load point's requests: when each arrives and how long it is.
#[derive(Clone, Debug, PartialEq)]
pub struct PointLoad {
    pub arrivals: Arrivals,
    pub schedule: Vec<Arrival>,
    /// One layout per prompt length of the mix.
    pub layouts: Vec<RequestLayout>,
}

/// One measured configuration: a prompt length at a granularity, or under
/// load an arrival rate at a granularity (`layout` then the longest prompt's).
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    pub index: usize,
    pub layout: RequestLayout,
    /// With emulated prefill: each layer's compute time in ns.
    pub prefill_ns: Option<Vec<u64>>,
    pub load: Option<PointLoad>,
    pub turns: Option<turns::PointTurns>,
}

impl Point {
    /// The layout of request `iteration` (warm-ups first; with emulated
    /// prefill, of either phase): under load, its prompt length's (warm-ups
    /// take the schedule's first ones).
    pub fn layout_at(&self, warmup: u32, iteration: u32) -> &RequestLayout {
        if let Some((c, r)) = self.turn_at(warmup, iteration) {
            return &c.layouts[r.moving];
        }
        let Some(l) = &self.load else { return &self.layout };
        let iteration = iteration % (warmup + l.schedule.len() as u32);
        let k = if iteration < warmup { iteration as usize } else { (iteration - warmup) as usize };
        let tokens = l.schedule[k % l.schedule.len()].tokens;
        l.layouts.iter().find(|x| x.tokens == tokens).unwrap_or(&self.layout)
    }

    /// Bidirectional: what decode sends back before request `iteration`.
    pub fn back_at(&self, warmup: u32, iteration: u32) -> Option<&RequestLayout> {
        let (c, r) = self.turn_at(warmup, iteration)?;
        c.backs[r.moving].as_ref()
    }

    /// In a conversation point, request `iteration`'s conversation and
    /// which of its turns that move it is (warm-ups: a first turn in
    /// conversation 0's region).
    pub fn turn_at(
        &self,
        warmup: u32,
        iteration: u32,
    ) -> Option<(&turns::ConversationTurns, turns::TurnRequest)> {
        let t = self.turns.as_ref()?;
        // With emulated prefill the point runs twice: the second phase's turns are the first's.
        let iteration = iteration % (warmup + t.requests.len() as u32);
        match iteration.checked_sub(warmup) {
            Some(k) => Some(t.at(k)),
            None => Some((&t.conversations[0], turns::TurnRequest { conversation: 0, moving: 0 })),
        }
    }

    /// In a conversation point, request `iteration`'s conversation and turn number, for names.
    pub fn turn_named(&self, warmup: u32, iteration: u32) -> Option<(u32, u32)> {
        let (c, r) = self.turn_at(warmup, iteration)?;
        Some((r.conversation, c.moves[c.moving[r.moving]].turn.turn))
    }

    /// Under load, the timed request `iteration`'s arrival (in either phase).
    pub fn arrival(&self, warmup: u32, iteration: u32) -> Option<&Arrival> {
        let l = self.load.as_ref()?;
        let iteration = iteration % (warmup + l.schedule.len() as u32);
        l.schedule.get(iteration.checked_sub(warmup)? as usize)
    }
}

/// A request's decode hold at most: an hour.
pub const MOST_HOLD_NS: u64 = 3_600_000_000_000;

/// Conversations a point at most: each is laid out when planning (0.1 s
/// for 1,000 on the build VM), and under arrivals each holds a region of
/// at least a block a layer on both sides, all at once.
pub const MOST_CONVERSATIONS: u64 = 100_000;

/// A request's bytes at most (1 PiB: no GPU holds a KV cache near it).
pub const MOST_REQUEST_BYTES: u64 = 1 << 50;
/// A request's messages at most: 2^24, above Llama-3.1-405B's blocks at 1M
/// tokens (16.5M).
pub const MOST_MESSAGES: u64 = 1 << 24;

impl Plan {
    /// What a hybrid model does not run with yet (`not_yet_for_hybrid`);
    /// a turn's request message would hold each layer's tokens from a
    /// point of its own.
    fn check_hybrid(&self) -> Result<()> {
        not_yet_for_hybrid(&self.shape, self.conversation.is_some(), self.tp.is_some())?;
        if let Some(t) = &self.tp {
            hybrid_topology(&self.shape, &t.topology)?;
        }
        if self.conversation.is_some()
            && !self.shape.is_uniform()
            && self.granularities.contains(&Granularity::Request)
        {
            return Err(Error::usage(format!(
                "turns of {} in request messages are not built yet: its windowed layers keep tokens from points \
                 of their own; use -g layer or block",
                self.shape.model.name
            )));
        }
        Ok(())
    }

    /// Each request's bytes and messages and the block pool, counted in
    /// u128 before anything multiplies them in u64 or walks them (a plan
    /// read off the wire is checked here before its digest is derived).
    fn check_sizes(&self) -> Result<()> {
        let s = &self.shape;
        let per_token = s.bytes_per_token() as u128;
        let per_block = s.model.layers as u128 * s.attention_tensors().len() as u128;
        for &tokens in &self.prompt_lengths {
            let bytes = tokens as u128 * per_token;
            if bytes > MOST_REQUEST_BYTES as u128 {
                return Err(Error::usage(format!(
                    "a {tokens}-token request of {} is {bytes} bytes, more than the {MOST_REQUEST_BYTES} kvxfer moves",
                    s.model.name
                )));
            }
            let blocks = per_block * s.blocks_for(tokens) as u128;
            if self.granularities.contains(&Granularity::Block) && blocks > MOST_MESSAGES as u128 {
                return Err(Error::usage(format!(
                    "a {tokens}-token request of {} is {blocks} blocks, more than the {MOST_MESSAGES} messages a \
                     request may have",
                    s.model.name
                )));
            }
        }
        if let Some(pool) = self.pool_blocks.filter(|p| *p as u64 > MOST_MESSAGES) {
            return Err(Error::usage(format!("--pool-blocks {pool}: at most {MOST_MESSAGES}")));
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        // A plan read off the wire skipped the shape's constructor: check it
        // again, or a TP of 0 would divide by zero below.
        let s = &self.shape;
        KvShape::new(s.model.clone(), s.tp, s.block_size)?.with_hma(s.hma)?;
        self.check_hybrid()?;
        if self.prompt_lengths.is_empty() {
            return Err(Error::usage("no prompt lengths given"));
        }
        if let Some(&z) = self.prompt_lengths.iter().find(|&&t| t == 0) {
            return Err(Error::usage(format!("prompt length {z} is not positive")));
        }
        if self.granularities.is_empty() {
            return Err(Error::usage("no granularity given"));
        }
        self.check_sizes()?;
        if self.iterations == 0 {
            return Err(Error::usage("--iterations must be at least 1"));
        }
        self.check_request_count()?;
        let largest = self.prompt_lengths.iter().map(|t| self.shape.blocks_for(*t)).max().unwrap_or(0);
        if let Some(pool) = self.pool_blocks.filter(|pool| *pool < largest) {
            return Err(Error::usage(format!(
                "--pool-blocks {pool} cannot hold the {largest} blocks of a {}-token request",
                self.prompt_lengths.iter().max().copied().unwrap_or(0)
            )));
        }
        if let Some(p) = &self.prefill {
            if self.conversation.is_some() {
                // Each turn computes what prefill has not cached: a span of the context.
                p.layer_ns_span(&self.shape, 0, 1)?;
            }
            for &tokens in &self.prompt_lengths {
                p.layer_ns(&self.shape, tokens)?;
            }
        }
        if let Some(t) = &self.tp {
            self.validate_tp(t)?;
        }
        if let Some(c) = &self.conversation {
            self.check_conversation(c)?;
        }
        if let Some(l) = &self.load {
            self.check_load(l)?;
        }
        Ok(())
    }

    /// Request counts are u32 (and go twice with emulated prefill): none may wrap.
    fn check_request_count(&self) -> Result<()> {
        let phases = if self.prefill.is_some() { 2 } else { 1 };
        let conversation_turns =
            self.conversation.as_ref().and_then(|c| c.conversation).map_or(1, |c| c.turns);
        let requests = (self.iterations as u64 * conversation_turns as u64 + self.warmup as u64) * phases;
        // Conversations hold each turn's layouts; a plain point counts in a u32.
        let most = if conversation_turns > 1 { crate::schedule::MOST_REQUESTS } else { u32::MAX as u64 };
        if requests > most {
            return Err(Error::usage(format!(
                "-n {} and -w {}{} make {requests} requests a point, more than {}",
                self.iterations,
                self.warmup,
                match (conversation_turns, phases) {
                    (1, 1) => String::new(),
                    (1, _) => " twice over (emulated prefill)".to_string(),
                    (t, _) => format!(" in conversations of {t} turns"),
                },
                most
            )));
        }
        Ok(())
    }

    /// What conversations take: one turn at a time under arrivals, their
    /// turns from one place, and a number of them planning can lay out.
    fn check_conversation(&self, c: &turns::ConversationPlan) -> Result<()> {
        if let Some(c0) = c.conversation {
            // Under --duration, about rate x duration turns arrive (plus a few, for Poisson's spread).
            let duration = self.load.as_ref().and_then(|l| Some((l, l.duration_ns?)));
            let (conversations, why) = match duration {
                Some((l, ns)) => {
                    let qps = l.arrivals.iter().map(|a| a.qps()).fold(0.0, f64::max);
                    let turns = (qps * ns as f64 / 1e9 * 1.1).ceil();
                    let d = humantime::format_duration(std::time::Duration::from_nanos(ns));
                    ((turns / c0.turns.max(1) as f64) as u64, format!("--duration {d} at {qps}/s"))
                }
                None => (self.iterations as u64, format!("-n {}", self.iterations)),
            };
            if conversations > MOST_CONVERSATIONS {
                return Err(Error::usage(format!(
                    "{why} makes about {conversations} conversations of {} turns a point, more than \
                     {MOST_CONVERSATIONS} (under arrivals each holds a region on both sides at once)",
                    c0.turns
                )));
            }
        }
        if let Some(l) = &self.load {
            if l.concurrency != 1 {
                return Err(Error::usage(
                    "conversations under --arrivals go one turn at a time (--concurrency 1: each \
                     conversation's KV stays in one lane's region)",
                ));
            }
            if l.duration_ns.is_some() && c.conversation.is_none() {
                return Err(Error::usage(
                    "--duration with a trace of conversations: the trace's times bound the run",
                ));
            }
            if c.conversation.is_none() == l.trace.is_empty() {
                return Err(Error::usage(
                    "conversations come from --turns and --turn-tokens, or from a trace whose lines \
                     name conversation and turn, not both",
                ));
            }
        }
        if c.modes.is_empty() {
            return Err(Error::usage("--multi-turn names no mode"));
        }
        Ok(())
    }

    /// A load's lanes, rates, draws, holds and decode buffer.
    fn check_load(&self, l: &Load) -> Result<()> {
        // A decode of an hour is past any request's; past it, only a hang.
        let longest = l.trace.iter().map(|a| l.hold_ns(a)).fold(l.decode_hold_ns, u64::max);
        if longest > MOST_HOLD_NS {
            return Err(Error::usage(format!(
                "a decode hold of {:.0} s (--decode-hold, or output tokens x --tpot) is past an hour, the longest \
                 kvxfer emulates",
                longest as f64 / 1e9
            )));
        }
        if !(1..=MAX_CONCURRENCY).contains(&l.concurrency) {
            return Err(Error::usage(format!(
                "--concurrency {} is not a number of requests from 1 to {MAX_CONCURRENCY}",
                l.concurrency
            )));
        }
        if l.arrivals.is_empty() || l.mix.iter().map(|m| m.1).sum::<f64>() <= 0.0 {
            return Err(Error::usage(
                "--arrivals needs a rate and a prompt mix whose weights sum above zero",
            ));
        }
        if let Some(p) = self.points().iter().find(|p| p.load.as_ref().is_some_and(|l| l.schedule.is_empty()))
        {
            return Err(Error::usage(format!(
                "no request arrives in --duration at {} (point {}): a longer duration or a higher rate",
                p.load.as_ref().map_or(String::new(), |l| l.arrivals.to_string()),
                p.index
            )));
        }
        let points = self.points();
        match l.decode_buffer {
            Some((cap, OnFull::Spill)) => {
                let tensor = points.iter().map(|p| p.layout.message_bytes as u64).max().unwrap_or(0);
                if cap < tensor {
                    return Err(Error::usage(format!(
                        "--decode-buffer {cap} is smaller than one tensor ({tensor} bytes): nothing would ever fit"
                    )));
                }
            }
            Some((cap, OnFull::Wait)) => {
                let request = self.max_request_bytes() as u64;
                if cap < request {
                    return Err(Error::usage(format!(
                        "--decode-buffer {cap} with --on-full wait is smaller than the largest request ({request} \
                         bytes), which would wait for ever"
                    )));
                }
            }
            None => {}
        }
        if let Some((t, _)) = l.mix.iter().find(|(t, _)| !self.prompt_lengths.contains(t)) {
            return Err(Error::usage(format!(
                "internal error: prompt length {t} of the mix is not in the plan"
            )));
        }
        Ok(())
    }

    /// What a P x D run takes: the topology NixlConnector accepts, blocks
    /// (the only thing it moves), one request at a time, and a pair
    /// whose decode rank reads from its prefill rank.
    fn validate_tp(&self, t: &TpPlan) -> Result<()> {
        t.topology.validate(&self.shape.model)?;
        if let Some(g) = self.granularities.iter().find(|g| **g != Granularity::Block) {
            return Err(Error::usage(format!(
                "-g {g} with --prefill-tp/--decode-tp: a decode rank's KV is a slice of every block, which \
                 NixlConnector (the connector that runs different TPs) moves block by block: use -g block"
            )));
        }
        if self.conversation.is_some() && self.load.is_some() {
            return Err(Error::usage(
                "--prefill-tp/--decode-tp with --turns run back to back, not yet under --arrivals: a decode \
                 rank's pairs would each count their share of a turn as a turn",
            ));
        }
        if let Some((p, d)) = t.pair {
            t.topology.cut(&self.shape.model, self.shape.block_size, p, d)?;
        }
        if !(1..=16).contains(&t.instances) || t.instance >= t.instances {
            return Err(Error::usage(format!(
                "--prefill-instance {} of --prefill-instances {}: instances run from 1 to 16, and this sender's is \
                 one of them, from 0",
                t.instance, t.instances
            )));
        }
        if t.instances > 1 && self.load.is_none() {
            return Err(Error::usage(
                "--prefill-instances above 1 run under --arrivals: each instance brings its own requests",
            ));
        }
        Ok(())
    }

    /// Requests of one phase of a point: warm-ups, then the timed ones
    /// (under load, the point's schedule).
    pub fn phase_len(&self, point: &Point) -> u32 {
        let timed = match (&point.load, &point.turns) {
            (Some(l), _) => l.schedule.len() as u32,
            (None, Some(t)) => t.requests.len() as u32,
            (None, None) => self.iterations,
        };
        self.warmup + timed
    }

    /// Requests of one sweep point: one phase, twice over with emulated
    /// prefill (the transfer alone, then with the compute).
    pub fn requests_in(&self, point: &Point) -> u32 {
        self.phase_len(point) * if self.prefill.is_some() { 2 } else { 1 }
    }

    /// With emulated prefill, the compute time of each layer of request
    /// `iteration`: its own prompt length's (under a mix, not the longest's).
    /// A conversation's turn computes what prefill has not cached (`turns::computed`).
    pub fn layer_ns_at(&self, point: &Point, iteration: u32) -> Option<Vec<u64>> {
        let prefill = self.prefill.as_ref()?;
        if let Some((c, r)) = point.turn_at(self.warmup, iteration) {
            let span = c.computes[r.moving];
            return prefill.layer_ns_span(&self.shape, span.from as u32, span.to as u32).ok();
        }
        let tokens = point.layout_at(self.warmup, iteration).tokens;
        prefill.layer_ns(&self.shape, tokens).ok()
    }

    /// What a prefill tally keys request `iteration` by: its prompt length,
    /// or in a conversation its turn number (each turn computes its own span).
    pub fn prefill_key(&self, point: &Point, iteration: u32) -> u32 {
        match point.turn_named(self.warmup, iteration) {
            Some((_, turn)) => turn,
            None => point.layout_at(self.warmup, iteration).tokens,
        }
    }

    /// Whether request `iteration` of a point computes its KV as it goes:
    /// the second phase, with emulated prefill.
    pub fn computes(&self, point: &Point, iteration: u32) -> bool {
        self.prefill.is_some() && iteration >= self.phase_len(point)
    }

    /// Whether request `iteration` of a point is timed (not a warm-up),
    /// in either phase.
    pub fn measured(&self, point: &Point, iteration: u32) -> bool {
        iteration % self.phase_len(point) >= self.warmup
    }

    /// Blocks per tensor of each side's pool (block granularity).
    pub fn pool(&self) -> u32 {
        let largest = self.prompt_lengths.iter().map(|t| self.shape.blocks_for(*t)).max().unwrap_or(0);
        self.pool_blocks.unwrap_or(largest + 1)
    }

    /// Granularity outermost, so a table reads as one sweep per granularity.
    pub fn points(&self) -> Vec<Point> {
        let mut out = Vec::new();
        if let Some(cp) = &self.conversation {
            for &g in &self.granularities {
                for &mode in &cp.modes {
                    out.extend(self.conversation_points(cp, mode, g, out.len()));
                }
            }
            return out;
        }
        let cut = self.cut();
        let layout = |tokens: u32, g: Granularity| match g {
            Granularity::Block => match (&cut, self.pair_cut()) {
                (_, Some(pair)) => RequestLayout::irregular_pair(&self.shape, tokens, self, pair),
                (Some(c), None) => {
                    RequestLayout::in_pool(&self.shape, tokens, self.block_table, self.pool(), self.coalesce)
                        .with_cut(c.clone())
                }
                (None, None) => {
                    RequestLayout::in_pool(&self.shape, tokens, self.block_table, self.pool(), self.coalesce)
                }
            },
            _ => RequestLayout::new(&self.shape, tokens, g),
        };
        for &g in &self.granularities {
            if let Some(load) = &self.load {
                let layouts: Vec<RequestLayout> = load.mix.iter().map(|&(t, _)| layout(t, g)).collect();
                let longest =
                    layouts.iter().max_by_key(|l| l.total_bytes()).expect("a validated mix").clone();
                for &arrivals in &load.arrivals {
                    // Each point its own draw: seeds apart by the point's index.
                    let seed = load.seed.wrapping_add(out.len() as u64);
                    let bound = match load.duration_ns {
                        Some(ns) => Bound::Duration(ns),
                        None => Bound::Requests(self.iterations),
                    };
                    let schedule = match arrivals {
                        Arrivals::Trace { .. } => load.trace.clone(),
                        _ => crate::schedule::schedule(arrivals, &load.mix, bound, seed),
                    };
                    let load = Some(PointLoad { arrivals, schedule, layouts: layouts.clone() });
                    let prefill_ns =
                        self.prefill.as_ref().and_then(|p| p.layer_ns(&self.shape, longest.tokens).ok());
                    out.push(Point {
                        index: out.len(),
                        layout: longest.clone(),
                        prefill_ns,
                        load,
                        turns: None,
                    });
                }
                continue;
            }
            for &tokens in &self.prompt_lengths {
                // Validated: every prompt length has its times.
                let prefill_ns = self.prefill.as_ref().and_then(|p| p.layer_ns(&self.shape, tokens).ok());
                out.push(Point {
                    index: out.len(),
                    layout: layout(tokens, g),
                    prefill_ns,
                    load: None,
                    turns: None,
                });
            }
        }
        out
    }

    /// A conversation mode's points at `g` from index `first`: one after
    /// another, or under load one per arrival rate.
    fn conversation_points(
        &self,
        cp: &turns::ConversationPlan,
        mode: MultiTurn,
        g: Granularity,
        first: usize,
    ) -> Vec<Point> {
        // Under different TP, this pair's cut of every block (only where uniform: validated).
        let cut = self.cut().filter(|_| self.shape.is_uniform());
        let point = |index: usize, turns: turns::PointTurns, load: Option<PointLoad>| Point {
            index,
            layout: turns.region.clone(),
            prefill_ns: self.longest_turn_compute(&turns),
            load,
            turns: Some(turns),
        };
        let Some(load) = &self.load else {
            let c = cp.conversation.expect("validated: conversations without a trace are --turns");
            return vec![point(
                first,
                turns::PointTurns::one_after_another(
                    &self.shape,
                    c,
                    self.iterations,
                    (mode, g),
                    cut.as_ref(),
                ),
                None,
            )];
        };
        let mut out = Vec::new();
        for &arrivals in &load.arrivals {
            let index = first + out.len();
            let (turns, schedule) = match cp.conversation {
                Some(c) => {
                    let seed = load.seed.wrapping_add(index as u64);
                    // Under --duration, as many conversations as the turns that arrive in it make whole.
                    let conversations = match load.duration_ns {
                        Some(ns) => {
                            let drawn =
                                crate::schedule::schedule(arrivals, &load.mix, Bound::Duration(ns), seed);
                            (drawn.len() as u32 / c.turns.max(1)).max(1)
                        }
                        None => self.iterations,
                    };
                    let turns = turns::PointTurns::taking_turns(
                        &self.shape,
                        c,
                        conversations,
                        (mode, g),
                        cut.as_ref(),
                    );
                    let bound = Bound::Requests(turns.requests.len() as u32);
                    let mut schedule = crate::schedule::schedule(arrivals, &load.mix, bound, seed);
                    for (a, r) in schedule.iter_mut().zip(&turns.requests) {
                        let c = &turns.conversations[r.conversation as usize];
                        let turn = c.moves[c.moving[r.moving]].turn;
                        (a.tokens, a.turn) = (turn.prompt_tokens as u32, Some((r.conversation, turn.turn)));
                    }
                    (turns, schedule)
                }
                None => {
                    let conversations = crate::schedule::traced_conversations(&load.trace);
                    let order: Vec<(u32, u32)> = load.trace.iter().filter_map(|a| a.turn).collect();
                    let turns =
                        turns::PointTurns::new(&self.shape, &conversations, &order, (mode, g), cut.as_ref());
                    // The trace's turns that move in this mode.
                    let moves = |a: &&Arrival| {
                        a.turn.is_some_and(|(c, t)| {
                            let c = &turns.conversations[c as usize];
                            c.moving.iter().any(|&m| m + 1 == t as usize)
                        })
                    };
                    let schedule = load.trace.iter().filter(moves).copied().collect();
                    (turns, schedule)
                }
            };
            let layouts = vec![turns.region.clone()];
            out.push(point(index, turns, Some(PointLoad { arrivals, schedule, layouts })));
        }
        out
    }

    /// With emulated prefill, the layers of a conversation point's longest
    /// turn's compute: the one its compute alone is timed at.
    fn longest_turn_compute(&self, turns: &turns::PointTurns) -> Option<Vec<u64>> {
        let prefill = self.prefill.as_ref()?;
        let spans = turns.conversations.iter().flat_map(|c| c.computes.iter());
        let layers =
            spans.filter_map(|s| prefill.layer_ns_span(&self.shape, s.from as u32, s.to as u32).ok());
        layers.max_by_key(|l| l.iter().sum::<u64>())
    }

    /// This pair's cut of every block, under different TP once the pair is known.
    pub fn cut(&self) -> Option<tp::Cut> {
        let t = self.tp.as_ref()?;
        let (p, d) = t.pair?;
        t.topology.cut(&self.shape.model, self.shape.block_size, p, d).ok()
    }

    /// This pair's cut of a hybrid model (its messages listed one by one):
    /// the attention blocks' pieces and the prefill rank's state.
    fn pair_cut(&self) -> Option<hybrid::PairCut> {
        if self.shape.is_uniform() {
            return None;
        }
        let t = self.tp.as_ref()?;
        let (p, d) = t.pair?;
        let sources = t.topology.sources(&self.shape.model, d);
        let sender_state = match &self.shape.model.state {
            Some(s) => s.bytes(t.topology.prefill_tp).ok()?,
            None => crate::kv::StateBytes { conv: Vec::new(), ssm: 0 },
        };
        Some(hybrid::PairCut {
            cut: self.cut()?,
            ratio: t.topology.ratio(),
            source: sources.iter().position(|&x| x == p)?,
            sender_state,
        })
    }

    /// The plan without this pair's ranks: what every pair of one P x D
    /// run shares (the senders of one decode rank must agree on it).
    pub fn shared_digest(&self) -> String {
        let mut shared = self.clone();
        if let Some(t) = &mut shared.tp {
            (t.pair, t.instance) = (None, 0);
        }
        shared.digest()
    }

    /// Request ids are unique across the run, so no request can pass for another.
    pub fn request_id(&self, point: usize, iteration: u32) -> u64 {
        ((point as u64) << 32) + iteration as u64
    }

    /// The id that keys request `iteration`'s bytes: a conversation's
    /// turns share one (its first request's), as its KV stays in place.
    /// (With emulated prefill each phase keys its conversations anew, so
    /// that a turn the second phase misses is not found from the first.)
    pub fn key_id(&self, point: &Point, iteration: u32) -> u64 {
        let phase = self.phase_len(point);
        let (start, within) = (iteration / phase * phase, iteration % phase);
        match (&point.turns, within.checked_sub(self.warmup)) {
            (Some(t), Some(k)) => self.request_id(point.index, start + self.warmup + t.at(k).1.conversation),
            _ => self.request_id(point.index, iteration),
        }
    }

    pub fn max_messages(&self) -> usize {
        self.points().iter().map(|p| p.layout.message_count).max().unwrap_or(0)
    }

    pub fn max_request_bytes(&self) -> usize {
        let largest = |p: &Point| match &p.turns {
            // A conversation point's requests are the turns that move.
            Some(t) => {
                let moved = t.conversations.iter().flat_map(|c| c.layouts.iter());
                moved.map(RequestLayout::total_bytes).max().unwrap_or(0)
            }
            None => p.layout.total_bytes(),
        };
        self.points().iter().map(largest).max().unwrap_or(0)
    }

    /// The host memory one side of a pair takes: a buffer per lane where
    /// its buffers are in host memory (`buffers_on_host`), and on the
    /// receiver the pinned pool that `--on-full spill` copies into, which
    /// is host memory whatever the buffers are.
    pub fn host_bytes(&self, receiver: bool, buffers_on_host: bool) -> u64 {
        let buffers = if buffers_on_host { self.lanes() as u64 * self.max_buffer_bytes() as u64 } else { 0 };
        let spills = self.load.as_ref().is_some_and(|l| matches!(l.decode_buffer, Some((_, OnFull::Spill))));
        let pool = if receiver && spills { self.max_request_bytes() as u64 } else { 0 };
        buffers + pool
    }

    /// Whether decode sends KV back to prefill (`--multi-turn bidirectional`).
    pub fn moves_back(&self) -> bool {
        let bidirectional = MultiTurn::Bidirectional;
        self.conversation.as_ref().is_some_and(|c| c.modes.contains(&bidirectional))
    }

    /// Pair `index` of a fan under `--arrivals`: separate prefill (or
    /// decode) instances draw arrivals of their own, so each pair's seed is
    /// its own; the ranks of one P x D instance carry shares of one stream
    /// of requests and keep the plan's. A trace is every pair's.
    pub fn seat(&mut self, index: u32) {
        // Under TP the ranks of an instance share its arrivals; instances differ.
        let index = match &self.tp {
            None => index as u64,
            Some(t) => t.instance as u64 * (1 << 32),
        };
        if let (Some(l), true) = (&mut self.load, index > 0) {
            l.seed = pattern::seed_of(&[l.seed, index]);
        }
    }

    /// Lanes a side opens: requests in flight at once under load.
    pub fn lanes(&self) -> usize {
        self.load.as_ref().map_or(1, |l| l.concurrency as usize)
    }

    /// The bytes a side's buffer must hold: the largest request, or pool.
    pub fn max_buffer_bytes(&self) -> usize {
        let bytes = |p: &Point| match &p.turns {
            // Conversations in progress at once each hold a region.
            Some(t) => t.regions as usize * t.region.buffer_bytes(),
            None => p.layout.buffer_bytes(),
        };
        self.points().iter().map(bytes).max().unwrap_or(0)
    }

    /// A fingerprint of the plan and of how this build cuts it into messages:
    /// two builds that would disagree on any key, offset or size disagree here.
    pub fn digest(&self) -> String {
        let json = serde_json::to_string(self).expect("plan serializes");
        let mut parts: Vec<u64> = vec![LAYOUT_REVISION];
        parts.extend(json.bytes().map(u64::from));
        for p in self.points() {
            let l = &p.layout;
            let last = l.message_count - 1;
            let last_key = l.key(self.request_id(p.index, 0), last);
            let (sent, received) = (l.slot(Side::Sender, last).offset, l.slot(Side::Receiver, last).offset);
            parts.extend([l.message_count as u64, l.message_bytes as u64, sent as u64, received as u64]);
            parts.push(l.descriptors().len() as u64);
            parts.push(last_key.seed());
        }
        format!("{:016x}", pattern::seed_of(&parts))
    }
}

/// What a model whose layers move unlike one another does not run with
/// yet: conversations (`conversation`) and P x D cuts (`tp`) are laid out
/// for messages of one size.
pub fn not_yet_for_hybrid(s: &KvShape, conversation: bool, tp: bool) -> Result<()> {
    if s.is_uniform() {
        return Ok(());
    }
    let what = if s.model.is_hybrid() && s.hma {
        format!("{} under vLLM's hybrid KV cache manager", s.model.name)
    } else {
        format!("{} (its indexer cache)", s.model.name)
    };
    let off = if s.model.has_state() || s.model.indexer_dim.is_some() { "" } else { ", or --hma off" };
    if conversation && (s.model.has_state() || s.model.indexer_dim.is_some()) {
        return Err(Error::usage(format!(
            "multi-turn conversations of {what} are not built yet: run its turns one request at a time{off}"
        )));
    }
    if tp && s.model.indexer_dim.is_some() {
        return Err(Error::usage(format!(
            "prefill and decode at different TP for {what} are not built yet: run one TP{off}"
        )));
    }
    Ok(())
}

/// A hybrid model at different prefill and decode TP: what NixlConnector
/// cannot pair. A state model's attention block is raised per rank to hold
/// a state, so the two TPs may pick different block sizes, which vLLM
/// refuses for head-sharded reads ("heterogeneous block sizes are not
/// supported"; kvxfer does not model its block-size ratio either); and the
/// blocks-first layout is not cut for hybrid layers.
pub fn hybrid_topology(s: &KvShape, t: &tp::TpTopology) -> Result<()> {
    if s.is_uniform() {
        return Ok(());
    }
    if t.layout == tp::KvLayout::BlocksFirst {
        return Err(Error::usage(format!(
            "--kv-layout blocks-first for {}: not built for hybrid models; use hnd or nhd",
            s.model.name
        )));
    }
    let prefill_block = crate::kv::vllm_block_size(&s.model, t.prefill_tp, Some(s.block_size))?;
    if prefill_block != s.block_size {
        return Err(Error::usage(format!(
            "{}: prefill at TP {} holds its state in blocks of {prefill_block} tokens, decode at TP {} in blocks \
             of {}: NixlConnector does not pair different block sizes for head-sharded reads",
            s.model.name, t.prefill_tp, t.decode_tp, s.block_size
        )));
    }
    Ok(())
}

/// A request's id as the operator reads it: "point 2, request 26" (points in
/// the table's order, requests from 1 in each point, warm-ups first), not
/// the id that keys its bytes (the point in its upper 32 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Req(pub u64);

impl fmt::Display for Req {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "point {}, request {}", (self.0 >> 32) + 1, (self.0 & 0xffff_ffff) + 1)
    }
}

/// Bump when the way a plan is cut into messages changes.
const LAYOUT_REVISION: u64 = 4;

/// A plan of a preset model at TP 1 for unit tests: every granularity,
/// 3 timed requests and 1 warm-up, nothing else.
#[cfg(test)]
pub(crate) fn sample_plan(model: &str, tokens: &[u32]) -> Plan {
    let m = crate::kv::presets::lookup(model).unwrap();
    let bs = crate::kv::vllm_block_size(&m, 1, None).unwrap();
    Plan {
        shape: KvShape::new(m, 1, bs).unwrap(),
        prompt_lengths: tokens.to_vec(),
        granularities: Granularity::ALL.to_vec(),
        iterations: 3,
        warmup: 1,
        verify: VerifyMode::After,
        block_table: BlockTable::Contiguous,
        pool_blocks: None,
        coalesce: true,
        prefill: None,
        load: None,
        conversation: None,
        tp: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::presets;

    /// The arithmetic below was written for GQA blocks of 16 tokens
    /// (vLLM's default before 0.34's 64): kept, as one block size is as good as another.
    fn plan(model: &str, tokens: &[u32]) -> Plan {
        let mut p = sample_plan(model, tokens);
        if !p.shape.model.attention_is_mla() {
            p.shape.block_size = 16;
        }
        p
    }

    /// A plan read off the wire has its shape checked again (the fuzz test
    /// found a TP of 0 dividing by zero in the receiver).
    #[test]
    fn a_received_plan_with_an_impossible_shape_is_refused() {
        for (tp, block) in [(0, 16), (1, 0), (3, 16)] {
            let mut p = plan("llama-3.1-8b", &[128]);
            (p.shape.tp, p.shape.block_size) = (tp, block);
            assert!(p.validate().is_err(), "tp {tp}, block {block}");
        }
        assert!(plan("llama-3.1-8b", &[128]).validate().is_ok());
        // Sizes no GPU holds, or past what a digest may walk, before any u64 wraps.
        let mut p = plan("llama-3.1-405b", &[1 << 20]);
        assert!(p.validate().is_ok(), "405B at 1M tokens, 16.5M blocks, is a plan");
        p.prompt_lengths = vec![1 << 21];
        let e = p.validate().unwrap_err().message;
        assert!(e.contains("messages a request may have"), "{e}");
        p.prompt_lengths = vec![u32::MAX];
        let e = p.validate().unwrap_err().message;
        assert!(e.contains("more than the 1125899906842624 kvxfer moves"), "{e}");
        let mut p = plan("llama-3.1-8b", &[128]);
        p.pool_blocks = Some(u32::MAX);
        assert!(p.validate().is_err());
        p.pool_blocks = None;
        p.shape.model.layers = u32::MAX;
        assert!(p.validate().unwrap_err().message.contains("more than kvxfer takes"));
    }

    /// Under load with emulated prefill a point runs its schedule twice:
    /// warm-ups and arrivals without the compute, then again with it.
    #[test]
    fn load_with_prefill_runs_the_schedule_in_two_phases() {
        let mut p = plan("llama-3.1-8b", &[128]);
        p.granularities = vec![Granularity::Layer];
        p.iterations = 4;
        p.prefill =
            Some(Prefill { time: Prefill::parse_ms("128:20,1024:200").unwrap(), overlap: Overlap::Layer });
        p.load = Some(Load {
            arrivals: vec![crate::schedule::Arrivals::Fixed { qps: 10.0 }],
            mix: vec![(128, 1.0)],
            seed: 1,
            decode_hold_ns: 0,
            tpot_ns: None,
            duration_ns: None,
            trace: Vec::new(),
            decode_buffer: None,
            concurrency: 1,
        });
        p.validate().unwrap();
        let point = &p.points()[0];
        assert_eq!((p.phase_len(point), p.requests_in(point)), (5, 10));
        let computes: Vec<bool> = (0..10).map(|it| p.computes(point, it)).collect();
        assert_eq!(computes, [false, false, false, false, false, true, true, true, true, true]);
        let measured: Vec<bool> = (0..10).map(|it| p.measured(point, it)).collect();
        assert_eq!(measured, [false, true, true, true, true, false, true, true, true, true]);
        // Each phase's timed requests arrive 100 ms apart from its start.
        let at = |it| point.arrival(p.warmup, it).map(|a| a.at_ns);
        assert_eq!(
            (at(0), at(1), at(4), at(5), at(6), at(9)),
            (None, Some(0), Some(300_000_000), None, Some(0), Some(300_000_000))
        );
        assert_eq!(point.prefill_ns.as_ref().map(|l| l.iter().sum::<u64>()), Some(20_000_000));
        // Several in flight, and a mix of lengths, each computing its own layers.
        p.load.as_mut().unwrap().concurrency = 2;
        p.load.as_mut().unwrap().mix.push((1024, 1.0));
        p.prompt_lengths.push(1024);
        p.validate().unwrap();
        let point = &p.points()[0];
        let mut asked: Vec<(u32, u64)> = (0..p.requests_in(point))
            .filter(|&it| p.computes(point, it))
            .map(|it| (point.layout_at(p.warmup, it).tokens, p.layer_ns_at(point, it).unwrap().iter().sum()))
            .collect();
        asked.sort_unstable();
        asked.dedup();
        assert_eq!(asked, [(128, 20_000_000), (1024, 200_000_000)]);
    }

    /// A conversation with emulated prefill runs twice: the second phase's
    /// turns are the first's, each computing its own span, under keys of
    /// their own (a turn missing from the second is not found from the first).
    #[test]
    fn conversations_with_prefill_run_their_turns_in_both_phases() {
        let mut p = plan("llama-3.1-8b", &[128]);
        p.granularities = vec![Granularity::Block];
        p.iterations = 2;
        p.warmup = 1;
        let c = crate::schedule::conversation::Conversation::parse(3, "100:20").unwrap();
        p.conversation =
            Some(turns::ConversationPlan { conversation: Some(c), modes: vec![MultiTurn::Delta] });
        p.prefill =
            Some(Prefill { time: crate::plan::prefill::PrefillTime::Tflops(400.0), overlap: Overlap::Layer });
        p.validate().unwrap();
        let point = &p.points()[0];
        // 1 warm-up and 2 conversations of 3 turns, twice.
        assert_eq!((p.phase_len(point), p.requests_in(point)), (7, 14));
        let named: Vec<_> = (0..14).map(|it| point.turn_named(p.warmup, it)).collect();
        assert_eq!(named[1..7], named[8..14]);
        assert_eq!(p.layer_ns_at(point, 2), p.layer_ns_at(point, 9));
        assert_ne!(p.key_id(point, 2), p.key_id(point, 9));
        // Turns of one conversation share its key within a phase.
        assert_eq!(p.key_id(point, 1), p.key_id(point, 2));
        assert_eq!(p.key_id(point, 8), p.key_id(point, 9));
        let sum = |it| p.layer_ns_at(point, it).unwrap().iter().sum::<u64>();
        assert_eq!(point.prefill_ns.as_ref().map(|l| l.iter().sum::<u64>()), (1..7).map(sum).max());
        // Keyed by turn number for the figures.
        assert_eq!((1..7).map(|it| p.prefill_key(point, it)).collect::<Vec<_>>(), [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn llama_8b_at_8k_is_32_layers_of_32_mib() {
        // landscape.md 6.3: "Llama-8B 8K prompt TP1 = 32 sends of 32 MiB".
        let p = plan("llama-3.1-8b", &[8192]);
        let pts = p.points();
        let [req, layer, block] = [&pts[0].layout, &pts[1].layout, &pts[2].layout];
        assert_eq!((req.message_count, req.message_bytes), (1, 1 << 30));
        assert_eq!((layer.message_count, layer.message_bytes), (32, 32 << 20));
        // 512 blocks x K,V x 32 layers of 16 tokens x 8 heads x 128 x 2 B = 32 KiB.
        assert_eq!((block.message_count, block.message_bytes), (32 * 2 * 512, 32 << 10));
        assert!(pts.iter().all(|p| p.layout.total_bytes() == 1 << 30));
    }

    #[test]
    fn partial_last_block_travels_whole() {
        let p = plan("llama-3.1-8b", &[100]);
        let block = &p.points()[2].layout;
        assert_eq!(block.blocks, 7); // ceil(100 / 16)
        assert_eq!(block.total_bytes(), 7 * 16 * 131_072);
    }

    /// Errors name a request as the operator counts it, not by its id.
    #[test]
    fn requests_are_named_by_point_and_number() {
        let p = plan("llama-3.1-8b", &[32]);
        assert_eq!(Req(p.request_id(1, 25)).to_string(), "point 2, request 26");
        assert_eq!(Req(p.request_id(0, 0)).to_string(), "point 1, request 1");
    }

    #[test]
    fn keys_walk_layer_then_kv_then_block() {
        let p = plan("llama-3.1-8b", &[32]);
        let block = &p.points()[2].layout; // 2 blocks per tensor
        let k = |i| block.key(5, i).to_string();
        assert_eq!(k(0), "r5/L0/K/b0");
        assert_eq!(k(1), "r5/L0/K/b1");
        assert_eq!(k(2), "r5/L0/V/b0");
        assert_eq!(k(4), "r5/L1/K/b0");
        assert_eq!(p.points()[1].layout.key(5, 3).to_string(), "r5/L3");
        assert_eq!(p.points()[0].layout.key(5, 0).to_string(), "r5");
        let mla = plan("deepseek-v3", &[128]);
        assert_eq!(mla.points()[2].layout.key(0, 3).to_string(), "r0/L1/latent/b1");
    }

    #[test]
    fn keys_survive_the_wire_and_reject_garbage() {
        let p = plan("llama-3.1-8b", &[64]);
        let l = &p.points()[2].layout;
        for i in 0..l.message_count {
            let key = l.key(9, i);
            assert_eq!(TransferKey::from_wire(&key.to_wire()), Some(key));
        }
        assert_eq!(TransferKey::from_wire(&[0xee; TransferKey::WIRE_LEN]), None);
    }

    #[test]
    fn request_ids_are_unique_across_points() {
        let p = plan("qwen3-8b", &[128, 256]);
        let mut seen = std::collections::HashSet::new();
        for pt in p.points() {
            for it in 0..p.warmup + p.iterations {
                assert!(seen.insert(p.request_id(pt.index, it)));
            }
        }
    }

    #[test]
    fn digest_changes_with_the_plan() {
        let a = plan("llama-3.1-8b", &[128]);
        let mut b = a.clone();
        assert_eq!(a.digest(), b.digest());
        b.iterations += 1;
        assert_ne!(a.digest(), b.digest());
        assert_ne!(a.digest(), plan("llama-3.1-70b", &[128]).digest());
    }

    #[test]
    fn granularity_lists() {
        assert_eq!(Granularity::parse_list("all").unwrap(), Granularity::ALL.to_vec());
        assert_eq!(
            Granularity::parse_list("layer,block,layer").unwrap(),
            vec![Granularity::Layer, Granularity::Block]
        );
        assert!(Granularity::parse_list("page").is_err());
    }

    /// NIXL's prepared lists hold every place a message can sit; each
    /// message of every kind of layout is found in them at its own offset.
    #[test]
    fn every_message_has_its_place_in_the_descriptor_space() {
        use tp::{KvLayout, TpTopology};
        let m = presets::lookup("llama-3.1-8b").unwrap();
        let shape = KvShape::new(m.clone(), 1, 16).unwrap();
        let mut layouts = vec![
            RequestLayout::new(&shape, 100, Granularity::Request),
            RequestLayout::new(&shape, 100, Granularity::Layer),
            RequestLayout::in_pool(&shape, 100, BlockTable::Contiguous, 9, true),
            RequestLayout::in_pool(&shape, 100, BlockTable::Random { seed: 3 }, 40, false),
            RequestLayout::span(&shape, Granularity::Layer, 32, 80, 128),
            RequestLayout::span(&shape, Granularity::Block, 32, 80, 128),
        ];
        for (p, d, layout) in [(2, 1, KvLayout::Hnd), (1, 2, KvLayout::Nhd), (2, 4, KvLayout::BlocksFirst)] {
            let t = TpTopology { prefill_tp: p, decode_tp: d, layout };
            let cut = t.cut(&m, 16, 0, 0).unwrap();
            layouts.push(
                RequestLayout::in_pool(&shape, 100, BlockTable::Random { seed: 5 }, 12, true).with_cut(cut),
            );
        }
        for l in &layouts {
            for side in [Side::Sender, Side::Receiver] {
                let space = l.desc_space(side);
                let mut seen = std::collections::HashSet::new();
                let all = l.desc_indices(side);
                assert_eq!(all.len(), l.message_count);
                for (i, &fast) in all.iter().enumerate() {
                    let d = l.desc_index(side, i);
                    assert_eq!(fast, d, "{:?} {side:?} message {i}", l.granularity);
                    assert!(d < space.count(), "{:?} {side:?} message {i}", l.granularity);
                    assert_eq!(
                        space.offset(d),
                        l.slot(side, i).offset,
                        "{:?} {side:?} message {i}",
                        l.granularity
                    );
                    assert!(seen.insert(d), "two messages at one descriptor");
                    assert_eq!(space.len, l.message_bytes);
                }
                // Every descriptor lies inside the side's buffer.
                let last = space.offset(space.count() - 1) + space.len;
                assert!(
                    last <= l.buffer_bytes(),
                    "{:?} {side:?}: {last} > {}",
                    l.granularity,
                    l.buffer_bytes()
                );
            }
        }
    }
}
