//! The library's module structure: no module imports one that imports it back, directly or
//! through others, so each can be read (and changed) knowing only what lies beneath it.
//!
//! Each file under `src/` is a module (`src/api/table.rs` is `api::table`, `src/api/mod.rs` is
//! `api`). A module depends on another when it names it, or an item in it, through `crate::` or
//! `super::`, in a `use` line or inline; `mod x;` declarations are not imports. Comments and test
//! modules (from `#[cfg(test)] mod …` to the end of the file) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Each module's source text, and whether it is a directory's `mod.rs` (whose `super` is its parent's parent).
fn module_files(dir: &Path, under: &[String], out: &mut BTreeMap<String, (String, bool)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if path.is_dir() {
            let mut deeper = under.to_vec();
            deeper.push(name);
            module_files(&path, &deeper, out);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            let mut segments = under.to_vec();
            if stem != "mod" {
                segments.push(stem.to_owned());
            }
            if segments == ["lib"] || segments == ["main"] {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            out.insert(segments.join("::"), (text, stem == "mod"));
        }
    }
}

/// The text without comments and without the test modules at its end.
fn code(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r);
        } else if rest.starts_with("//") {
            rest = rest.find('\n').map_or("", |i| &rest[i..]);
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    let mut from = 0;
    while let Some(i) = out[from..].find("#[cfg(test)]") {
        let at = from + i;
        let after = out[at + "#[cfg(test)]".len()..].trim_start();
        if after.starts_with("mod ") || after.starts_with("pub(crate) mod ") {
            out.truncate(at);
            break;
        }
        from = at + 1;
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The full paths a `use` tree (without `use` and `;`) names.
fn expand(prefix: &str, tree: &str, out: &mut Vec<String>) {
    let mut depth = 0;
    let mut start = 0;
    let mut parts = Vec::new();
    for (i, c) in tree.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&tree[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&tree[start..]);
    for part in parts.into_iter().filter(|p| !p.is_empty()) {
        match part.find('{') {
            Some(i) if part.ends_with('}') => expand(
                &format!("{prefix}{}", &part[..i]),
                &part[i + 1..part.len() - 1],
                out,
            ),
            _ => out.push(format!("{prefix}{part}")),
        }
    }
}

/// A `use` tree without whitespace and without the new names of `x as y`.
fn without_renames(tree: &str) -> String {
    let words: Vec<&str> = tree.split_whitespace().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < words.len() {
        if words[i] == "as" && i + 1 < words.len() {
            // `y`, or `y,` / `y}` / `y},`: keep what follows the name.
            out.push_str(words[i + 1].trim_start_matches(is_ident));
            i += 2;
        } else {
            out.push_str(words[i]);
            i += 1;
        }
    }
    out
}

/// Every `crate::…`, `super::…` and `self::…` path in `code`, with `use` trees expanded.
fn paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    let mut offset = 0;
    while let Some(i) = rest.find(['u', 'c', 's']) {
        let here = &rest[i..];
        // Not the middle of a word or of a longer path.
        let word = !code[..offset + i].ends_with(|c: char| is_ident(c) || c == ':');
        if word && here.starts_with("use") && here[3..].starts_with(char::is_whitespace) {
            let end = here.find(';').unwrap_or(here.len());
            expand("", &without_renames(&here[3..end]), &mut out);
            offset += i + end;
            rest = &rest[i + end..];
            continue;
        }
        if word
            && ["crate::", "super::", "self::"]
                .iter()
                .any(|p| here.starts_with(p))
        {
            let len = here
                .find(|c: char| !(is_ident(c) || c == ':'))
                .unwrap_or(here.len());
            out.push(here[..len].to_owned());
            offset += i + len;
            rest = &rest[i + len..];
            continue;
        }
        offset += i + 1;
        rest = &rest[i + 1..];
    }
    out
}

/// Which modules each module imports.
fn graph() -> Graph {
    let mut files = BTreeMap::new();
    module_files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
        &[],
        &mut files,
    );
    let mut graph = Graph::new();
    for (name, (text, is_dir_module)) in &files {
        let here: Vec<&str> = name.split("::").collect();
        let mut imports = BTreeSet::new();
        for path in paths(&code(text)) {
            let mut segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            let absolute: Vec<&str> = match segments.first().copied() {
                Some("crate") => segments.split_off(1),
                Some("self") => [&here[..], &segments[1..]].concat(),
                Some("super") => {
                    let mut base = if *is_dir_module {
                        here.clone()
                    } else {
                        here[..here.len() - 1].to_vec()
                    };
                    let mut rest = &segments[1..];
                    while let Some(("super", r)) = rest.split_first().map(|(s, r)| (*s, r)) {
                        base.pop();
                        rest = r;
                    }
                    [&base[..], rest].concat()
                }
                _ => continue,
            };
            // The longest prefix that is a module.
            if let Some(target) = (1..=absolute.len())
                .rev()
                .map(|n| absolute[..n].join("::"))
                .find(|m| files.contains_key(m))
                && &target != name
            {
                imports.insert(target);
            }
        }
        graph.insert(name.clone(), imports);
    }
    graph
}

/// The groups of modules that reach each other (Tarjan's strongly connected components).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in &s.graph[v] {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.stack.contains(&w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let at = s.stack.iter().rposition(|m| *m == v).unwrap();
            let group: Vec<String> = s.stack.drain(at..).map(str::to_owned).collect();
            if group.len() > 1 {
                s.found.push(group);
            }
        }
    }
    let mut state = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !state.index.contains_key(v.as_str()) {
            visit(&mut state, v);
        }
    }
    state.found
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let graph = graph();
    assert!(graph.contains_key("gateway") && graph["gateway"].contains("proxy::forward"));
    let mut report = String::new();
    for group in cycles(&graph) {
        report.push_str(&format!(
            "modules that import each other: {}\n",
            group.join(", ")
        ));
        for module in &group {
            let within: Vec<&str> = graph[module]
                .iter()
                .filter(|m| group.contains(m))
                .map(String::as_str)
                .collect();
            report.push_str(&format!("  {module} imports {}\n", within.join(", ")));
        }
    }
    assert!(report.is_empty(), "{report}");
}

/// Each top-level module with everything under it (`api` holds `api::admin`, `api::nexus`, …),
/// and which other top-level modules it imports.
fn areas(graph: &Graph) -> Graph {
    let top = |m: &str| m.split("::").next().unwrap_or_default().to_owned();
    let mut areas = Graph::new();
    for (module, imports) in graph {
        let area = areas.entry(top(module)).or_default();
        area.extend(imports.iter().map(|i| top(i)));
    }
    for (area, imports) in areas.iter_mut() {
        imports.remove(area);
    }
    areas
}

#[test]
fn top_level_modules_form_layers() {
    let areas = areas(&graph());
    let mut report = String::new();
    for group in cycles(&areas) {
        report.push_str(&format!(
            "top-level modules that import each other: {}\n",
            group.join(", ")
        ));
        for area in &group {
            let within: Vec<&str> = areas[area]
                .iter()
                .filter(|m| group.contains(m))
                .map(String::as_str)
                .collect();
            report.push_str(&format!("  {area} imports {}\n", within.join(", ")));
        }
    }
    assert!(report.is_empty(), "{report}");
}

#[test]
fn the_composition_root_is_imported_by_nothing_and_the_transport_by_no_handler_above_it() {
    let areas = areas(&graph());
    let importing_app: Vec<&String> = areas
        .iter()
        .filter(|(_, i)| i.contains("app"))
        .map(|(a, _)| a)
        .collect();
    assert!(
        importing_app.is_empty(),
        "app is imported by {importing_app:?}"
    );
    let above = ["api", "gateway", "app", "reload", "services"];
    let server = &areas["server"];
    let reached: Vec<&str> = above
        .iter()
        .copied()
        .filter(|a| server.contains(*a))
        .collect();
    assert!(reached.is_empty(), "server imports {reached:?}");
}

#[test]
fn the_cycle_check_sees_use_trees_inline_paths_and_super() {
    let code = code(
        "use crate::a::{self, b::{C, D as E}};\nuse super::x as y;\nfn f() { crate::c::d(); }\n// crate::hidden\n#[cfg(test)]\nmod tests { use crate::t; }\n",
    );
    assert_eq!(
        paths(&code),
        [
            "crate::a::self",
            "crate::a::b::C",
            "crate::a::b::D",
            "super::x",
            "crate::c::d"
        ]
    );
    let looped: Graph = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]
        .iter()
        .fold(Graph::new(), |mut g, (from, to)| {
            g.entry((*from).to_owned())
                .or_default()
                .insert((*to).to_owned());
            g.entry((*to).to_owned()).or_default();
            g
        });
    let found = cycles(&looped);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0].iter().collect::<BTreeSet<_>>(),
        ["a", "b", "c"]
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>()
            .iter()
            .collect()
    );
}
