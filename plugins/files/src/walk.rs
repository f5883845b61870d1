//! The names `tar` archives: a depth-first walk of the backed-up directory through the
//! stage's read-only grant, directories before what they hold. A symbolic link is an
//! entry like a file (its type is read without following it), so the walk never leaves
//! the directory. Exclude patterns drop an entry (and all under a directory); with include
//! patterns, a file is kept when it (or a directory above it) matches, and the directories
//! leading to it are named just before it, so tar keeps their modes and times too.

use std::collections::VecDeque;
use std::fs::ReadDir;
use std::path::{Path, PathBuf};

use pipeline_plugin_sdk::PluginError;

use crate::glob::Glob;

struct Frame {
    /// Relative path ("" for the root).
    rel: String,
    entries: ReadDir,
    /// Already named to tar.
    named: bool,
    /// Matched an include pattern: everything under it is included.
    included: bool,
}

pub struct Walk<'a> {
    root: PathBuf,
    include: &'a [Glob],
    exclude: &'a [Glob],
    stack: Vec<Frame>,
    ready: VecDeque<String>,
    started: bool,
    named: u64,
}

impl<'a> Walk<'a> {
    pub fn new(root: &Path, include: &'a [Glob], exclude: &'a [Glob]) -> Self {
        Walk {
            root: root.to_path_buf(),
            include,
            exclude,
            stack: Vec::new(),
            ready: VecDeque::new(),
            started: false,
            named: 0,
        }
    }

    /// How many names the walk gave.
    pub fn named(&self) -> u64 {
        self.named
    }

    fn open(&self, rel: &str, named: bool, included: bool) -> Result<Frame, PluginError> {
        let dir = if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        };
        let entries = std::fs::read_dir(&dir).map_err(|e| {
            PluginError::from_io(format!("reading the directory {}", dir.display()), &e)
        })?;
        Ok(Frame {
            rel: rel.to_owned(),
            entries,
            named,
            included,
        })
    }

    /// Names every directory on the stack not named yet, outermost first.
    fn name_ancestors(&mut self) {
        for frame in &mut self.stack {
            if !frame.named {
                frame.named = true;
                self.ready.push_back(if frame.rel.is_empty() {
                    ".".to_owned()
                } else {
                    frame.rel.clone()
                });
            }
        }
    }

    fn step(&mut self) -> Result<Option<String>, PluginError> {
        if !self.started {
            self.started = true;
            let everything = self.include.is_empty();
            let root = self.open("", everything, everything)?;
            self.stack.push(root);
            if everything {
                self.ready.push_back(".".into());
            }
        }
        loop {
            if let Some(name) = self.ready.pop_front() {
                self.named += 1;
                return Ok(Some(name));
            }
            let Some(frame) = self.stack.last_mut() else {
                return Ok(None);
            };
            let Some(entry) = frame.entries.next() else {
                self.stack.pop();
                continue;
            };
            let (parent, parent_included) = (frame.rel.clone(), frame.included);
            let shown = || {
                if parent.is_empty() {
                    self.root.display().to_string()
                } else {
                    self.root.join(&parent).display().to_string()
                }
            };
            let entry = entry.map_err(|e| {
                PluginError::from_io(format!("reading the directory {}", shown()), &e)
            })?;
            let name = entry.file_name().into_string().map_err(|raw| {
                PluginError::Other(format!(
                    "a name in {} is not UTF-8 ({}): WASI passes only UTF-8 names; rename it or \
                     exclude its directory",
                    shown(),
                    raw.to_string_lossy()
                ))
            })?;
            let rel = if parent.is_empty() {
                name
            } else {
                format!("{parent}/{name}")
            };
            if self.exclude.iter().any(|g| g.matches(&rel)) {
                continue;
            }
            let kind = entry
                .file_type()
                .map_err(|e| PluginError::from_io(format!("reading the type of {rel}"), &e))?;
            let included = parent_included || self.include.iter().any(|g| g.matches(&rel));
            if kind.is_dir() {
                let frame = self.open(&rel, false, included)?;
                self.stack.push(frame);
                if included {
                    self.name_ancestors();
                }
            } else if included {
                self.name_ancestors();
                self.ready.push_back(rel);
            }
        }
    }
}

impl Iterator for Walk<'_> {
    type Item = Result<String, PluginError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.step().transpose()
    }
}

// Native only: the tests make a tree with symbolic links (std::os::unix).
#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn tree() -> PathBuf {
        let root = std::env::temp_dir().join(format!(
            "files-walk-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&root);
        for d in ["a/b", "cache/x", "logs"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        for f in [
            "top.conf",
            "a/b/deep.conf",
            "a/b/data.bin",
            "cache/x/c.conf",
            "logs/app.log",
        ] {
            std::fs::write(root.join(f), f).expect("write");
        }
        std::os::unix::fs::symlink("/etc", root.join("a/etc-link")).expect("symlink");
        root
    }

    fn names(root: &Path, include: &[&str], exclude: &[&str]) -> Vec<String> {
        let g = |l: &[&str]| {
            l.iter()
                .map(|p| Glob::new(p).expect("glob"))
                .collect::<Vec<_>>()
        };
        let (i, e) = (g(include), g(exclude));
        let mut v: Vec<String> = Walk::new(root, &i, &e).map(|n| n.expect("name")).collect();
        v.sort();
        v
    }

    #[test]
    fn everything_with_links_as_entries() {
        let root = tree();
        let all = names(&root, &[], &[]);
        assert_eq!(
            all,
            [
                ".",
                "a",
                "a/b",
                "a/b/data.bin",
                "a/b/deep.conf",
                "a/etc-link",
                "cache",
                "cache/x",
                "cache/x/c.conf",
                "logs",
                "logs/app.log",
                "top.conf"
            ]
        );
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn include_names_the_way_down_and_exclude_wins() {
        let root = tree();
        assert_eq!(
            names(&root, &["*.conf"], &["cache"]),
            [".", "a", "a/b", "a/b/deep.conf", "top.conf"]
        );
        assert_eq!(names(&root, &["logs"], &[]), [".", "logs", "logs/app.log"]);
        assert_eq!(
            names(&root, &[], &["*.log", "a/b"]),
            [
                ".",
                "a",
                "a/etc-link",
                "cache",
                "cache/x",
                "cache/x/c.conf",
                "logs",
                "top.conf"
            ]
        );
        let _ = std::fs::remove_dir_all(&root);
    }
}
