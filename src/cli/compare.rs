//! `kvxfer report`: runs compared, in tables and plots (the report module does the comparing).

use super::*;

/// `kvxfer report`: the runs merged into one table and a set of plots.
pub(super) fn compare(a: &ReportArgs) -> Result<()> {
    // `kvxfer matrix` JSONs are drawn as heatmaps; the rest are runs.
    let (matrices, runs): (Vec<PathBuf>, Vec<PathBuf>) =
        a.runs.iter().cloned().partition(|p| matrix::is_matrix(p));
    if !matrices.is_empty() {
        std::fs::create_dir_all(&a.out)
            .map_err(|e| Error::usage(format!("cannot create {}: {e}", a.out.display())))?;
        for path in &matrices {
            for f in matrix::draw(path, &a.out)? {
                println!("wrote {}", f.display());
            }
        }
        if runs.is_empty() && a.baseline.is_none() {
            return Ok(());
        }
    }
    let mut paths = runs;
    if let Some(b) = a.baseline.as_ref().filter(|b| !paths.contains(b)) {
        paths.insert(0, b.clone());
    }
    let runs = paths
        .iter()
        .map(|p| {
            let name = p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            report::compare::load(p).map(|r| (name, r))
        })
        .collect::<Result<Vec<_>>>()?;
    report::compare::check_comparable(&runs, a.allow_mixed)?;
    let baseline = a.baseline.as_ref().map(|b| {
        let i = paths.iter().position(|p| p == b).expect("the baseline is among the runs");
        report::compare::Baseline::of(&runs[i].0, &runs[i].1)
    });
    let series = report::compare::series(&runs);
    if series.iter().all(|s| s.points.is_empty()) {
        return Err(Error::usage("the reports hold no measured points"));
    }
    std::fs::create_dir_all(&a.out)
        .map_err(|e| Error::usage(format!("cannot create {}: {e}", a.out.display())))?;
    let write = |name: &str, text: String| {
        let path = a.out.join(name);
        crate::cli::outputs::write_text(&path, text)?;
        Ok::<_, Error>(path)
    };
    let md = report::compare::markdown(&series, baseline.as_ref());
    let csv = report::compare::csv(&series, baseline.as_ref())?;
    let mut files = vec![write("summary.md", md.clone())?, write("summary.csv", csv)?];
    if let Some(turns) = report::compare::turns_csv(&series)? {
        files.push(write("turns.csv", turns)?);
    }
    // What every run moved, in each plot's corner (mixed runs name theirs in each label).
    let kv = report::compare::kv_of(&runs[0].1);
    let stamp = match runs.iter().all(|(_, r)| report::compare::kv_of(r) == kv) {
        true => format!("KV of {kv}"),
        false => String::new(),
    };
    files.extend(report::plot::all(&a.out, &series, &stamp)?);
    let mut out = std::io::stdout().lock();
    write!(out, "{md}")?;
    writeln!(out)?;
    for f in files {
        writeln!(out, "wrote {}", f.display())?;
    }
    Ok(())
}
