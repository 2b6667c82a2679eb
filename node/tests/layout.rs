//! The layout ARCHITECTURE.md promises, read off the sources: no import cycle between the
//! node's top-level modules, `mpc` never imports `network`, and only the subcommands import
//! `cli`. Test modules (`#[cfg(test)] mod tests` at the end of a file) are not counted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`mpc` for `src/mpc/sign/core.rs`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules `text` names as `crate::<module>`.
fn imports(text: &str) -> BTreeSet<String> {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    code.match_indices("crate::")
        .filter_map(|(i, m)| {
            let rest = &code[i + m.len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let module = module_of(&src, &file);
        let text = std::fs::read_to_string(&file).unwrap();
        for target in imports(&text) {
            if target != module {
                edges.entry(module.clone()).or_default().insert(target);
            }
        }
    }
    edges
}

fn reaches(edges: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(m) = stack.pop() {
        for next in edges.get(&m).into_iter().flatten() {
            if next == to {
                return true;
            }
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    false
}

#[test]
fn the_scan_sees_imports_and_ignores_tests() {
    let text = "use crate::mpc::wire;\nfn f() { crate::values::parse_topic(\"x\"); }\n#[cfg(test)]\nmod tests {\n    use crate::cli::Cli;\n}\n";
    let found: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(found, ["mpc", "values"]);
    // The real graph has the edges the node is built from.
    let edges = graph();
    assert!(edges["node"].contains("mpc") && edges["network"].contains("mpc"));
}

#[test]
fn no_top_level_module_imports_itself_back() {
    let edges = graph();
    let cycles: Vec<String> = edges
        .iter()
        .flat_map(|(from, tos)| tos.iter().map(move |to| (from, to)))
        .filter(|(from, to)| reaches(&edges, to, from))
        .map(|(from, to)| format!("{from} -> {to}"))
        .collect();
    assert!(cycles.is_empty(), "import cycles: {cycles:?}\n{edges:#?}");
}

#[test]
fn mpc_does_not_import_network_and_only_commands_import_cli() {
    let edges = graph();
    assert!(!edges["mpc"].contains("network"), "{:?}", edges["mpc"]);
    let cli_users: Vec<&String> = edges
        .iter()
        .filter(|(from, tos)| tos.contains("cli") && from.as_str() != "main")
        .map(|(from, _)| from)
        .collect();
    assert_eq!(cli_users, ["commands"]);
}
