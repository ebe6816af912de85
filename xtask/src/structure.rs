//! `structure`: the layout rules of docs/development/code-structure.md,
//! checked on the source text so that they hold after every change:
//!
//! - no source file of a crate over [`MAX_LINES`] lines;
//! - no `unsafe` block, function, impl or trait outside `daemon/src/sys/`;
//! - no import cycle between the modules of a crate. A module uses another
//!   when a `use` or a path (`crate::`, `super::`, `self::`, a child's name)
//!   reaches into it; a parent's `mod` declarations do not count, its
//!   re-exports do. Unit-test modules (`mod tests`) are left out: a test
//!   may use what it likes.
//!
//! It reads text, not the compiler's view: a path spelled through a `use`
//! alias is not followed. That is enough for this workspace's habits, and
//! errs towards reporting too little rather than a cycle that is not there.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

/// The longest a source file may be.
pub(crate) const MAX_LINES: usize = 600;

/// The crates' source trees, relative to the workspace root.
const CRATES: [&str; 6] = [
    "daemon/src",
    "auditor/src",
    "integrity/src",
    "client/src",
    "tests/src",
    "xtask/src",
];

/// Where `unsafe` may appear.
const UNSAFE_HOME: &str = "daemon/src/sys";

/// A module's path inside its crate: `["server", "kserve", "wire"]`; the
/// crate root is empty.
type ModulePath = Vec<String>;

/// Checks the workspace at `root`; the text is the list of breaches, one
/// per line, empty when there is none.
pub(crate) fn check(root: &Path) -> Result<String> {
    let mut report = String::new();
    for krate in CRATES {
        let dir = root.join(krate);
        let modules = modules(&dir)?;
        for file in modules.values() {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let shown = file.strip_prefix(root).unwrap_or(file).display();
            let lines = text.lines().count();
            if lines > MAX_LINES {
                writeln!(report, "{shown}: {lines} lines, over {MAX_LINES}")?;
            }
            if !file.starts_with(root.join(UNSAFE_HOME)) && has_unsafe(&text) {
                writeln!(report, "{shown}: unsafe code outside {UNSAFE_HOME}/")?;
            }
        }
        for cycle in cycles(&modules)? {
            let names: Vec<String> = cycle.iter().map(|m| shown_module(krate, m)).collect();
            writeln!(report, "{krate}: import cycle between {}", names.join(", "))?;
        }
    }
    Ok(report)
}

fn shown_module(krate: &str, module: &[String]) -> String {
    if module.is_empty() {
        format!("{krate} (crate root)")
    } else {
        module.join("::")
    }
}

/// Every module of the crate under `dir`, by path, with its file. A
/// binary's `main.rs` is left out (it is not part of the library's tree),
/// and so is `bin/`.
fn modules(dir: &Path) -> Result<BTreeMap<ModulePath, PathBuf>> {
    let mut found = BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .with_context(|| format!("cannot list {}", current.display()))?;
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "bin") {
                    pending.push(path);
                }
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative = path.strip_prefix(dir)?.with_extension("");
            let mut module: ModulePath = relative
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            match module.last().map(String::as_str) {
                Some("main") if module.len() == 1 => continue,
                Some("lib" | "mod") => {
                    module.pop();
                }
                _ => {}
            }
            found.insert(module, path);
        }
    }
    Ok(found)
}

/// The text with line comments and a trailing `#[cfg(test)] mod tests`
/// removed.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| line.split_once("//").map_or(line, |(code, _)| code))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether the code has an `unsafe` block, fn, impl, trait or extern: the
/// word `unsafe` followed by `{` or one of those words.
fn has_unsafe(text: &str) -> bool {
    let code = code_of(text);
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    code.match_indices("unsafe").any(|(at, word)| {
        let before = code[..at].chars().next_back();
        let after = code[at + word.len()..].trim_start();
        before.is_none_or(|c| !is_word(c))
            && (after.starts_with('{')
                || ["fn", "impl", "trait", "extern"].iter().any(|next| {
                    after
                        .strip_prefix(next)
                        .is_some_and(|rest| rest.starts_with(|c: char| !is_word(c)))
                }))
    })
}

/// The paths a `use` tree names: `a::{b, c::{d, e as f}}` gives `a::b`,
/// `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<Vec<String>> {
    fn split_top(inner: &str) -> Vec<&str> {
        let (mut parts, mut depth, mut start) = (Vec::new(), 0usize, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.saturating_sub(1),
                ',' if depth == 0 => {
                    parts.push(&inner[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&inner[start..]);
        parts
    }
    fn walk(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
        let tree = tree.trim();
        if tree.is_empty() {
            return;
        }
        match (tree.find('{'), tree.rfind('}')) {
            (Some(open), Some(close)) if open < close => {
                let mut head = prefix.to_vec();
                head.extend(segments(tree[..open].trim_end_matches(':')));
                for part in split_top(&tree[open + 1..close]) {
                    walk(&head, part, out);
                }
            }
            _ => {
                let path = tree.split(" as ").next().unwrap_or(tree);
                let mut full = prefix.to_vec();
                full.extend(segments(path));
                out.push(full);
            }
        }
    }
    let tree: String = tree.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = Vec::new();
    walk(&[], &tree, &mut out);
    out
}

fn segments(path: &str) -> impl Iterator<Item = String> + '_ {
    path.split("::")
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "self")
        .map(str::to_owned)
}

/// The module of this crate that `path`, written in `module`, reaches
/// into: the longest module its segments name. `None` for other crates.
fn resolve(
    module: &[String],
    path: &[String],
    modules: &BTreeMap<ModulePath, PathBuf>,
) -> Option<ModulePath> {
    let (head, rest) = path.split_first()?;
    let mut base: ModulePath = match head.as_str() {
        "crate" => Vec::new(),
        "super" => module[..module.len().checked_sub(1)?].to_vec(),
        _ => {
            let mut child = module.to_vec();
            child.push(head.clone());
            if !modules.contains_key(&child) {
                return None;
            }
            child
        }
    };
    let mut rest = rest;
    while let Some((next, tail)) = rest.split_first() {
        if next != "super" {
            break;
        }
        base.pop();
        rest = tail;
    }
    base.extend(rest.iter().cloned());
    (0..=base.len())
        .rev()
        .map(|n| base[..n].to_vec())
        .find(|candidate| modules.contains_key(candidate))
}

/// The modules `module`'s code uses, itself left out.
fn uses(
    module: &[String],
    text: &str,
    modules: &BTreeMap<ModulePath, PathBuf>,
) -> BTreeSet<ModulePath> {
    let code = code_of(text);
    let mut paths = Vec::new();
    let mut rest = code.as_str();
    let mut body = String::new();
    // `use` items first (their trees), then every `a::b` path elsewhere.
    while let Some(at) = find_use(rest) {
        body.push_str(&rest[..at]);
        let after = &rest[at + 4..];
        let end = after.find(';').unwrap_or(after.len());
        paths.extend(expand(&after[..end]));
        rest = &after[(end + 1).min(after.len())..];
    }
    body.push_str(rest);
    let bytes = body.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_')
            && (i == 0
                || !(bytes[i - 1].is_ascii_alphanumeric() || matches!(bytes[i - 1], b'_' | b':')));
        if !starts_word {
            i += 1;
            continue;
        }
        let mut end = i;
        while end < bytes.len()
            && (bytes[end].is_ascii_alphanumeric() || matches!(bytes[end], b'_' | b':'))
        {
            end += 1;
        }
        let word = &body[i..end];
        if word.contains("::") {
            paths.push(segments(word).collect());
        }
        i = end;
    }
    paths
        .iter()
        .filter_map(|path| resolve(module, path, modules))
        .filter(|target| target.as_slice() != module)
        .collect()
}

/// Where the next `use` item starts (`use` or `pub(...) use` as a word).
fn find_use(text: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = text[from..].find("use ") {
        let at = from + found;
        let before = text[..at].chars().next_back();
        if before.is_none_or(|c| c.is_whitespace() || c == ')' || c == ';' || c == '}' || c == '{')
        {
            return Some(at);
        }
        from = at + 4;
    }
    None
}

/// The sets of modules that use each other, each sorted, found with
/// Tarjan's strongly connected components.
fn cycles(modules: &BTreeMap<ModulePath, PathBuf>) -> Result<Vec<Vec<ModulePath>>> {
    let names: Vec<&ModulePath> = modules.keys().collect();
    let index: BTreeMap<&ModulePath, usize> =
        names.iter().enumerate().map(|(i, m)| (*m, i)).collect();
    let mut edges = vec![Vec::new(); names.len()];
    for (i, module) in names.iter().enumerate() {
        let text = std::fs::read_to_string(&modules[*module])?;
        edges[i] = uses(module, &text, modules)
            .iter()
            .filter_map(|target| index.get(target).copied())
            .collect();
    }
    Ok(strongly_connected(&edges)
        .into_iter()
        .filter(|component| component.len() > 1)
        .map(|component| {
            let mut named: Vec<ModulePath> = component.iter().map(|&i| names[i].clone()).collect();
            named.sort();
            named
        })
        .collect())
}

/// Tarjan's algorithm, iterative so that no tree can overflow the stack.
fn strongly_connected(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const UNSEEN: usize = usize::MAX;
    let n = edges.len();
    let (mut order, mut low, mut on_stack) = (vec![UNSEEN; n], vec![0; n], vec![false; n]);
    let (mut stack, mut components, mut counter) = (Vec::new(), Vec::new(), 0);
    for start in 0..n {
        if order[start] != UNSEEN {
            continue;
        }
        let mut calls = vec![(start, 0usize)];
        while let Some(&mut (node, ref mut next)) = calls.last_mut() {
            if *next == 0 {
                order[node] = counter;
                low[node] = counter;
                counter += 1;
                stack.push(node);
                on_stack[node] = true;
            }
            if let Some(&target) = edges[node].get(*next) {
                *next += 1;
                if order[target] == UNSEEN {
                    calls.push((target, 0));
                } else if on_stack[target] {
                    low[node] = low[node].min(order[target]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(parent, _)) = calls.last() {
                low[parent] = low[parent].min(low[node]);
            }
            if low[node] == order[node] {
                let mut component = Vec::new();
                while let Some(member) = stack.pop() {
                    on_stack[member] = false;
                    component.push(member);
                    if member == node {
                        break;
                    }
                }
                components.push(component);
            }
        }
    }
    components
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for (path, text) in files {
            let path = dir.path().join(path);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        }
        dir
    }

    fn found(files: &[(&str, &str)]) -> Vec<Vec<String>> {
        let dir = tree(files);
        let modules = modules(dir.path()).expect("modules");
        cycles(&modules)
            .expect("cycles")
            .into_iter()
            .map(|c| c.into_iter().map(|m| m.join("::")).collect())
            .collect()
    }

    #[test]
    fn use_trees_expand_to_every_path() {
        assert_eq!(
            expand("super::{a, b::{c, d as e}, self}"),
            vec![
                vec!["super".to_owned(), "a".to_owned()],
                vec!["super".to_owned(), "b".to_owned(), "c".to_owned()],
                vec!["super".to_owned(), "b".to_owned(), "d".to_owned()],
                vec!["super".to_owned()],
            ]
        );
    }

    #[test]
    fn a_child_that_imports_its_parent_is_a_cycle() {
        let cycles = found(&[
            ("lib.rs", "mod server;\n"),
            (
                "server/mod.rs",
                "mod http;\nuse http::read;\npub struct State;\n",
            ),
            ("server/http.rs", "use super::State;\npub fn read() {}\n"),
        ]);
        assert_eq!(
            cycles,
            vec![vec!["server".to_owned(), "server::http".to_owned()]]
        );
    }

    #[test]
    fn siblings_that_import_each_other_are_a_cycle_and_paths_count() {
        let cycles = found(&[
            ("lib.rs", "mod a;\nmod b;\nmod c;\n"),
            ("a.rs", "pub fn f() { crate::b::g(); }\n"),
            ("b.rs", "use crate::{a::f, c};\npub fn g() {}\n"),
            ("c.rs", "pub fn h() {}\n"),
        ]);
        assert_eq!(cycles, vec![vec!["a".to_owned(), "b".to_owned()]]);
    }

    #[test]
    fn layers_and_test_modules_are_no_cycle() {
        let cycles = found(&[
            ("lib.rs", "mod a;\nmod b;\npub use a::f;\n"),
            ("a.rs", "use crate::b::g;\npub fn f() { g() }\n"),
            (
                "b.rs",
                "pub fn g() {}\n\n#[cfg(test)]\nmod tests {\n    use crate::a::f;\n}\n",
            ),
        ]);
        assert!(cycles.is_empty(), "{cycles:?}");
    }

    #[test]
    fn unsafe_is_found_in_code_not_in_comments_or_lint_names() {
        assert!(has_unsafe("fn f() { unsafe { g() } }"));
        assert!(has_unsafe("pub unsafe fn f() {}"));
        assert!(!has_unsafe(
            "// unsafe { not code }\n#![forbid(unsafe_code)]\n"
        ));
    }
}
