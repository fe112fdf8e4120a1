//! The modules import downward only (docs/layout.md): a module that
//! names one above it brings the import circle back. Read from the
//! sources, each file's code before its tests.

use std::collections::BTreeSet;
use std::path::Path;

/// Each module, and the top-level modules it must never name.
const NEVER: &[(&str, &[&str])] = &[
    ("figures", &["measure", "session", "transport", "fan", "report", "run", "cli", "gpu", "memory"]),
    ("topology", &["measure", "session", "transport", "fan", "report", "run", "cli"]),
    ("integrity", &["measure", "session", "transport", "fan", "report", "run", "cli", "gpu", "memory"]),
    ("session", &["measure", "fan", "report", "run", "cli", "gpu"]),
    ("transport", &["session", "measure", "fan", "report", "run", "cli"]),
    ("gpu", &["measure", "session", "transport", "fan", "report", "run", "cli"]),
    ("memory", &["measure", "session", "transport", "fan", "report", "run", "cli"]),
    ("measure", &["fan", "report", "run", "cli"]),
    ("fan", &["run", "cli"]),
    ("report", &["measure", "fan", "run", "cli"]),
    ("run", &["cli"]),
];

/// The top-level modules a file names as `crate::X`, outside its tests.
fn named(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut out = BTreeSet::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        let name: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
        out.insert(name);
    }
    out
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn no_module_imports_one_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut all = Vec::new();
    files(&src, &mut all);
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for f in &all {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.iter().next().unwrap().to_str().unwrap().trim_end_matches(".rs").to_string();
        let Some((_, never)) = NEVER.iter().find(|(m, _)| *m == top) else { continue };
        seen.insert(top.clone());
        for name in named(f) {
            if never.contains(&name.as_str()) {
                wrong.push(format!("{} names crate::{name}", rel.display()));
            }
        }
    }
    // Every module the table speaks of exists (a rename would empty the check).
    assert_eq!(seen.len(), NEVER.len(), "modules found: {seen:?}");
    assert!(wrong.is_empty(), "imports upward:\n{}", wrong.join("\n"));
}
