//! Every recorded run in results/ holds to the rule that a figure above its
//! physical ceiling is a bug, never a result: a point measured above 100% of
//! its run's peak must be flagged by that run (`ceiling_exceeded`, which
//! kvxfer writes itself, and which a correction written beside an old file
//! also uses), so no such figure stands as if it were true.

use serde_json::Value;
use std::path::{Path, PathBuf};

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

/// The unflagged points above 100% of a report, and of the pairs' reports inside a fan's.
fn unflagged(report: &Value, at: &str, out: &mut Vec<String>) {
    let Some(points) = report["points"].as_array() else { return };
    let flagged: Vec<&str> = report["ceiling_exceeded"]["points"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for p in points {
        let Some(pct) = p["percent_of_peak"].as_f64() else { continue };
        let name = format!("{} {}", p["granularity"].as_str().unwrap_or("?"), p["prompt_tokens"]);
        if pct > 100.0 && !flagged.contains(&name.as_str()) {
            out.push(format!("{at}: {name} at {pct:.1}% of {}", report["link"]["name"]));
        }
    }
    if let Some(pairs) = report["fan"]["pair_reports"].as_array() {
        for (i, pair) in pairs.iter().enumerate() {
            unflagged(pair, &format!("{at} (pair {i})"), out);
        }
    }
}

#[test]
fn no_recorded_figure_stands_above_its_ceiling_unflagged() {
    let mut files = Vec::new();
    json_files(Path::new(env!("CARGO_MANIFEST_DIR")).join("results").as_path(), &mut files);
    assert!(files.len() > 100, "results/ holds {} JSON files: the scan lost its way", files.len());
    let mut bad = Vec::new();
    let mut reports = 0;
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let doc: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: not JSON: {e}", f.display()));
        reports += doc["points"].is_array() as usize;
        unflagged(&doc, &f.display().to_string(), &mut bad);
    }
    assert!(reports > 100, "only {reports} run reports found in results/");
    assert!(bad.is_empty(), "figures above their ceiling, not flagged:\n{}", bad.join("\n"));
}
