//! The workspace's shape, checked: no module of any crate depends on a module that depends on
//! it back (directly or around a loop), so each type lives where its meaning lives and a module
//! can be read, and changed, from the bottom up.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

const CRATES: [&str; 4] = ["api", "delivery", "dispatcher", "shared"];

/// A module's path inside its crate (`store::memory`), from its file.
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module paths `code` names after `crate::` or `super::` (grouped `use` lists included),
/// outside comments, as written: `store::rules`, `super::redis_store`.
fn references(code: &str) -> Vec<String> {
    let code: String = code
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    let mut found = Vec::new();
    for root in ["crate::", "super::"] {
        for (at, _) in code.match_indices(root) {
            let rest = &code[at + root.len()..];
            let base = if root == "super::" { "super::" } else { "" };
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a::b, c, d::{e, f}}`: each first-level path.
                let mut depth = 0;
                let mut item = String::new();
                for ch in group.chars() {
                    match ch {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            found.push(format!("{base}{}", path_head(&item)));
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    item.push(ch);
                }
                if !item.trim().is_empty() {
                    found.push(format!("{base}{}", path_head(&item)));
                }
            } else {
                found.push(format!("{base}{}", path_head(rest)));
            }
        }
    }
    found
}

/// The module part of a path: its lowercase segments (`store::rules::rate` → `store::rules`).
fn path_head(path: &str) -> String {
    path.trim()
        .split("::")
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .take_while(|s| s.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join("::")
}

/// Which modules of one crate each module uses, ancestors and descendants left out (a parent
/// declares its children, and children may use their parent's items).
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|f| module_of(src, f))
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut graph = BTreeMap::new();
    for file in &files {
        let module = module_of(src, file);
        if module == "lib" || module == "main" {
            continue;
        }
        let code = std::fs::read_to_string(file).unwrap();
        let mut uses = BTreeSet::new();
        for reference in references(&code) {
            let path = match reference.strip_prefix("super::") {
                Some(rest) => {
                    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
                    [parent, rest]
                        .iter()
                        .filter(|s| !s.is_empty())
                        .copied()
                        .collect::<Vec<_>>()
                        .join("::")
                }
                None => reference,
            };
            // The longest known module the path starts with.
            let mut target = path.as_str();
            while !modules.contains(target) {
                match target.rsplit_once("::") {
                    Some((shorter, _)) => target = shorter,
                    None => break,
                }
            }
            let related = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}::"));
            if modules.contains(target) && !related(&module, target) && !related(target, &module) {
                uses.insert(target.to_owned());
            }
        }
        graph.insert(module, uses);
    }
    graph
}

/// A loop in the graph, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn no_crate_has_a_module_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in CRATES {
        let graph = module_graph(&root.join(krate).join("src"));
        assert!(graph.len() > 1, "{krate}: no modules found");
        if let Some(cycle) = find_cycle(&graph) {
            panic!("{krate}: module cycle {}", cycle.join(" → "));
        }
    }
}

/// The checker itself: it sees a loop through a grouped `use`, and through `super::`.
#[test]
fn the_cycle_check_finds_a_planted_cycle() {
    let refs = references("use crate::{a::X, b::{c::Y, Z}};\nlet v = super::d::f();\n// crate::e");
    assert_eq!(refs, ["a", "b", "super::d::f"]);
    let graph = BTreeMap::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        ("b".to_owned(), BTreeSet::from(["c".to_owned()])),
        ("c".to_owned(), BTreeSet::from(["a".to_owned()])),
    ]);
    assert_eq!(find_cycle(&graph).unwrap(), ["a", "b", "c", "a"]);
}
