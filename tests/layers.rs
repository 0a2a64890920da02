//! The module layering that the README's Development section describes, checked from the
//! sources: a module imports only from layers below its own, the commands never import each
//! other, and within a module no two files import each other, directly or through others.
//!
//! The check reads `use` paths and qualified paths (`crate::x::`, `super::x::`) in code
//! outside comments and outside the `#[cfg(test)]` module at the end of each file, where
//! `super::` means the file itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Each top-level module's layer; a module may import only from lower layers.
const LAYERS: &[(&str, u32)] = &[
    // Leaves.
    ("tls", 0),
    ("alloc", 0),
    // Plain data and watches.
    ("cluster", 1),
    // The policy engine.
    ("policy", 2),
    // The wire format and the pure decision.
    ("admission", 3),
    // The API server offline, and the observers of decisions.
    ("sim", 4),
    ("metrics", 4),
    ("decision_log", 4),
    // The command line's arguments.
    ("cli", 5),
    // What the commands share: argument checks, logging set-up, certificate files.
    ("config", 6),
    ("logging", 6),
    ("certs", 6),
    // The commands; none imports another.
    ("serve", 7),
    ("audit", 7),
    ("casefile", 7),
    ("bench", 7),
    ("manifests", 7),
];

fn layer(module: &str) -> u32 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, l)| *l)
        .unwrap_or_else(|| {
            panic!(
                "src/{module}: add it to LAYERS in tests/layers.rs and to the README's module map"
            )
        })
}

/// The file's code: comments and the trailing test module left out.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The identifiers that follow `prefix` in `code` (`crate::` gives the top-level modules).
fn after(code: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(i) = rest.find(prefix) {
        let preceded_by_ident = rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
        rest = &rest[i + prefix.len()..];
        let ident: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !preceded_by_ident && !ident.is_empty() {
            out.insert(ident);
        }
    }
    out
}

/// For a `mod.rs`: which item names it re-exports from which child (`pub use child::{A, B}`).
fn reexports(code: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for statement in code.split(';') {
        let Some(rest) = statement.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((child, items)) = rest.split_once("::") else {
            continue;
        };
        for item in items
            .split([',', '{', '}', ' ', '\n'])
            .filter(|s| !s.is_empty())
        {
            out.insert(item.to_string(), child.to_string());
        }
    }
    out
}

fn src() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every top-level module under `src`: its name and its files (name within the module, code).
fn modules(src: &Path) -> BTreeMap<String, Vec<(String, String)>> {
    let mut out: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        if path.is_dir() {
            for file in std::fs::read_dir(&path).unwrap() {
                let file = file.unwrap().path();
                assert!(
                    !file.is_dir(),
                    "{}: nested module directories are not covered by this check",
                    file.display()
                );
                let stem = file.file_stem().unwrap().to_string_lossy().to_string();
                let text = std::fs::read_to_string(&file).unwrap();
                out.entry(name.clone())
                    .or_default()
                    .push((stem, code(&text)));
            }
        } else if name != "lib" && name != "main" {
            let text = std::fs::read_to_string(&path).unwrap();
            out.entry(name.clone())
                .or_default()
                .push(("mod".into(), code(&text)));
        }
    }
    out
}

/// Imports from a layer that is not below the importer's.
fn layer_violations(src: &Path) -> Vec<String> {
    let mut violations = Vec::new();
    for (module, files) in modules(src) {
        for (file, code) in &files {
            for imported in after(code, "crate::") {
                if imported == module {
                    continue;
                }
                if layer(&imported) >= layer(&module) {
                    violations.push(format!(
                        "src/{module} ({file}) imports crate::{imported}, which is not in a lower layer"
                    ));
                }
            }
        }
    }
    violations
}

/// Import cycles among the files of one module.
fn cycles(src: &Path) -> Vec<String> {
    let mut cycles = Vec::new();
    for (module, files) in modules(src) {
        let names: BTreeSet<&str> = files.iter().map(|(f, _)| f.as_str()).collect();
        let reexported = files
            .iter()
            .find(|(f, _)| f == "mod")
            .map(|(_, c)| reexports(c))
            .unwrap_or_default();
        let mut edges: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for (file, code) in &files {
            let mut targets = after(code, &format!("crate::{module}::"));
            if file == "mod" {
                // The parent's own code using a child (declarations and re-exports aside).
                let used: String = code
                    .split(';')
                    .filter(|s| {
                        let s = s.trim_start();
                        !s.starts_with("pub mod")
                            && !s.starts_with("mod ")
                            && !s.starts_with("pub use")
                    })
                    .collect::<Vec<_>>()
                    .join(";");
                for child in names.iter().filter(|n| **n != "mod") {
                    if after(&used, &format!("{child}::")).is_empty()
                        && !used.contains(&format!("use {child}::"))
                        && !used.contains(&format!(" {child}::"))
                    {
                        continue;
                    }
                    targets.insert(child.to_string());
                }
            } else {
                targets.extend(after(code, "super::"));
            }
            let resolved = targets
                .into_iter()
                .map(|t| {
                    if names.contains(t.as_str()) {
                        t
                    } else {
                        reexported.get(&t).cloned().unwrap_or_else(|| "mod".into())
                    }
                })
                .filter(|t| t != file)
                .collect();
            edges.insert(file.as_str(), resolved);
        }
        // Depth-first search for a path that returns to where it started.
        for start in edges.keys() {
            let mut stack = vec![(start.to_string(), vec![start.to_string()])];
            let mut seen = BTreeSet::new();
            while let Some((node, path)) = stack.pop() {
                for next in edges.get(node.as_str()).into_iter().flatten() {
                    if next == start {
                        cycles.push(format!("src/{module}: {} -> {start}", path.join(" -> ")));
                    } else if seen.insert(next.clone()) {
                        let mut p = path.clone();
                        p.push(next.clone());
                        stack.push((next.clone(), p));
                    }
                }
            }
        }
    }
    cycles.sort();
    cycles.dedup();
    cycles
}

#[test]
fn modules_import_only_from_lower_layers() {
    let violations = layer_violations(&src());
    assert!(violations.is_empty(), "{violations:#?}");
}

#[test]
fn files_within_a_module_do_not_import_each_other_in_a_cycle() {
    let cycles = cycles(&src());
    assert!(cycles.is_empty(), "{cycles:#?}");
}

/// The checks find what they are for, on a small tree that has one of each problem.
#[test]
fn the_checks_find_an_upward_import_and_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let write = |path: &str, text: &str| {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    };
    write("tls.rs", "pub fn now() {}\n");
    write(
        "cluster/mod.rs",
        "pub mod state;\npub use state::ClusterState;\n",
    );
    write(
        "cluster/state.rs",
        "use crate::tls;\npub struct ClusterState;\n",
    );
    write(
        "policy/mod.rs",
        "pub mod compile;\npub mod eval;\npub use eval::Stage;\n",
    );
    write("policy/compile.rs", "use super::Stage;\n");
    write(
        "policy/eval.rs",
        "use super::compile::x;\npub enum Stage {}\nfn f() { crate::serve::run() }\n",
    );
    write("serve.rs", "use crate::policy::Stage;\n");
    assert_eq!(
        layer_violations(dir.path()),
        vec!["src/policy (eval) imports crate::serve, which is not in a lower layer".to_string()]
    );
    let found = cycles(dir.path());
    assert!(
        found
            .iter()
            .any(|c| c.contains("compile -> eval -> compile")),
        "{found:#?}"
    );
    write("policy/compile.rs", "use super::eval::Stage;\n");
    write("policy/eval.rs", "pub enum Stage {}\n");
    assert!(cycles(dir.path()).is_empty());
}

#[test]
fn the_checks_see_imports_and_cycles() {
    let code = code("use crate::policy::Stage;\n// use crate::serve::x;\nfn f() { super::eval::run(); crate::cluster::x(); }\n#[cfg(test)]\nmod tests { use crate::sim; }");
    assert_eq!(
        after(&code, "crate::"),
        BTreeSet::from(["cluster".to_string(), "policy".to_string()])
    );
    assert_eq!(
        after(&code, "super::"),
        BTreeSet::from(["eval".to_string()])
    );
    let r = reexports("pub use eval::{Evaluator, PolicyOutput};\npub use error::PolicyError;");
    assert_eq!(r["PolicyOutput"], "eval");
    assert_eq!(r["PolicyError"], "error");
}
