//! The library's modules follow the data one way, with no import cycles: each top-level module
//! of `src/` may use only modules of its own layer or below, and the "uses" graph has no cycle.
//! A new edge that climbs a layer (a codec reaching into sets, restore into capture) fails here,
//! naming the file and the line.
//!
//! Edges are read from the source text: every `crate::NAME` path and every `use crate::{...}`
//! group outside comments. (Code that reaches another top-level module by `super::` from a
//! top-level file would slip past; the code base writes `crate::` for those.)

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, lowest first. A module may use modules of its own layer or a lower one.
const LAYERS: &[&[&str]] = &[
    // Errors, progress reporting, system calls and the test seams they carry.
    &["error", "progress", "sys", "fault"],
    // What walbundle knows about SQLite's own files.
    &["sqlite"],
    // Codecs: bytes of the format, pure encode and decode.
    &["bundle"],
    // The storage seam.
    &["store"],
    // Backup sets: layout, inventory, summary.
    &["chain"],
    // The stages that read and write sets.
    &["replay", "capture", "compact", "verify"],
    // Operations over many sets and databases.
    &["ops"],
    // Test and fuzzing support (may use anything; nothing uses it).
    &["fuzzing"],
];

fn layer_of(m: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&m))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`None` for `lib.rs` and the binary).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    if first == "bin" || first == "lib.rs" {
        return None;
    }
    Some(first.trim_end_matches(".rs").to_string())
}

/// Code of a line without its `//` comment (string contents are left: a path inside a string
/// literal is rare, and a false edge errs on the safe side).
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

fn ident_at(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Top-level modules a line names.
fn names(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // `use crate::{a::b, c, d::{e, f}}`: the first segment of each top-level item.
            let mut depth = 0;
            let mut item_start = true;
            for (k, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && (c.is_ascii_alphabetic() || c == '_') => {
                        out.push(ident_at(&group[k..]).to_string());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.push(ident_at(after).to_string());
        }
        rest = after;
    }
    out
}

#[test]
fn modules_follow_the_layers_and_have_no_cycles() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut bad = Vec::new();
    let mut unknown = BTreeSet::new();
    // Multi-line `use crate::{...}` groups are joined before reading.
    for f in &files {
        let Some(from) = module_of(&src, f) else {
            continue;
        };
        if layer_of(&from).is_none() {
            unknown.insert(from.clone());
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let mut joined: Vec<(usize, String)> = Vec::new();
        let mut open: Option<(usize, String)> = None;
        for (n, line) in text.lines().enumerate() {
            let c = code(line).trim();
            if c.starts_with("//") {
                continue;
            }
            if let Some((start, mut acc)) = open.take() {
                acc.push(' ');
                acc.push_str(c);
                if c.contains("};") {
                    joined.push((start, acc));
                } else {
                    open = Some((start, acc));
                }
                continue;
            }
            if c.contains("crate::{") && !c.contains('}') {
                open = Some((n + 1, c.to_string()));
            } else {
                joined.push((n + 1, c.to_string()));
            }
        }
        for (n, line) in joined {
            for to in names(&line) {
                if to == from || to.is_empty() {
                    continue;
                }
                let Some(lt) = layer_of(&to) else {
                    continue; // not a module (a re-exported item at the root, e.g. `crate::Result`)
                };
                let lf = layer_of(&from).unwrap();
                if lt > lf {
                    bad.push(format!(
                        "{}:{n}: `{from}` (layer {lf}) uses `{to}` (layer {lt}), a higher layer",
                        f.strip_prefix(root).unwrap().display()
                    ));
                }
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules not placed in a layer (add them to LAYERS in tests/layers.rs): {unknown:?}"
    );
    assert!(
        bad.is_empty(),
        "imports against the layers:\n{}",
        bad.join("\n")
    );
    // No cycle among the modules of one layer either.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        match state.get(m) {
            Some(2) => return None,
            Some(1) => {
                let i = path.iter().position(|p| p == m).unwrap();
                let mut c = path[i..].to_vec();
                c.push(m.to_string());
                return Some(c);
            }
            _ => {}
        }
        state.insert(m.to_string(), 1);
        path.push(m.to_string());
        for to in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(to, edges, state, path) {
                return Some(c);
            }
        }
        path.pop();
        state.insert(m.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for m in edges.keys() {
        if let Some(c) = visit(m, &edges, &mut state, &mut Vec::new()) {
            panic!("import cycle: {}", c.join(" -> "));
        }
    }
}

#[test]
fn the_reader_sees_the_parser_work() {
    assert_eq!(names("use crate::bundle::wbb::X;"), ["bundle"]);
    assert_eq!(
        names("use crate::{chain::layout, store::{A, B}, Result};"),
        ["chain", "store", "Result"]
    );
    assert_eq!(
        names("let x = crate::sys::f(crate::fault::io::g());"),
        ["sys", "fault"]
    );
}
