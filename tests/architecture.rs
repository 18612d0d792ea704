//! The layering of docs/ARCHITECTURE.md, checked on the source itself: every `crate::` and
//! `super::` path in `src/` (outside test code) is resolved to the file it names, and
//!
//! - no file depends, directly or through others, on a file that depends on it (no cycle);
//! - each top-level module depends only on the modules below it in [`LAYERS`];
//! - the OTLP layer uses no runtime (`tokio`).
//!
//! A module's own `mod` declarations and re-exports of its children are its structure, not
//! dependencies, so a `mod.rs` naming its children is not counted as depending on them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each top-level module of the library and the modules it may use.
const LAYERS: &[(&str, &[&str])] = &[
    ("otlp", &[]),
    ("yaml", &[]),
    ("telemetry", &[]),
    ("auth", &["yaml", "telemetry"]),
    ("policy", &["otlp", "yaml", "telemetry"]),
    ("exporter", &["otlp", "yaml", "telemetry", "auth"]),
    ("routing", &["otlp", "yaml", "telemetry", "exporter"]),
    ("receiver", &["otlp", "yaml", "telemetry", "auth"]),
    ("processor", &["otlp", "yaml", "telemetry", "policy"]),
    (
        "sampler",
        &["otlp", "yaml", "telemetry", "policy", "exporter", "routing"],
    ),
    (
        "balancer",
        &["otlp", "yaml", "telemetry", "exporter", "routing"],
    ),
    (
        "config",
        &[
            "otlp",
            "yaml",
            "telemetry",
            "auth",
            "policy",
            "exporter",
            "routing",
            "receiver",
            "processor",
            "sampler",
            "balancer",
        ],
    ),
    (
        "app",
        &[
            "otlp",
            "yaml",
            "telemetry",
            "auth",
            "policy",
            "exporter",
            "routing",
            "receiver",
            "processor",
            "sampler",
            "balancer",
            "config",
        ],
    ),
    (
        "replay",
        &["otlp", "yaml", "telemetry", "policy", "sampler", "config"],
    ),
];

type ModulePath = Vec<String>;

/// Every library source file (not `main.rs` or `bin/`), by module path.
fn library_files() -> BTreeMap<ModulePath, PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().unwrap() != "bin" {
                    stack.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(&root).unwrap();
            let mut module: ModulePath = relative
                .with_extension("")
                .iter()
                .map(|s| s.to_string_lossy().into_owned())
                .collect();
            match module.last().map(String::as_str) {
                Some("lib") if module.len() == 1 => module.clear(),
                Some("main") if module.len() == 1 => continue,
                Some("mod") => {
                    module.pop();
                }
                // Test-only modules: their imports are the tests'.
                Some("tests") | Some("testing") => continue,
                _ => {}
            }
            files.insert(module, path);
        }
    }
    files
}

/// The source without comments, string literals and `#[cfg(test)]` items.
fn code_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if text[i..].starts_with("//") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if bytes[i] == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                if bytes[i] == b'\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if text[i..].starts_with("#[cfg(test)]") {
            // Skip the attribute and the item after it: to its `;` or its matching `}`.
            i += "#[cfg(test)]".len();
            let mut depth = 0;
            while i < bytes.len() {
                match bytes[i] {
                    b'{' => depth += 1,
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    b';' if depth == 0 => {
                        i += 1;
                        break;
                    }
                    _ => {}
                }
                i += 1;
            }
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Expands a `use` tree (`a::{b, c::{d, e as f}}`) into its paths.
fn expand_use(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap().trim();
        return vec![path.to_string()];
    };
    let prefix = tree[..open].trim_end_matches("::").trim();
    let inner = &tree[open + 1..tree.rfind('}').unwrap()];
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(expand_use)
        .map(|p| {
            if p == "self" {
                prefix.to_string()
            } else {
                format!("{prefix}::{p}")
            }
        })
        .collect()
}

/// Every `crate::`/`super::`/`self::` path the code mentions, and whether it is a re-export.
fn paths_in(code: &str) -> Vec<(String, bool)> {
    let mut paths = Vec::new();
    let mut rest = code;
    // `use` statements (possibly spanning lines).
    while let Some(at) = find_word(rest, "use") {
        let reexport =
            rest[..at].trim_end().ends_with("pub") || rest[..at].trim_end().ends_with(')');
        let statement = &rest[at + 3..];
        let end = statement.find(';').unwrap_or(statement.len());
        for path in expand_use(&statement[..end]) {
            paths.push((path, reexport));
        }
        rest = &statement[end..];
    }
    // Paths written inline in code.
    for start in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(at) = code[from..].find(start) {
            let begin = from + at;
            let preceded = code[..begin]
                .chars()
                .last()
                .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            let len = code[begin..]
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(code.len() - begin);
            if !preceded {
                paths.push((
                    code[begin..begin + len].trim_end_matches(':').to_string(),
                    false,
                ));
            }
            from = begin + len.max(1);
        }
    }
    paths
}

fn find_word(text: &str, word: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(at) = text[from..].find(word) {
        let i = from + at;
        let before = text[..i].chars().last();
        let after = text[i + word.len()..].chars().next();
        let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        if boundary(before) && after.is_some_and(char::is_whitespace) {
            return Some(i);
        }
        from = i + word.len();
    }
    None
}

/// The module path `path` names, seen from `module`; `None` for paths into other crates.
fn absolute(module: &[String], path: &str) -> Option<ModulePath> {
    let mut segments = path.split("::").map(str::trim);
    let mut base: ModulePath = match segments.next()? {
        "crate" => Vec::new(),
        "self" => module.to_vec(),
        "super" => module[..module.len().checked_sub(1)?].to_vec(),
        _ => return None,
    };
    for segment in segments {
        if segment == "super" {
            base.pop();
        } else if !segment.is_empty() && segment != "*" {
            base.push(segment.to_string());
        }
    }
    Some(base)
}

/// The longest prefix of `path` that is a file.
fn file_of(files: &BTreeMap<ModulePath, PathBuf>, path: &[String]) -> Option<ModulePath> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|prefix| files.contains_key(prefix))
}

/// Edges file → file.
fn dependencies() -> (
    BTreeMap<ModulePath, BTreeSet<ModulePath>>,
    BTreeMap<ModulePath, String>,
) {
    let files = library_files();
    let mut edges: BTreeMap<ModulePath, BTreeSet<ModulePath>> = BTreeMap::new();
    let mut code = BTreeMap::new();
    for (module, path) in &files {
        let text = code_of(&std::fs::read_to_string(path).unwrap());
        let deps = edges.entry(module.clone()).or_default();
        for (path, _) in paths_in(&text) {
            let Some(target) = absolute(module, &path).and_then(|p| file_of(&files, &p)) else {
                continue;
            };
            // A module's structure is not a dependency: itself, and its own descendants (which
            // it declares, re-exports and may use).
            if target.starts_with(module) {
                continue;
            }
            deps.insert(target);
        }
        code.insert(module.clone(), text);
    }
    (edges, code)
}

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "crate".into()
    } else {
        module.join("::")
    }
}

/// Strongly connected components with more than one file (Tarjan's algorithm).
fn cycles(edges: &BTreeMap<ModulePath, BTreeSet<ModulePath>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<ModulePath, BTreeSet<ModulePath>>,
        index: BTreeMap<&'a ModulePath, usize>,
        low: BTreeMap<&'a ModulePath, usize>,
        stack: Vec<&'a ModulePath>,
        on_stack: BTreeSet<&'a ModulePath>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a ModulePath) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let edges = s.edges;
        for w in edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[w].min(s.low[v]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.index[w].min(s.low[v]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on_stack.remove(w);
                component.push(name(w));
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !state.index.contains_key(v) {
            visit(&mut state, v);
        }
    }
    state.found
}

#[test]
fn no_source_file_depends_on_itself_through_others() {
    let (edges, _) = dependencies();
    assert!(edges.len() > 50, "found only {} source files", edges.len());
    let found = cycles(&edges);
    assert!(found.is_empty(), "import cycles: {found:#?}");
}

#[test]
fn each_layer_uses_only_the_layers_below_it() {
    let (edges, _) = dependencies();
    let allowed: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut wrong = Vec::new();
    for (from, targets) in &edges {
        let Some(from_top) = from.first() else {
            continue;
        };
        let permitted = allowed
            .get(from_top.as_str())
            .unwrap_or_else(|| panic!("top-level module `{from_top}` is not in LAYERS"));
        for target in targets {
            let Some(to_top) = target.first() else {
                wrong.push(format!("{} uses the crate root", name(from)));
                continue;
            };
            if to_top != from_top && !permitted.contains(&to_top.as_str()) {
                wrong.push(format!("{} uses {}", name(from), name(target)));
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_otlp_layer_has_no_runtime() {
    let (_, code) = dependencies();
    for (module, text) in &code {
        if module.first().map(String::as_str) == Some("otlp") {
            assert!(
                !text.contains("tokio"),
                "{} uses tokio: the OTLP layer has no runtime",
                name(module)
            );
        }
    }
}

/// The checker itself: a cycle and a layering breach it must see.
#[test]
fn the_checker_finds_a_planted_cycle_and_resolves_paths() {
    let file = |s: &str| s.split("::").map(String::from).collect::<ModulePath>();
    let mut edges = BTreeMap::new();
    edges.insert(file("a::x"), BTreeSet::from([file("b")]));
    edges.insert(file("b"), BTreeSet::from([file("a::x")]));
    edges.insert(file("c"), BTreeSet::new());
    assert_eq!(cycles(&edges).len(), 1);
    assert_eq!(
        absolute(&file("sampler::buffer::ingest"), "super::super::cluster::X"),
        Some(file("sampler::cluster::X"))
    );
    assert_eq!(
        expand_use("crate::otlp::{self, group::{Chunk, TraceGroup as T}}"),
        [
            "crate::otlp",
            "crate::otlp::group::Chunk",
            "crate::otlp::group::TraceGroup"
        ]
    );
    let code = code_of("use crate::a; // crate::b\n#[cfg(test)]\nmod tests { use crate::c; }\n");
    let found: Vec<String> = paths_in(&code).into_iter().map(|(p, _)| p).collect();
    assert_eq!(found, ["crate::a", "crate::a"]);
}
