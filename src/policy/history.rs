//! When each role file appeared, for the access review: a role created
//! minutes ago has had no chance to be used, and must not be reported as a
//! role nobody uses.
//!
//! Two sources on the CA host, both read here, and a third (the first audit
//! record naming the role) that the review adds:
//!
//! * the policy repository's git history, when the policy directory is in a
//!   git checkout: the commit time of the commit that added the file (the
//!   latest such commit, if the file was deleted and added again). A shallow
//!   clone is ignored, since its first commit "adds" every file; so is a
//!   checkout git refuses to read (another user's, without
//!   `safe.directory`) or a host without git;
//! * the file's modification time.
//!
//! The review takes the earliest of the sources it has. An edit, a checkout
//! or a copy can only make a file look newer than it is, never older; the
//! earliest time is the one no source contradicts. A role that is really
//! old can still look new when every source was refreshed (a role file
//! rewritten without git, and never requested): it is then judged once
//! the review window has passed since that write.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use serde::Serialize;

use super::Policy;

/// Where the time a role appeared comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The commit that added the role file.
    GitHistory,
    /// The role file's modification time.
    FileTime,
    /// The first audit record naming the role.
    AuditLog,
}

impl Source {
    /// `git history`, `file time`, `audit log`: for sentences.
    pub fn words(self) -> &'static str {
        match self {
            Source::GitHistory => "git history",
            Source::FileTime => "file modification time",
            Source::AuditLog => "first audit record naming it",
        }
    }
}

/// When a role first appeared (unix seconds), and by which source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Appeared {
    /// Unix seconds.
    pub at: u64,
    /// The source of `at`.
    pub source: Source,
}

impl Appeared {
    /// The earlier of two (the first one on a tie).
    pub fn earliest(a: Option<Appeared>, b: Option<Appeared>) -> Option<Appeared> {
        match (a, b) {
            (Some(a), Some(b)) if b.at < a.at => Some(b),
            (Some(a), _) => Some(a),
            (None, b) => b,
        }
    }
}

/// Parses `git log --diff-filter=A --format=@%ct --name-only`: for each
/// file name, the time of the newest commit that added it.
pub fn parse_git_adds(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut time: Option<u64> = None;
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('@') {
            time = t.trim().parse().ok();
        } else if let (Some(t), false) = (time, line.trim().is_empty()) {
            // Newest first: the first time seen for a file is its latest add.
            out.entry(line.to_string()).or_insert(t);
        }
    }
    out
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_OPTIONAL_LOCKS", "0")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Time each file of `dir` was added, from the git history (empty if `dir`
/// is not in a usable, complete git checkout).
fn git_adds(dir: &Path) -> BTreeMap<String, u64> {
    match git(dir, &["rev-parse", "--is-shallow-repository"]).as_deref() {
        Some(s) if s.trim() == "false" => {}
        _ => return BTreeMap::new(),
    }
    git(
        dir,
        &[
            "-c",
            "core.quotePath=false",
            "log",
            "--diff-filter=A",
            "--format=@%ct",
            "--name-only",
            "--relative",
            "--",
            ".",
        ],
    )
    .map(|t| parse_git_adds(&t))
    .unwrap_or_default()
}

fn mtime(path: &Path) -> Option<u64> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    m.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

/// When each role of `policy` (loaded from `dir`) appeared, from the git
/// history and the file times; see the module docs.
pub fn appeared(dir: &Path, policy: &Policy) -> BTreeMap<String, Appeared> {
    let adds = git_adds(dir);
    policy
        .roles
        .iter()
        .filter_map(|(name, role)| {
            let file_name = role.file.file_name()?.to_string_lossy().into_owned();
            let git = adds.get(&file_name).map(|&at| Appeared {
                at,
                source: Source::GitHistory,
            });
            let file = mtime(&role.file).map(|at| Appeared {
                at,
                source: Source::FileTime,
            });
            Appeared::earliest(git, file).map(|a| (name.clone(), a))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_log_gives_the_latest_add_of_each_file() {
        let log = "@300\n\nnew.toml\nre.toml\n@200\n\nre.toml\n@100\n\nold.toml\n";
        let adds = parse_git_adds(log);
        assert_eq!(adds["new.toml"], 300);
        assert_eq!(adds["re.toml"], 300);
        assert_eq!(adds["old.toml"], 100);
        assert_eq!(adds.len(), 3);
    }

    #[test]
    fn the_earliest_source_wins() {
        let g = Some(Appeared {
            at: 100,
            source: Source::GitHistory,
        });
        let f = Some(Appeared {
            at: 900,
            source: Source::FileTime,
        });
        assert_eq!(Appeared::earliest(g, f), g);
        assert_eq!(Appeared::earliest(f, g), g);
        assert_eq!(Appeared::earliest(None, f), f);
        assert_eq!(Appeared::earliest(f, None), f);
    }
}
