//! The whole report as one JSON document: plan, both machines, transport
//! truth, every figure and each point's histogram.

use super::{Exporter, RunReport};
use crate::error::{Error, Result};
use std::io::Write;

pub struct Json;

impl Exporter for Json {
    fn export(&self, report: &RunReport, out: &mut dyn Write) -> Result<()> {
        serde_json::to_writer_pretty(&mut *out, report)
            .map_err(|e| Error::run(format!("writing JSON: {e}")))?;
        writeln!(out)?;
        Ok(())
    }
}
