//! The layer rule of STYLE.md §1, enforced: a module imports only from its
//! own layer or the layers below it; only the composition layer (`app`,
//! `config`, `main.rs`) and `demo` may import anything; the emulator side
//! tree imports only the foundations. And no import cycle between modules.
//!
//! The test reads `src/` as text: every `use crate::…` tree, every inline
//! `crate::…` path and every `super::…` path outside `#[cfg(test)]` blocks
//! is an edge from the file's module to the longest module prefix it names.
//! The layer table below is the architecture (lib.rs's crate doc says the
//! same in prose); [`ALLOWED`] lists edges that still break it, and may only
//! shrink: an entry that no longer occurs fails the test too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module prefix → layer. The longest matching prefix decides.
const LAYERS: &[(&str, u8)] = &[
    // L0 foundations
    ("http", 0),
    ("json_stream", 0),
    ("tls", 0),
    ("telemetry", 0),
    // L1 vocabulary and contracts
    ("model", 1),
    ("api", 1),
    ("metrics", 1),
    // L2 adapters
    ("journal", 2),
    ("upstream", 2),
    ("servers", 2),
    ("store", 2),
    // L3 request path
    ("error", 3),
    ("health", 3),
    ("proxy", 3),
    // L4 catalogue
    ("triggers", 4),
    // L5 sync engine
    ("sync", 5),
    // L6 control and jobs
    ("trigger_hook", 6),
    ("cutover", 6),
    ("backfill", 6),
    ("verify", 6),
    // L7 surfaces
    ("admin", 7),
    ("cli", 7),
    ("demo", 7),
    // L8 composition
    ("app", 8),
    ("config", 8),
];

/// Modules that may import from anywhere.
const ANYWHERE: &[&str] = &["app", "config", "demo", "main"];

/// The side tree: may import only these (besides itself).
const EMULATOR_MAY_IMPORT: &[&str] = &["http", "json_stream", "tls", "telemetry"];

/// Edges allowed to break the rule: `(from, to)` module paths. Empty, and
/// it stays empty: a new edge means the type belongs in a lower layer.
const ALLOWED: &[(&str, &str)] = &[];

/// Import cycles allowed, each as its sorted modules. Empty, and it stays
/// empty: break a new cycle by moving the shared type below both modules.
const ALLOWED_CYCLES: &[&[&str]] = &[];

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Edge {
    from: String,
    to: String,
    file: String,
    line: usize,
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// `src/a/b.rs` → `a::b`; `src/lib.rs` → ``; `src/main.rs` → `main`.
fn module_of(path: &Path) -> String {
    let relative = path.strip_prefix(src()).expect("under src/");
    let text = relative
        .with_extension("")
        .to_string_lossy()
        .replace('/', "::");
    match text.as_str() {
        "lib" => String::new(),
        _ => text,
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src/") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source with `#[cfg(test)]` items removed (their braces matched), and
/// comments and string literals blanked, so only code paths remain.
fn production_code(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut kept = Vec::with_capacity(lines.len());
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim_start().starts_with("#[cfg(test)]") {
            // Skip the attribute and the item it gates (to its matching `}`
            // or `;`).
            let mut depth = 0i32;
            let mut opened = false;
            kept.push(String::new());
            i += 1;
            while i < lines.len() {
                let line = strip_comment(lines[i]);
                for c in line.chars() {
                    match c {
                        '{' => {
                            depth += 1;
                            opened = true;
                        }
                        '}' => depth -= 1,
                        _ => {}
                    }
                }
                kept.push(String::new());
                i += 1;
                if (opened && depth == 0) || (!opened && line.trim_end().ends_with(';')) {
                    break;
                }
            }
            continue;
        }
        kept.push(strip_strings(&strip_comment(lines[i])));
        i += 1;
    }
    kept
}

fn strip_comment(line: &str) -> String {
    match line.find("//") {
        Some(at) if !line[..at].contains('"') => line[..at].to_owned(),
        _ => line.to_owned(),
    }
}

fn strip_strings(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in line.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            out.push(' ');
        } else if c == '"' {
            in_string = true;
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// Expands a use tree (`a::{b, c::{d, e}}`) into its paths.
fn expand(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let path = tree.split(" as ").next().unwrap_or(tree).trim();
        let path = path.strip_suffix("::self").unwrap_or(path);
        return vec![path.trim_end_matches("::").to_owned()];
    };
    let prefix = tree[..open].trim_end_matches("::");
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
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
        .flat_map(expand)
        .map(|rest| match rest.as_str() {
            "self" => prefix.to_owned(),
            _ if prefix.is_empty() => rest,
            _ => format!("{prefix}::{rest}"),
        })
        .collect()
}

/// Every crate path a file names, with its line: `crate::a::b` as `a::b`,
/// `super::x` resolved against the file's module.
fn paths_in(module: &str, code: &[String]) -> Vec<(String, usize)> {
    let joined = code.join("\n");
    let mut found = Vec::new();
    let line_of = |offset: usize| joined[..offset].matches('\n').count() + 1;
    // `use` trees first (they may span lines).
    let mut rest = 0;
    while let Some(at) = joined[rest..].find("use ") {
        let start = rest + at;
        rest = start + 4;
        let before = joined[..start].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let Some(end) = joined[start..].find(';') else {
            break;
        };
        let tree = joined[start + 4..start + end].trim();
        let tree = tree.strip_prefix("pub ").unwrap_or(tree);
        for path in expand(tree) {
            if let Some(resolved) = resolve(module, &path) {
                found.push((resolved, line_of(start)));
            }
        }
        rest = start + end;
    }
    // Inline paths: `crate::x::y` and `super::x` anywhere else.
    for (index, line) in code.iter().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("use ") || trimmed.starts_with("pub use ") {
            continue;
        }
        for anchor in ["crate::", "super::"] {
            let mut from = 0;
            while let Some(at) = line[from..].find(anchor) {
                let start = from + at;
                let before = line[..start].chars().last();
                from = start + anchor.len();
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let path: String = line[start..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                if let Some(resolved) = resolve(module, path.trim_end_matches(':')) {
                    found.push((resolved, index + 1));
                }
            }
        }
    }
    found
}

/// `crate::a::b` → `a::b`; `super::c` in module `x::y` → `x::c`; anything
/// else (std, other crates, `self::`) → `None`.
fn resolve(module: &str, path: &str) -> Option<String> {
    let path = path.trim();
    if let Some(rest) = path.strip_prefix("crate::") {
        return Some(rest.to_owned());
    }
    if path == "crate" {
        return Some(String::new());
    }
    let mut base: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
    let mut rest = path;
    let mut climbed = false;
    while let Some(after) =
        rest.strip_prefix("super::")
            .or(if rest == "super" { Some("") } else { None })
    {
        base.pop();
        rest = after;
        climbed = true;
    }
    if !climbed {
        return None;
    }
    let mut full = base.join("::");
    if !rest.is_empty() {
        if !full.is_empty() {
            full.push_str("::");
        }
        full.push_str(rest);
    }
    Some(full)
}

/// The longest known module that prefixes `path`.
fn owning_module(path: &str, modules: &BTreeSet<String>) -> String {
    let segments: Vec<&str> = path.split("::").collect();
    for n in (1..=segments.len()).rev() {
        let candidate = segments[..n].join("::");
        if modules.contains(&candidate) {
            return candidate;
        }
    }
    String::new()
}

fn layer_of(module: &str) -> Option<u8> {
    LAYERS
        .iter()
        .filter(|(prefix, _)| module == *prefix || module.starts_with(&format!("{prefix}::")))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, layer)| *layer)
}

fn is_ancestor(ancestor: &str, module: &str) -> bool {
    ancestor.is_empty() || module.starts_with(&format!("{ancestor}::"))
}

fn edges() -> Vec<Edge> {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    files.sort();
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(f)).collect();
    let mut edges = BTreeSet::new();
    for file in &files {
        let module = module_of(file);
        // Test-only modules (declared under `#[cfg(test)]`).
        if module.ends_with("tests") {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("readable source");
        let code = production_code(&text);
        for (path, line) in paths_in(&module, &code) {
            let to = owning_module(&path, &modules);
            if to == module || to.is_empty() && path.is_empty() {
                continue;
            }
            edges.insert(Edge {
                from: module.clone(),
                to,
                file: file
                    .strip_prefix(Path::new(env!("CARGO_MANIFEST_DIR")))
                    .expect("in the crate")
                    .display()
                    .to_string(),
                line,
            });
        }
    }
    edges.into_iter().collect()
}

/// An edge that breaks the layer rule, as `(from, to)`.
fn violation(edge: &Edge) -> Option<(String, String)> {
    let top = |m: &str| m.split("::").next().unwrap_or(m).to_owned();
    let from_top = top(&edge.from);
    if ANYWHERE.contains(&from_top.as_str()) {
        return None;
    }
    if from_top == "emulator" {
        let to_top = top(&edge.to);
        return (to_top != "emulator" && !EMULATOR_MAY_IMPORT.contains(&to_top.as_str()))
            .then(|| (edge.from.clone(), edge.to.clone()));
    }
    if edge.to.is_empty() {
        // The crate root re-exports nothing that code should reach through.
        return Some((edge.from.clone(), "crate".to_owned()));
    }
    let from = layer_of(&edge.from);
    let to = layer_of(&edge.to);
    match (from, to) {
        (Some(from), Some(to)) if to <= from => None,
        _ => Some((edge.from.clone(), edge.to.clone())),
    }
}

#[test]
fn every_module_has_a_layer() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let missing: Vec<String> = files
        .iter()
        .map(|f| module_of(f))
        .filter(|m| !m.is_empty() && m != "main" && !m.starts_with("emulator"))
        .filter(|m| layer_of(m).is_none())
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a layer in tests/layering.rs: {missing:?}"
    );
}

#[test]
fn imports_only_go_down() {
    let edges = edges();
    let mut broken: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for edge in &edges {
        if let Some(pair) = violation(edge) {
            broken
                .entry(pair)
                .or_default()
                .push(format!("{}:{}", edge.file, edge.line));
        }
    }
    let allowed: BTreeSet<(String, String)> = ALLOWED
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    let new: Vec<String> = broken
        .iter()
        .filter(|(pair, _)| !allowed.contains(*pair))
        .map(|((from, to), at)| {
            format!(
                "{from} -> {to} (layer {:?} -> {:?}) at {}",
                layer_of(from),
                layer_of(to),
                at.join(", ")
            )
        })
        .collect();
    let stale: Vec<String> = allowed
        .iter()
        .filter(|pair| !broken.contains_key(*pair))
        .map(|(from, to)| format!("{from} -> {to}"))
        .collect();
    assert!(
        new.is_empty(),
        "upward imports (move the type down, or import from below):\n  {}",
        new.join("\n  ")
    );
    assert!(
        stale.is_empty(),
        "allow-listed edges that no longer occur (remove them from ALLOWED):\n  {}",
        stale.join("\n  ")
    );
}

/// Tarjan's strongly connected components over the module graph. An edge
/// from a module to one of its ancestors (a child using its parent's
/// types, the parent being its namespace) is not counted; every other
/// edge is, siblings included.
#[test]
fn no_import_cycles() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for edge in edges() {
        if edge.from == "main" || is_ancestor(&edge.to, &edge.from) {
            continue;
        }
        graph
            .entry(edge.from.clone())
            .or_default()
            .insert(edge.to.clone());
        graph.entry(edge.to).or_default();
    }
    let cycles: BTreeSet<Vec<String>> = strongly_connected(&graph)
        .into_iter()
        .filter(|component| component.len() > 1)
        .map(|mut component| {
            component.sort();
            component
        })
        .collect();
    let allowed: BTreeSet<Vec<String>> = ALLOWED_CYCLES
        .iter()
        .map(|c| c.iter().map(|m| (*m).to_owned()).collect())
        .collect();
    let new: Vec<&Vec<String>> = cycles.difference(&allowed).collect();
    let stale: Vec<&Vec<String>> = allowed.difference(&cycles).collect();
    assert!(new.is_empty(), "import cycles: {new:?}");
    assert!(
        stale.is_empty(),
        "allow-listed cycles that no longer exist as listed (update ALLOWED_CYCLES): {stale:?}"
    );
}

fn strongly_connected(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        let graph = s.graph;
        for w in graph.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_owned());
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.out
}

#[test]
fn the_parser_sees_what_it_should() {
    assert_eq!(
        expand("crate::{a::{b, c as d}, e, f::self}"),
        vec!["crate::a::b", "crate::a::c", "crate::e", "crate::f"]
    );
    assert_eq!(resolve("x::y", "super::z::W").as_deref(), Some("x::z::W"));
    assert_eq!(resolve("x::y", "super::super::z").as_deref(), Some("z"));
    assert_eq!(resolve("x", "std::io"), None);
    let code = production_code(
        "use crate::a::B;\nfn f() { crate::c::d(); }\n// crate::e::f\n#[cfg(test)]\nmod tests {\n    use crate::g;\n}\n",
    );
    let found: Vec<String> = paths_in("m", &code).into_iter().map(|(p, _)| p).collect();
    assert_eq!(found, vec!["a::B", "c::d"]);
}
