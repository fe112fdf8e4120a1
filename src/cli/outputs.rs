//! What every command that runs a side shares: its screen, its sender options, and its output files.

use super::*;

/// What a run shows as it goes, as its output options ask.
pub(super) fn screen_for(a: &args::OutputArgs) -> Screen {
    Screen::new(a.quiet, a.json_stream, a.wide)
}

/// What a sender side takes from its command line.
pub(super) fn sender_options(run: &RunArgs) -> SenderOptions {
    SenderOptions {
        spec: run.transport_spec(),
        timeout: run.timeout,
        fault: run.fault,
        link: run.link.clone(),
        local: run.local(),
    }
}

/// The --csv and --json files: created before the run, so a bad path fails
/// at once rather than after an hour of measuring, and filled at the end.
pub(super) struct Outputs {
    files: Vec<(PathBuf, File, Box<dyn Exporter>)>,
    json: Option<PathBuf>,
    gate: Gate,
}

/// Whether two output paths name one file: the same folder (resolved) and name.
pub(super) fn same_place(a: &std::path::Path, b: &std::path::Path) -> bool {
    let place = |p: &std::path::Path| {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        (dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf()), p.file_name().map(|n| n.to_owned()))
    };
    a == b || place(a) == place(b)
}

/// An output that is a FIFO or a folder: opening the one waits for a
/// reader that may never come, writing the other cannot work.
pub(crate) fn refuse_special(path: &std::path::Path) -> Result<()> {
    // Devices stay writable: --json /dev/null is a way to drop a report.
    let what = match std::fs::metadata(path).ok().as_ref().and_then(crate::input::not_a_file) {
        Some(crate::input::NotAFile::Fifo) => "a FIFO (opening it waits for a reader)",
        Some(crate::input::NotAFile::Folder) => "a folder",
        _ => return Ok(()),
    };
    Err(Error::usage(format!("cannot write {}: it is {what}; give a file", path.display())))
}

/// Writes a command's text output (a plan's, a size's, a matrix's JSON):
/// a FIFO or a folder refused as every output is (exit 2), a device
/// written through; a failed write is the run's failure (exit 1), as a
/// report's is.
pub(crate) fn write_text(path: &std::path::Path, text: impl AsRef<[u8]>) -> Result<()> {
    refuse_special(path)?;
    std::fs::write(path, text).map_err(|e| Error::run(format!("cannot write {}: {e}", path.display())))
}

fn is_file(path: &std::path::Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

impl Outputs {
    /// The JSON and CSV reports to rewrite as points complete
    /// (Screen::keeping): files of their own, not devices.
    pub(super) fn kept(&self) -> (Option<PathBuf>, Option<PathBuf>) {
        let csv = self.files.iter().map(|f| &f.0).find(|p| Some(*p) != self.json.as_ref());
        (self.json.clone().filter(|p| is_file(p)), csv.filter(|p| is_file(p)).cloned())
    }

    pub(super) fn open(a: &OutputArgs) -> Result<Outputs> {
        let mut files = Vec::new();
        if let (Some(csv), Some(json)) = (&a.csv, &a.json) {
            if same_place(csv, json) {
                return Err(Error::usage(format!(
                    "--csv and --json both name {}: one would overwrite the other",
                    json.display()
                )));
            }
        }
        let wanted: [(&Option<PathBuf>, Box<dyn Exporter>); 2] =
            [(&a.csv, Box::new(report::csv::Csv)), (&a.json, Box::new(report::json::Json))];
        for (path, exporter) in wanted {
            if let Some(path) = path {
                refuse_special(path)?;
                let f = File::create(path)
                    .map_err(|e| Error::usage(format!("cannot write {}: {e}", path.display())))?;
                files.push((path.clone(), f, exporter));
            }
        }
        Ok(Outputs { files, json: a.json.clone(), gate: a.gate() })
    }

    /// Writes what was measured (even a partial run), prints the verdict and
    /// turns wrong bytes into a failing exit status.
    pub(super) fn conclude(
        self,
        report: Option<RunReport>,
        result: Result<()>,
        screen: &Screen,
    ) -> Result<()> {
        let Some(mut report) = report else {
            // Nothing measured: the empty file this run made goes, never a
            // device or a file that holds something (--json /dev/null).
            for (path, _, _) in &self.files {
                if std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == 0) {
                    let _ = std::fs::remove_file(path);
                }
            }
            return result;
        };
        report.close(result.as_ref().err());
        if result.is_ok() && !self.gate.is_empty() {
            report.gate = Some(self.gate.judge(&report));
        }
        screen.footer(&report)?;
        for (path, mut f, exporter) in self.files {
            match is_file(&path) {
                true => report::write_whole(&path, &report, exporter.as_ref())?,
                // A device (--json /dev/null): written through, never replaced.
                false => exporter
                    .export(&report, &mut f)
                    .map_err(|e| e.context(format!("writing {}", path.display())))?,
            }
        }
        result?;
        if report.wrong_bytes > 0 {
            return Err(Error::integrity(format!(
                "{} wrong bytes in {} verified; first: {}",
                report.wrong_bytes,
                fmt_bytes(report.verified_bytes),
                report.first_wrong().unwrap_or("?")
            )));
        }
        match report.gate.as_ref().and_then(|g| g.error()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
