//! `kvxfer links`: the links kvxfer knows the ceilings of.

use super::*;

/// `kvxfer links`: what `--link` would be found as, for each kind of pair.
pub(super) fn links() -> Result<()> {
    // The probes of `kvxfer doctor`, shown alone.
    let mut out = std::io::stdout().lock();
    let mut have = doctor::Have::new();
    for section in [doctor::gpus(&mut have), doctor::network()] {
        for f in section.findings {
            writeln!(out, "{:<24} {}  ({})", f.what, f.found, f.source)?;
        }
    }
    Ok(())
}
