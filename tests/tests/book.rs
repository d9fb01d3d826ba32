//! The book (`docs/book/`) cannot rot: every file it includes, links or names exists, every
//! included anchor or line range is in its file, and every chapter is in `SUMMARY.md`.
//!
//! What counts as a named path: a backticked span that starts with one of the repository's
//! top-level folders (`tensor/src/layout.rs`, `cuda/kernels/softmax.cu`), optionally followed by
//! `:line`. The one_batch example's printed output is checked against the book's copy in
//! `cotmae/tests/book_example.rs`.

use std::path::{Path, PathBuf};

/// The repository's top-level folders a named path may start with.
const ROOTS: [&str; 12] = [
    "tensor/",
    "autograd/",
    "nn/",
    "bert/",
    "cotmae/",
    "retrieval/",
    "cuda/",
    "bench/",
    "scripts/",
    "docs/",
    "tests/",
    ".ci/",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn chapters() -> Vec<PathBuf> {
    let dir = repo().join("docs/book/src");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    out.sort();
    assert!(
        out.len() >= 5,
        "the book has chapters under {}",
        dir.display()
    );
    out
}

/// `(line number, text)` of every `{{#include ...}}` argument in `md`.
fn includes(md: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in md.lines().enumerate() {
        let mut rest = line;
        while let Some(i) = rest.find("{{#include ") {
            let after = &rest[i + "{{#include ".len()..];
            let end = after.find("}}").expect("an unclosed {{#include");
            out.push((n + 1, after[..end].trim().to_string()));
            rest = &after[end..];
        }
    }
    out
}

/// `(line number, text)` of every line of `md` outside fenced code blocks.
fn prose_lines(md: &str) -> Vec<(usize, &str)> {
    let mut in_code = false;
    let mut out = Vec::new();
    for (n, line) in md.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code {
            out.push((n + 1, line));
        }
    }
    out
}

/// `(line number, target)` of every Markdown link or image `](target)` in `md`, outside code
/// blocks.
fn links(md: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose_lines(md) {
        let mut rest = line;
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let end = after.find(')').expect("an unclosed link");
            out.push((n, after[..end].to_string()));
            rest = &after[end..];
        }
    }
    out
}

/// `(line number, path)` of every backticked repository path in `md`, outside code blocks.
fn named_paths(md: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose_lines(md) {
        for (i, span) in line.split('`').enumerate() {
            let looks_like_path = ROOTS.iter().any(|r| span.starts_with(r))
                && !span.contains(char::is_whitespace)
                && !span.contains(['*', '<', '{']);
            if i % 2 == 1 && looks_like_path {
                out.push((n, span.split(':').next().unwrap().to_string()));
            }
        }
    }
    out
}

#[test]
fn every_include_exists_with_its_anchor_or_lines() {
    let mut checked = 0;
    for chapter in chapters() {
        let md = std::fs::read_to_string(&chapter).unwrap();
        for (line, arg) in includes(&md) {
            let at = format!("{}:{line}", chapter.display());
            let mut parts = arg.splitn(2, ':');
            let file = chapter.parent().unwrap().join(parts.next().unwrap());
            let text = std::fs::read_to_string(&file)
                .unwrap_or_else(|e| panic!("{at}: includes {}: {e}", file.display()));
            let lines = text.lines().count();
            match parts.next() {
                None => {}
                Some(range) if range.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
                    for n in range.split(':').filter(|s| !s.is_empty()) {
                        let n: usize = n.parse().unwrap_or_else(|_| panic!("{at}: bad range"));
                        assert!(
                            (1..=lines).contains(&n),
                            "{at}: line {n} is past the end of {} ({lines} lines)",
                            file.display()
                        );
                    }
                }
                Some(anchor) => {
                    for mark in [format!("ANCHOR: {anchor}"), format!("ANCHOR_END: {anchor}")] {
                        assert!(
                            text.contains(&mark),
                            "{at}: {} has no `{mark}`",
                            file.display()
                        );
                    }
                }
            }
            checked += 1;
        }
    }
    assert!(checked > 0, "the book includes code from the repository");
}

#[test]
fn every_link_and_named_path_exists() {
    let mut checked = 0;
    for chapter in chapters() {
        let md = std::fs::read_to_string(&chapter).unwrap();
        let dir = chapter.parent().unwrap();
        for (line, target) in links(&md) {
            if target.starts_with("http") || target.starts_with('#') {
                continue;
            }
            let file = dir.join(target.split('#').next().unwrap());
            assert!(
                file.exists(),
                "{}:{line}: links {target}, which does not exist",
                chapter.display()
            );
            checked += 1;
        }
        for (line, path) in named_paths(&md) {
            assert!(
                repo().join(&path).exists(),
                "{}:{line}: names `{path}`, which is not in the repository",
                chapter.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "the book names the files it explains");
}

#[test]
fn every_chapter_is_in_the_summary() {
    let summary = repo().join("docs/book/src/SUMMARY.md");
    let text = std::fs::read_to_string(&summary).unwrap();
    let listed: Vec<String> = links(&text).into_iter().map(|(_, t)| t).collect();
    for chapter in chapters() {
        let name = chapter.file_name().unwrap().to_str().unwrap().to_string();
        if name != "SUMMARY.md" {
            assert!(listed.contains(&name), "{name} is not listed in SUMMARY.md");
        }
    }
    for target in &listed {
        assert!(
            summary.parent().unwrap().join(target).exists(),
            "SUMMARY.md lists {target}, which does not exist"
        );
    }
}

#[test]
fn the_path_finder_finds_paths_and_only_paths() {
    let md = "see `tensor/src/layout.rs:12` and `cargo test` and `cuda/kernels/*.cu`\n\
              ```\n`nn/in/code/block.rs`\n```\n";
    let found: Vec<String> = named_paths(md).into_iter().map(|(_, p)| p).collect();
    assert_eq!(found, ["tensor/src/layout.rs"]);
    let l = links("a [b](c.md#x) and ![i](img/a.svg)");
    assert_eq!(l, [(1, "c.md#x".into()), (1, "img/a.svg".into())]);
    let inc = includes("{{#include ../a.rs:knobs}} {{#include b.txt}}");
    assert_eq!(inc, [(1, "../a.rs:knobs".into()), (1, "b.txt".into())]);
}
