//! Repository hygiene: every crate says what it is, and documentation links resolve.

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_crate_root_starts_with_a_module_doc() {
    let crates = std::fs::read_dir(repo_root().join("crates")).expect("crates/ exists");
    let mut checked = 0;
    for entry in crates {
        let dir = entry.expect("readable entry").path();
        let root = ["src/lib.rs", "src/main.rs"]
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{} has no src/lib.rs or src/main.rs", dir.display()));
        let text = std::fs::read_to_string(&root).expect("readable crate root");
        assert!(
            text.starts_with("//! "),
            "{} must start with a //! doc saying what the crate is and must not know",
            root.display()
        );
        checked += 1;
    }
    assert!(checked >= 5, "expected at least 5 crates, found {checked}");
}

/// Relative links `](path)` in the README and docs/ must point at files that exist.
#[test]
fn relative_links_in_docs_resolve() {
    let root = repo_root();
    let mut files = vec![root.join("README.md")];
    let mut stack = vec![root.join("docs")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("docs/ exists") {
            let path = entry.expect("readable entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    let mut dead = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("readable markdown");
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split('#').next().unwrap_or("");
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let base = file.parent().expect("file has a parent");
            if !base.join(target).exists() {
                dead.push(format!("{} -> {target}", file.display()));
            }
        }
    }
    assert!(dead.is_empty(), "dead links:\n{}", dead.join("\n"));
}
