//! The architecture: data flows one way, from the sources through the engine to the sinks, and
//! every reference from one module of the crate to another must point along that flow. `LAYERS`
//! below says which top-level module may import which; a `use`, a `pub use` or an inline
//! `crate::…`/`super::…` path against it fails here with its file and line, test code included.
//! Without this, a shortcut from a sink back into a source (or from the engine into a sink)
//! compiles fine and quietly ties the stages together. Only reads src/, so it never skips.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Which layer (top-level module of src/) may import which. Importing one's own layer is always
/// allowed, except between the `ISOLATED` children below. `lib` is src/lib.rs alone.
#[rustfmt::skip]
const LAYERS: &[(&str, &[&str])] = &[
    // The clock everything is stamped with; it needs nothing.
    ("time", &[]),
    // The vocabulary that flows between the stages: transitions and loop events, with their times.
    ("event", &["time"]),
    // Unit-name patterns, matched against the names events carry.
    ("glob", &["event", "time"]),
    // crashwatch's own logs and self-metrics, about the events it handles.
    ("internal_events", &["event", "time"]),
    // The start of the flow: reads systemd or Upstart and emits events, knowing nothing downstream.
    ("source", &["event", "time", "glob", "internal_events"]),
    // The crash-loop policy: pure decisions over events, no I/O, no idea where events come from.
    ("detect", &["event", "time", "glob"]),
    // Runs the detector over the event channel; sinks reach it through a trait it defines.
    ("engine", &["detect", "event", "time", "glob", "internal_events"]),
    // The end of the flow: consumes what the engine produces, never reaches back to a source.
    ("sink", &["engine", "detect", "event", "time", "glob", "internal_events"]),
    // Serves what the engine and the sinks hold (/metrics, status) over HTTP.
    ("http", &["engine", "sink", "detect", "event", "time", "glob", "internal_events"]),
    // Turns the configuration file into every stage's settings; no stage sees the file.
    ("config", &["source", "detect", "engine", "sink", "http",
                 "event", "time", "glob", "internal_events"]),
    // Readiness and watchdog notifications to the service manager; apart from the flow.
    ("notify", &["time", "internal_events"]),
    // The crate root wires the stages into one daemon; it knows nothing of the command line.
    ("lib", &["source", "detect", "engine", "sink", "http", "config", "notify",
              "event", "time", "glob", "internal_events"]),
    // The command-line grammar: it names configuration settings and event types, nothing more.
    ("cli", &["config", "event", "time"]),
    // The binary's own log lines on stderr (formats, journald); stamped with the clock only.
    ("logging", &["time"]),
    // One module per subcommand, the top of the stack: it may use everything.
    ("commands", &["lib", "cli", "source", "detect", "engine", "sink", "http", "config", "notify",
                   "event", "time", "glob", "internal_events", "logging"]),
];

/// Children of a layer that never import each other: each is a backend of its own and shares code
/// only through the layer's own module (`source/mod.rs`, `sink/mod.rs`).
const ISOLATED: &[(&str, &[&str])] = &[
    ("source", &["systemd", "upstart"]),
    ("sink", &["actions", "events", "prometheus", "statsd"]),
];

/// An import against the table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Violation {
    /// The importing file's module path (`lib` for the crate root).
    module: String,
    line: usize,
    /// Who imports: the layer, or the isolated child (`source::systemd`).
    importer: String,
    /// The imported path, absolute (`crate::sink::statsd::Client`).
    target: String,
    /// The rule broken, for the message.
    rule: String,
}

/// Every import against the table in `files`, given as (module path, source text) with the crate
/// root as `lib`. Importers in a layer the table lacks are not judged here (see
/// `every_top_level_module_has_a_row_in_the_layer_table`).
fn violations(files: &[(&str, &str)]) -> Vec<Violation> {
    let mut known: BTreeSet<&str> = LAYERS.iter().map(|(name, _)| *name).collect();
    known.extend(
        files
            .iter()
            .filter(|(module, _)| *module != "lib")
            .filter_map(|(module, _)| module.split("::").next()),
    );
    let mut found = Vec::new();
    for (module, text) in files {
        let file: Vec<String> = if *module == "lib" {
            Vec::new()
        } else {
            module.split("::").map(str::to_owned).collect()
        };
        let layer = layer_of(&file, &known);
        let Some(allowed) = may_import(&layer) else {
            continue;
        };
        for (line, target) in references(&file, text) {
            let target_layer = layer_of(&target, &known);
            let rule = if target_layer == layer {
                isolated_pair(&file, &target).map(|(a, b)| {
                    (
                        format!("{layer}::{a}"),
                        format!("{layer}::{a} and {layer}::{b} never import each other"),
                    )
                })
            } else if allowed.contains(&target_layer.as_str()) {
                None
            } else {
                let list = if allowed.is_empty() {
                    "nothing".to_owned()
                } else {
                    allowed.join(", ")
                };
                Some((layer.clone(), format!("{layer} may import: {list}")))
            };
            if let Some((importer, rule)) = rule {
                found.push(Violation {
                    module: module.to_string(),
                    line,
                    importer,
                    target: display_path(&target),
                    rule,
                });
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

fn may_import(layer: &str) -> Option<&'static [&'static str]> {
    LAYERS
        .iter()
        .find(|(name, _)| *name == layer)
        .map(|(_, allowed)| *allowed)
}

/// The layer of an absolute module path: its first segment when that is a top-level module, else
/// `lib` (the path names an item of the crate root).
fn layer_of(path: &[String], known: &BTreeSet<&str>) -> String {
    match path.first() {
        Some(first) if known.contains(first.as_str()) => first.clone(),
        _ => "lib".to_owned(),
    }
}

/// When `from` and `to` are two different isolated children of their (common) layer, their names.
fn isolated_pair<'a>(from: &'a [String], to: &'a [String]) -> Option<(&'a str, &'a str)> {
    let (layer, children) = ISOLATED
        .iter()
        .find(|(layer, _)| from.first().is_some_and(|f| f == layer))?;
    let a = from.get(1)?;
    let b = to.get(1)?;
    (to[0] == *layer && a != b && children.contains(&a.as_str()) && children.contains(&b.as_str()))
        .then_some((a.as_str(), b.as_str()))
}

fn display_path(path: &[String]) -> String {
    std::iter::once("crate")
        .chain(path.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join("::")
}

// ---- Reading one file: its references to modules of the crate, resolved to absolute paths. ----

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    /// `::`
    PathSep,
    Punct(char),
}

struct Token {
    tok: Tok,
    line: usize,
}

/// The tokens that matter for paths, without comments (doc comments included) and literals.
fn tokens(text: &str) -> Vec<Token> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            i = skip_block_comment(&c, i + 2, &mut line);
        } else if ch == '"' {
            i = skip_string(&c, i + 1, &mut line);
        } else if ch == '\'' {
            i = skip_char_or_lifetime(&c, i, &mut line);
        } else if ch == ':' && next == Some(':') {
            out.push(Token {
                tok: Tok::PathSep,
                line,
            });
            i += 2;
        } else if ch.is_ascii_digit() {
            while i < c.len() && is_ident_char(c[i]) {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && is_ident_char(c[i]) {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let after = c.get(i).copied();
            let hashes = c[i..].iter().take_while(|&&h| h == '#').count();
            match (word.as_str(), after) {
                ("b" | "c", Some('"')) => i = skip_string(&c, i + 1, &mut line),
                ("b", Some('\'')) => i = skip_char_or_lifetime(&c, i, &mut line),
                ("r" | "br" | "cr", Some('"' | '#')) if c.get(i + hashes) == Some(&'"') => {
                    i = skip_raw_string(&c, i + hashes + 1, hashes, &mut line);
                }
                ("r", Some('#'))
                    if c.get(i + 1).is_some_and(|&n| n.is_alphabetic() || n == '_') =>
                {
                    // A raw identifier, `r#type`.
                    let start = i + 1;
                    i = start;
                    while i < c.len() && is_ident_char(c[i]) {
                        i += 1;
                    }
                    out.push(Token {
                        tok: Tok::Ident(c[start..i].iter().collect()),
                        line,
                    });
                }
                _ => out.push(Token {
                    tok: Tok::Ident(word),
                    line,
                }),
            }
        } else {
            out.push(Token {
                tok: Tok::Punct(ch),
                line,
            });
            i += 1;
        }
    }
    out
}

fn is_ident_char(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// Past the end of a (nested) block comment whose `/*` ends before `i`.
fn skip_block_comment(c: &[char], mut i: usize, line: &mut usize) -> usize {
    let mut depth = 1;
    while i < c.len() && depth > 0 {
        match (c[i], c.get(i + 1).copied()) {
            ('/', Some('*')) => {
                depth += 1;
                i += 2;
            }
            ('*', Some('/')) => {
                depth -= 1;
                i += 2;
            }
            (ch, _) => {
                *line += usize::from(ch == '\n');
                i += 1;
            }
        }
    }
    i
}

/// Past the closing quote of a string literal whose opening quote is just before `i`.
fn skip_string(c: &[char], mut i: usize, line: &mut usize) -> usize {
    while i < c.len() {
        match c[i] {
            '\\' => {
                *line += usize::from(c.get(i + 1) == Some(&'\n'));
                i += 2;
            }
            '"' => return i + 1,
            ch => {
                *line += usize::from(ch == '\n');
                i += 1;
            }
        }
    }
    i
}

/// Past the end of a raw string literal (`r#"…"#`) whose opening quote is just before `i`.
fn skip_raw_string(c: &[char], mut i: usize, hashes: usize, line: &mut usize) -> usize {
    while i < c.len() {
        if c[i] == '"'
            && c[i + 1..]
                .iter()
                .take(hashes)
                .filter(|&&h| h == '#')
                .count()
                == hashes
        {
            return i + 1 + hashes;
        }
        *line += usize::from(c[i] == '\n');
        i += 1;
    }
    i
}

/// Past a character literal starting at the quote at `i`; for a lifetime or label, past the quote
/// only (its name is read as an identifier).
fn skip_char_or_lifetime(c: &[char], i: usize, line: &mut usize) -> usize {
    if c.get(i + 1) == Some(&'\\') {
        let mut j = i + 3;
        while j < c.len() && c[j] != '\'' {
            j += 1;
        }
        j + 1
    } else if c.get(i + 2) == Some(&'\'') {
        *line += usize::from(c[i + 1] == '\n');
        i + 3
    } else {
        i + 1
    }
}

/// A path as written, with the inline module (`mod tests { … }`) it is written in.
struct Written {
    scope: Vec<String>,
    line: usize,
    path: Vec<String>,
}

/// Every reference to a module of the crate in the file of module `file`, as (line, absolute
/// path): `use` trees (grouped ones leaf by leaf, at the leaf's line), inline `crate::`, `self::`
/// and `super::` paths, and paths through modules the file declares (`source::bus::f()` in the
/// crate root).
fn references(file: &[String], text: &str) -> Vec<(usize, Vec<String>)> {
    let toks = tokens(text);
    let tok = |i: usize| toks.get(i).map(|t| &t.tok);
    let mut written = Vec::new();
    // Modules declared (`mod x;` or `mod x { … }`) per inline scope, and the inline scopes that
    // `use super::*`, which sees the enclosing scope's modules.
    let mut declared: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
    let mut globbed: BTreeSet<Vec<String>> = BTreeSet::new();
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < toks.len() {
        let scope: Vec<String> = inline.iter().map(|(name, _)| name.clone()).collect();
        match &toks[i].tok {
            Tok::Ident(word) if word == "mod" => {
                if let Some(Tok::Ident(name)) = tok(i + 1) {
                    declared.entry(scope).or_default().insert(name.clone());
                    if tok(i + 2) == Some(&Tok::Punct('{')) {
                        inline.push((name.clone(), depth));
                        depth += 1;
                        i += 3;
                        continue;
                    }
                }
            }
            Tok::Ident(word) if word == "use" => {
                i += 1;
                let mut leaves = Vec::new();
                use_tree(&toks, &mut i, &[], &mut leaves);
                for (mut path, line) in leaves {
                    if path.len() > 1 && path.last().is_some_and(|s| s == "self") {
                        path.pop();
                    }
                    if path == ["super", "*"] {
                        globbed.insert(scope.clone());
                    }
                    written.push(Written {
                        scope: scope.clone(),
                        line,
                        path,
                    });
                }
                continue;
            }
            Tok::Ident(first)
                if tok(i + 1) == Some(&Tok::PathSep)
                    && !matches!(
                        i.checked_sub(1).and_then(tok),
                        Some(Tok::PathSep | Tok::Punct('$'))
                    ) =>
            {
                let line = toks[i].line;
                let mut path = vec![first.clone()];
                i += 1;
                while tok(i) == Some(&Tok::PathSep) {
                    match tok(i + 1) {
                        Some(Tok::Ident(segment)) => {
                            path.push(segment.clone());
                            i += 2;
                        }
                        _ => break,
                    }
                }
                written.push(Written { scope, line, path });
                continue;
            }
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|(_, opened)| *opened == depth) {
                    inline.pop();
                }
            }
            _ => {}
        }
        i += 1;
    }
    written
        .into_iter()
        .filter_map(|w| {
            resolve(file, &w.scope, &w.path, &declared, &globbed).map(|target| (w.line, target))
        })
        .collect()
}

/// Reads one use tree from `toks[*i]` on, appending each leaf as (full path, line of the leaf's
/// first token); `*` and a group's `self` stay as segments.
fn use_tree(
    toks: &[Token],
    i: &mut usize,
    prefix: &[String],
    leaves: &mut Vec<(Vec<String>, usize)>,
) {
    let mut path = prefix.to_vec();
    let Some(first) = toks.get(*i) else {
        return;
    };
    let line = first.line;
    if first.tok == Tok::PathSep {
        // `::name`: an external crate.
        path.push(String::new());
        *i += 1;
    }
    while let Some(token) = toks.get(*i) {
        match &token.tok {
            Tok::Ident(segment) => {
                path.push(segment.clone());
                *i += 1;
                if toks.get(*i).map(|t| &t.tok) == Some(&Tok::PathSep) {
                    *i += 1;
                    continue;
                }
                if toks.get(*i).map(|t| &t.tok) == Some(&Tok::Ident("as".to_owned())) {
                    *i += 2;
                }
                leaves.push((path, line));
                return;
            }
            Tok::Punct('*') => {
                path.push("*".to_owned());
                *i += 1;
                leaves.push((path, line));
                return;
            }
            Tok::Punct('{') => {
                *i += 1;
                while let Some(token) = toks.get(*i) {
                    match token.tok {
                        Tok::Punct('}') => {
                            *i += 1;
                            return;
                        }
                        Tok::Punct(',') => *i += 1,
                        _ => {
                            let before = *i;
                            use_tree(toks, i, &path, leaves);
                            if *i == before {
                                *i += 1;
                            }
                        }
                    }
                }
                return;
            }
            _ => return,
        }
    }
}

/// The absolute module path (without `crate`) that `path`, written in inline scope `scope` of the
/// file of module `file`, refers to; `None` for anything outside the crate (`std::…`, a type's
/// associated items, a local variable's enum).
fn resolve(
    file: &[String],
    scope: &[String],
    path: &[String],
    declared: &BTreeMap<Vec<String>, BTreeSet<String>>,
    globbed: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let first = path.first()?;
    match first.as_str() {
        "crate" => Some(path[1..].to_vec()),
        "self" | "super" => {
            let mut here: Vec<String> = file.iter().chain(scope).cloned().collect();
            let mut rest = if first == "self" { &path[1..] } else { path };
            while rest.first().is_some_and(|s| s == "super") {
                here.pop()?;
                rest = &rest[1..];
            }
            here.extend(rest.iter().cloned());
            Some(here)
        }
        _ => {
            // A module declared in this scope, or one an enclosing scope declares and this one
            // sees through `use super::*`.
            let mut at = scope.to_vec();
            loop {
                if declared.get(&at).is_some_and(|d| d.contains(first)) {
                    return Some(file.iter().chain(&at).chain(path).cloned().collect());
                }
                if at.is_empty() || !globbed.contains(&at) {
                    return None;
                }
                at.pop();
            }
        }
    }
}

// ---- The tree under src/. ----

/// A library source file: its path from the crate root and its module path.
struct SourceFile {
    path: String,
    module: String,
    text: String,
}

/// Every library file under src/, sorted by path. src/main.rs and src/bin/ are binaries: they use
/// the library by its name (`crashwatch::`), from outside.
fn crate_sources() -> Vec<SourceFile> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        let entries =
            fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("reading a directory entry").path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = Vec::new();
    walk(&root.join("src"), &mut paths);
    let mut files: Vec<SourceFile> = paths
        .into_iter()
        .filter_map(|full| {
            let relative = full
                .strip_prefix(root)
                .expect("a path under the crate root");
            let path = relative
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let module = module_path(&path)?;
            let text = fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {path}: {e}"));
            Some(SourceFile { path, module, text })
        })
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    assert!(
        files.iter().any(|f| f.module == "lib"),
        "no src/lib.rs under {}",
        root.display()
    );
    files
}

/// `src/lib.rs` → `lib`, `src/engine/mod.rs` → `engine`, `src/source/systemd/tracker.rs` →
/// `source::systemd::tracker`; `None` for the binaries.
fn module_path(path: &str) -> Option<String> {
    let inner = path.strip_prefix("src/")?.strip_suffix(".rs")?;
    if inner == "main" || inner.starts_with("bin/") {
        return None;
    }
    let mut segments: Vec<&str> = inner.split('/').collect();
    if segments.len() > 1 && segments.last() == Some(&"mod") {
        segments.pop();
    }
    Some(segments.join("::"))
}

fn layer_of_module(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

// ---- The tests. ----

#[test]
fn every_import_in_src_points_along_the_data_flow() {
    let files = crate_sources();
    let pairs: Vec<(&str, &str)> = files
        .iter()
        .map(|f| (f.module.as_str(), f.text.as_str()))
        .collect();
    let found = violations(&pairs);
    let path_of: BTreeMap<&str, &str> = files
        .iter()
        .map(|f| (f.module.as_str(), f.path.as_str()))
        .collect();
    let mut lines: Vec<(&str, &Violation)> = found
        .iter()
        .map(|v| (path_of[v.module.as_str()], v))
        .collect();
    lines.sort_by_key(|(path, v)| (*path, v.line, v.target.clone()));
    for (path, v) in &lines {
        eprintln!(
            "{path}:{}: {} imports {} ({})",
            v.line, v.importer, v.target, v.rule
        );
    }
    assert!(
        found.is_empty(),
        "{} imports point against the data flow (listed above; the table is LAYERS in \
         tests/integration/architecture.rs)",
        found.len()
    );
}

#[test]
fn every_top_level_module_has_a_row_in_the_layer_table() {
    let mut missing: BTreeMap<&str, &str> = BTreeMap::new();
    let files = crate_sources();
    for file in &files {
        let layer = layer_of_module(&file.module);
        if may_import(layer).is_none() {
            missing.entry(layer).or_insert(file.path.as_str());
        }
    }
    for (layer, path) in &missing {
        eprintln!(
            "{path}: top-level module `{layer}` has no row in LAYERS (tests/integration/\
             architecture.rs): place it there, with the layers it may import and in the rows of \
             the layers that may import it"
        );
    }
    assert!(
        missing.is_empty(),
        "{} top-level modules have no place in the layer table (listed above)",
        missing.len()
    );
}

#[test]
fn the_layer_table_is_well_formed_and_has_no_cycle() {
    let names: Vec<&str> = LAYERS.iter().map(|(name, _)| *name).collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len(), "a layer has two rows in LAYERS");
    for (name, allowed) in LAYERS {
        for target in *allowed {
            assert!(
                unique.contains(target),
                "{name} may import {target}, which has no row in LAYERS"
            );
            assert_ne!(
                name, target,
                "{name} lists itself; its own layer is always allowed"
            );
        }
    }
    for (layer, children) in ISOLATED {
        assert!(
            unique.contains(layer),
            "ISOLATED names {layer}, which has no row in LAYERS"
        );
        assert!(
            children.len() > 1,
            "ISOLATED row {layer} isolates fewer than two children"
        );
    }

    // Depth-first search; a layer met again while still on the stack closes a cycle.
    fn visit<'a>(layer: &'a str, stack: &mut Vec<&'a str>, done: &mut BTreeSet<&'a str>) {
        if done.contains(layer) {
            return;
        }
        if let Some(at) = stack.iter().position(|l| *l == layer) {
            let mut cycle = stack[at..].to_vec();
            cycle.push(layer);
            panic!("the layer table has a cycle: {}", cycle.join(" -> "));
        }
        stack.push(layer);
        for target in may_import(layer).unwrap_or_default() {
            visit(target, stack, done);
        }
        stack.pop();
        done.insert(layer);
    }
    let mut done = BTreeSet::new();
    for name in names {
        visit(name, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_checker_catches_imports_against_the_flow_and_ignores_comments_and_strings() {
    let files: &[(&str, &str)] = &[
        // A grouped use over several lines, from a source into a sink.
        (
            "source::bus",
            "use crate::{\n    event::Micros,\n    sink::statsd::Client,\n    time,\n};\n",
        ),
        // An inline path from a sink back into a source, after a string holding `//`.
        (
            "sink::statsd",
            "use super::Event;\n\
             fn f() {\n\
             let url = \"http://localhost\"; let at = crate::source::bus::now_micros();\n\
             }\n",
        ),
        // From one source backend into the other, through `super::` (from src/source/systemd/
        // mod.rs `super` is `source`) and `super::super::` (from a child file or an inline
        // module); `use super::*` in a test module is the file itself.
        (
            "source::systemd",
            "use super::bus;\n\
             use super::upstart::names;\n\
             #[cfg(test)]\n\
             mod tests {\n    use super::*;\n    use super::super::upstart::x;\n}\n",
        ),
        (
            "source::systemd::tracker",
            "use super::verdict::Ending;\nuse super::super::upstart::tracker::signal_number;\n",
        ),
        // Within a layer is free, to the layer's own module and to non-isolated children.
        (
            "source::journal",
            "use crate::source::systemd::verdict;\nuse super::bus::decode;\n",
        ),
        // Comments, doc comments, strings and raw strings are not imports; nor is `$crate`.
        (
            "engine",
            "//! Sends to [`crate::sink`].\n\
             // crate::sink::statsd\n\
             /* crate::sink::events */\n\
             /// Like crate::sink::Sink.\n\
             const A: &str = \"crate::sink\";\n\
             const B: &str = r#\"\"crate::sink::x\"\"#;\n\
             const C: char = '\"'; const D: &str = \"a \\\" crate::sink\";\n\
             macro_rules! m { () => { $crate::sink::x() } }\n\
             use crate::detect::Detector;\n\
             pub use crate::sink::Sink;\n",
        ),
        // The crate root reaches modules without `crate::`; it may not reach the command line.
        (
            "lib",
            "pub mod cli;\npub mod sink;\npub mod source;\n\
             use source::systemd::SystemdSource;\n\
             fn f() { cli::Cli::parse(); sink::prometheus::describe(); }\n",
        ),
        // Any layer naming an item of the crate root reaches into the wiring.
        ("detect", "fn f() -> crate::RunError { todo!() }\n"),
    ];
    let found: Vec<(String, usize, String)> = violations(files)
        .into_iter()
        .map(|v| (v.module, v.line, v.target))
        .collect();
    let expected: Vec<(String, usize, String)> = [
        ("detect", 1, "crate::RunError"),
        ("engine", 10, "crate::sink::Sink"),
        ("lib", 5, "crate::cli::Cli::parse"),
        ("sink::statsd", 3, "crate::source::bus::now_micros"),
        ("source::bus", 3, "crate::sink::statsd::Client"),
        ("source::systemd", 2, "crate::source::upstart::names"),
        ("source::systemd", 6, "crate::source::upstart::x"),
        (
            "source::systemd::tracker",
            2,
            "crate::source::upstart::tracker::signal_number",
        ),
    ]
    .into_iter()
    .map(|(m, l, t)| (m.to_owned(), l, t.to_owned()))
    .collect();
    assert_eq!(found, expected);

    let rules: BTreeSet<String> = violations(files).into_iter().map(|v| v.rule).collect();
    assert!(rules.contains("source may import: event, time, glob, internal_events"));
    assert!(rules.contains("source::systemd and source::upstart never import each other"));
}
