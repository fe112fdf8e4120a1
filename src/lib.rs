//! kvxfer: how fast does an interconnect move KV cache from a prefill GPU to
//! a decode GPU? The flow, top to bottom:
//!
//! - `kv`: model shapes, presets, Hugging Face configs, the integrity pattern
//! - `plan`: model x workload -> requests cut into keyed messages
//! - `session`: the control connection, handshake and pacing, with deadlines
//! - `transport`: one trait, several ways to move the bytes (tcp, ...)
//! - `measure`: warm-up, timing, checks, per-point statistics
//! - `fan`: many-to-one and one-to-many, N pairs run together from one hub
//! - `report`: table, CSV, JSON
//! - `cli`: the commands that string these together

pub mod cli;
pub mod clock;
pub mod env;
pub mod error;
pub mod fan;
pub mod figures;
pub mod gpu;
pub mod hold;
pub mod input;
pub mod integrity;
pub mod kv;
pub mod launch;
pub mod link;
pub mod logging;
pub mod matrix;
pub mod measure;
pub mod memory;
pub mod net;
pub mod plan;
pub mod report;
pub mod run;
pub mod schedule;
pub mod session;
pub mod signals;
pub mod size;
pub mod topology;
pub mod transport;
pub mod units;
mod words;
