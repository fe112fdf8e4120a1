//! Where a process sits: its side of a pair (prefill or decode), and in a
//! fan, the fan's shape and the pair's seat, as the handshake tells the
//! spoke (fan runs them).

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Prefill side: owns the plan, writes the KV.
    Sender,
    /// Decode side: adopts the plan, receives and checks the KV.
    Receiver,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Sender => "sender",
            Role::Receiver => "receiver",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FanShape {
    /// N senders, one receiver: incast on the decode side.
    ManyToOne,
    /// One sender, N receivers.
    OneToMany,
}

impl std::fmt::Display for FanShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FanShape::ManyToOne => "many-to-one",
            FanShape::OneToMany => "one-to-many",
        })
    }
}

/// A pair's place in a fan, told to its peer (the spoke) at the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seat {
    pub shape: FanShape,
    pub pairs: u32,
    /// This pair's number, from 0.
    pub index: u32,
}

impl Seat {
    /// "2→1" or "1→2".
    pub fn arrow(&self) -> String {
        match self.shape {
            FanShape::ManyToOne => format!("{}→1", self.pairs),
            FanShape::OneToMany => format!("1→{}", self.pairs),
        }
    }
}
