//! A conversation point's figures, turn by turn (measure::turns gathers them).

use super::LatencySummary;
use crate::schedule::conversation::MultiTurn;
use serde::{Deserialize, Serialize};

/// A conversation point's figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConversationFigures {
    pub mode: MultiTurn,
    pub conversations: u32,
    pub turns: Vec<TurnFigures>,
    /// Bytes a conversation moves (both directions), and what `full` would:
    /// the mean over the point's conversations, which differ only in a trace.
    pub bytes: u64,
    pub full_bytes: u64,
    /// Regions each side held (conversations in progress at once) and one's bytes.
    #[serde(default)]
    pub regions: u32,
    #[serde(default)]
    pub region_bytes: u64,
    /// d-direct: FLOPs decode spends prefilling the later turns itself, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_prefill_flops: Option<f64>,
}

/// One turn, over the point's conversations.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TurnFigures {
    pub turn: u32,
    pub prompt_tokens: u64,
    /// Tokens' KV moved (whole blocks where the mode moves blocks) and bytes; 0 where nothing moves.
    pub moved_tokens: u64,
    pub bytes: u64,
    /// Bidirectional: the tokens' KV decode first sent back, and its bytes.
    #[serde(default)]
    pub back_tokens: u64,
    #[serde(default)]
    pub back_bytes: u64,
    /// Both directions, this turn and every one before.
    pub cumulative_bytes: u64,
    pub messages: usize,
    /// Each conversation's transfer of the turn, go to last byte; empty where nothing moves.
    pub transfer_ns: LatencySummary,
    /// Its histogram, HdrHistogram V2 + DEFLATE, base64 (a fan's hub
    /// under arrivals merges its pairs').
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub transfer_histogram: String,
    /// The KV back to prefill, as prefill timed it; empty where none came back.
    #[serde(default)]
    pub back_ns: LatencySummary,
}
