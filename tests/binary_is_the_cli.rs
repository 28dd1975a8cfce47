//! The binary is the CLI: clap, anyhow and printing to stdout live in
//! `src/main.rs` and `src/cli/` only. The library returns data and typed
//! errors, so a server, a test or another front end can call it without
//! dragging in a command line, and every error it returns says which fact
//! failed instead of being a string with context glued on.
//!
//! This reads the source tree, so it fails the moment someone reaches for
//! `anyhow::Result` or `println!` below the binary.

use std::path::{Path, PathBuf};

/// Code (not comments) that belongs to the binary only.
const BINARY_ONLY: &[(&str, &str)] = &[
    ("clap", "clap (argument parsing belongs in src/cli/)"),
    ("anyhow", "anyhow (return a thiserror enum instead)"),
    ("println!", "println! (return data; src/cli/ prints it)"),
    ("print!", "print! (return data; src/cli/ prints it)"),
];

/// The places `BINARY_ONLY` may appear.
fn is_binary(rel: &Path) -> bool {
    rel == Path::new("main.rs") || rel.starts_with("cli")
}

/// Each use of a binary-only name in `text`, as `file:line: what`.
fn offences(file: &str, text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        for (name, why) in BINARY_ONLY {
            if contains_word(code, name) {
                out.push(format!("{file}:{}: {why}: {}", i + 1, line.trim()));
            }
        }
    }
    out
}

/// `name` in `code` with no identifier character right before it (and,
/// for plain names, right after it).
fn contains_word(code: &str, name: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    code.match_indices(name).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + name.len()..].chars().next();
        !before.is_some_and(ident) && (name.ends_with('!') || !after.is_some_and(ident))
    })
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn library_source_uses_no_clap_anyhow_or_stdout_printing() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.iter().any(|f| f.ends_with("lib.rs")),
        "no src/lib.rs under {}",
        src.display()
    );
    let mut found = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src/");
        if is_binary(rel) {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("source file reads");
        found.extend(offences(&format!("src/{}", rel.display()), &text));
    }
    assert!(
        found.is_empty(),
        "the library must not use what belongs to the binary (src/main.rs, src/cli/):\n{}",
        found.join("\n")
    );
}

#[test]
fn the_source_check_finds_binary_only_code_and_ignores_comments_and_lookalikes() {
    let text = "\
use anyhow::Context as _;
#[derive(clap::Args)]
    println!(\"{x}\");
    print!(\"{x}\");
// anyhow and clap in a comment are fine
let s = x; // so is println! after code
eprintln!(\"progress\");
let clapped = my_anyhow_like;
";
    let found = offences("f.rs", text);
    assert_eq!(
        found.iter().map(|f| &f[..6]).collect::<Vec<_>>(),
        ["f.rs:1", "f.rs:2", "f.rs:3", "f.rs:4"],
        "{found:#?}"
    );
}
