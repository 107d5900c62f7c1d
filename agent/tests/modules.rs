//! The house rules of the agent's modules, read off the source: the
//! top-level modules of `agent/src` import one another without a cycle, and
//! the contract crate (`shared`) depends on neither program.
//!
//! An edge is any `crate::<module>` path outside comments and outside a
//! file's `#[cfg(test)] mod tests` (test code may reach anywhere).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src` belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap();
    first.trim_end_matches(".rs").to_owned()
}

/// The modules named by `crate::<name>` paths and `use crate::{a, b::c}`
/// groups in `code`.
fn referenced(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for part in group.split(',') {
                let name = ident(part.trim());
                if !name.is_empty() && name != "self" {
                    out.insert(name);
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out
}

/// The code of a file without comments and without its unit tests.
fn production_code(text: &str) -> String {
    let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        let code = production_code(&fs::read_to_string(&file).unwrap());
        let edges = graph.entry(module.clone()).or_default();
        edges.extend(referenced(&code).into_iter().filter(|m| *m != module));
    }
    graph
}

/// A cycle through `graph`, if there is one.
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
        if !done.insert(node.to_owned()) {
            return None;
        }
        path.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_agent_modules_import_without_a_cycle() {
    let graph = graph();
    assert!(
        graph.contains_key("daemon") && graph.contains_key("cli"),
        "the two wings are where this test looks: {graph:?}"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "an import cycle among agent/src's modules: {}\nthe edges: {graph:#?}",
            cycle.join(" -> ")
        );
    }
}

#[test]
fn the_core_reaches_neither_wing() {
    for (module, edges) in graph() {
        if module == "cli" || module == "daemon" || module == "main" || module == "lib" {
            continue;
        }
        assert!(
            !edges.contains("cli") && !edges.contains("daemon"),
            "{module} imports from a wing: {edges:?}"
        );
    }
}

#[test]
fn the_cycle_finder_finds_one() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    graph.entry("a".into()).or_default().insert("b".into());
    graph.entry("b".into()).or_default().insert("c".into());
    assert_eq!(find_cycle(&graph), None);
    graph.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&graph),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    assert_eq!(
        referenced("use crate::{config::Settings, store, self};\nlet x = crate::clock::now();"),
        ["clock", "config", "store"].map(String::from).into()
    );
}

#[test]
fn the_contract_crate_depends_on_neither_program() {
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared");
    let manifest = fs::read_to_string(shared.join("Cargo.toml")).unwrap();
    for program in ["regent-agent", "regent-helper"] {
        assert!(
            !manifest.contains(program),
            "shared/Cargo.toml names {program}"
        );
    }
    let mut files = Vec::new();
    rust_files(&shared.join("src"), &mut files);
    for file in files {
        let code = production_code(&fs::read_to_string(&file).unwrap());
        for program in ["regent_agent", "regent_helper"] {
            assert!(!code.contains(program), "{} uses {program}", file.display());
        }
    }
}
