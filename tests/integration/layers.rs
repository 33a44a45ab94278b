//! The layout shows the layers, and dependencies point down only: this reads every `crate::` path in `src/` and
//! checks that no module reaches a layer above its own, and that no two modules reach each other through any
//! chain of imports (no circle, a parent module and its public children included).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layers, lowest first. A module may use its own layer and the ones below.
const LAYERS: [&[&str]; 10] = [
    &["error", "telemetry"],
    &["model"],
    &["config"],
    &["space"],
    &["protocol", "store"],
    &["feed"],
    &["plugin"],
    &["engine"],
    &["cluster"],
    &["net", "client"],
];

fn layer(module: &str) -> usize {
    let top = module.split('/').next().unwrap();
    LAYERS.iter().position(|l| l.contains(&top)).unwrap_or_else(|| panic!("module `{top}` has no layer"))
}

/// Every module file of the library (`engine/mod.rs` is `engine`), with the modules it names.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && p.file_name().unwrap() != "bin" {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(p);
            }
        }
    }
    let name = |p: &Path| {
        let rel = p.strip_prefix(&root).unwrap().with_extension("");
        let s = rel.to_string_lossy().replace('\\', "/");
        s.strip_suffix("/mod").unwrap_or(&s).to_string()
    };
    let modules: BTreeSet<String> = files.iter().map(|p| name(p)).collect();
    let mut graph = BTreeMap::new();
    for p in &files {
        let me = name(p);
        if me == "main" || me == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(p).unwrap();
        // Test code may reach anywhere: only what the module itself uses counts.
        let code = text.split("#[cfg(test)]").next().unwrap();
        // Comments (doc links included) are not imports.
        let code: String = code.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        let code = code.as_str();
        let mut deps = BTreeSet::new();
        for (i, _) in code.match_indices("crate::") {
            let path: String =
                code[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
            let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            // The longest prefix that is a module file.
            let target = (1..=segs.len()).rev().map(|n| segs[..n].join("/")).find(|m| modules.contains(m));
            if let Some(t) = target.filter(|t| *t != me) {
                deps.insert(t);
            }
        }
        // Relative paths: `super::` names the parent module, `child::` a submodule of this one. A private
        // submodule (`mod fast;`, not `pub mod`) is its parent's own code split over two files: its use of the
        // parent is not an edge.
        if code.contains("super::")
            && let Some((parent, short)) = me.rsplit_once('/')
        {
            let parent_file = [format!("{parent}/mod.rs"), format!("{parent}.rs")]
                .into_iter()
                .map(|f| root.join(f))
                .find(|f| f.exists())
                .expect("a parent module file");
            let parent_text = std::fs::read_to_string(parent_file).unwrap();
            let private = parent_text.lines().any(|l| l.trim() == format!("mod {short};"));
            if !private {
                deps.insert(parent.to_string());
            }
        }
        for child in modules.iter().filter(|m| m.rsplit_once('/').is_some_and(|(p, _)| p == me)) {
            let short = child.rsplit_once('/').unwrap().1;
            let named = code
                .match_indices(&format!("{short}::"))
                .any(|(i, _)| !code[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':'));
            if named {
                deps.insert(child.clone());
            }
        }
        graph.insert(me, deps);
    }
    graph
}

#[test]
fn dependencies_point_down_the_layers() {
    let mut upward = Vec::new();
    for (module, deps) in graph() {
        for d in deps {
            if layer(&d) > layer(&module) {
                upward.push(format!("{module} -> {d}"));
            }
        }
    }
    assert!(upward.is_empty(), "imports that reach a higher layer: {upward:#?}");
}

#[test]
fn no_module_reaches_itself() {
    let graph = graph();
    let mut circles = Vec::new();
    for start in graph.keys() {
        // Depth-first from each module: does any chain of imports come back to it?
        let mut seen = BTreeSet::new();
        let mut stack: Vec<(String, Vec<String>)> = vec![(start.clone(), vec![start.clone()])];
        while let Some((m, trail)) = stack.pop() {
            for d in graph.get(&m).into_iter().flatten() {
                if d == start {
                    circles.push(format!("{} -> {d}", trail.join(" -> ")));
                } else if seen.insert(d.clone()) {
                    let mut t = trail.clone();
                    t.push(d.clone());
                    stack.push((d.clone(), t));
                }
            }
        }
    }
    assert!(circles.is_empty(), "import circles: {circles:#?}");
}

#[test]
fn the_check_reads_the_imports() {
    let g = graph();
    assert!(g["engine"].contains("space/model") && g["feed/journal"].contains("protocol"), "{g:#?}");
    assert!(g.len() > 30, "every module file is read");
}
