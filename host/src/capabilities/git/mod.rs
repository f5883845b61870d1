//! Git on the host, through libgit2 (`git2`): commit exactly the given paths of a working
//! tree, optionally signed (GnuPG like `gpg.format=openpgp`, or SSH like `gpg.format=ssh`),
//! and push a branch to a configured remote. It backs the `pipeline:plugin/git` capability
//! (see [`host`]), so everything a plugin hands in is data: paths are checked before they
//! touch the filesystem, programs run without a shell, names never come from a git config.
//!
//! A commit is built from HEAD's tree plus the blobs of the given paths, not from the
//! repository's index: whatever else is staged or modified stays as it is. The index is then
//! updated for exactly those paths so `git status` shows them clean.

mod host;

pub use host::{Git, GitGrants, SigningKey, configured_signing};

use std::collections::{BTreeSet, VecDeque};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use git2::{
    CredentialType, ErrorCode, FileMode, IndexEntry, IndexTime, Oid, PushOptions, RemoteCallbacks,
    Repository, RepositoryOpenFlags, Signature,
};

#[cfg(test)]
mod tests;

/// Author or committer of a commit: given by the caller, never read from a git config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    pub name: String,
    pub email: String,
}

/// How a commit is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signing {
    /// Like git's `gpg.format=openpgp`: `gpg --status-fd=2 -bsau <key>`.
    Gpg {
        /// Key id, fingerprint or user id; `None` signs with gpg's default key (`-bsa`).
        key: Option<String>,
        /// The gpg program; `None` is `gpg` on PATH.
        program: Option<PathBuf>,
        /// `GNUPGHOME` for gpg; `None` leaves gpg's own default (`~/.gnupg` or the inherited
        /// `GNUPGHOME`).
        home: Option<PathBuf>,
    },
    /// Like git's `gpg.format=ssh`: `ssh-keygen -Y sign -n git -f <key_file>`. The key file
    /// is a private key without passphrase, or a public key whose private half is in
    /// ssh-agent.
    Ssh {
        key_file: PathBuf,
        /// The ssh-keygen program; `None` is `ssh-keygen` on PATH.
        program: Option<PathBuf>,
    },
}

/// Why a git operation failed. Every message names the repository and what was being done.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("cannot open the git repository {}: {reason}", .repo.display())]
    Open { repo: PathBuf, reason: String },
    #[error("git repository {}: refusing path {path:?}: {reason}", .repo.display())]
    InvalidPath {
        repo: PathBuf,
        path: String,
        reason: String,
    },
    /// A refused argument or repository state (person, message, remote, detached HEAD).
    #[error("git repository {}: {action}: {message}", .repo.display())]
    Invalid {
        repo: PathBuf,
        action: String,
        message: String,
    },
    #[error("git repository {}: {action}: {}", .repo.display(), .error.message())]
    Git {
        repo: PathBuf,
        action: String,
        error: git2::Error,
    },
    #[error("git repository {}: {action}: {error}", .repo.display())]
    Io {
        repo: PathBuf,
        action: String,
        error: io::Error,
    },
    #[error(
        "git repository {}: signing the commit: {tool} program `{}` was not found; install it \
         (`{install}`) or name the program",
        .repo.display(), .program.display()
    )]
    SignerMissing {
        repo: PathBuf,
        tool: &'static str,
        program: PathBuf,
        install: &'static str,
    },
    #[error(
        "git repository {}: signing the commit: {tool} signing with `{}` failed: {reason}",
        .repo.display(), .program.display()
    )]
    Signer {
        repo: PathBuf,
        tool: &'static str,
        program: PathBuf,
        /// What went wrong, with the tail of the program's stderr.
        reason: String,
    },
    #[error(
        "git repository {}: {refname} moved while the commit was made (another commit landed \
         concurrently); it was not updated, try again",
        .repo.display()
    )]
    RefMoved { repo: PathBuf, refname: String },
    #[error(
        "git repository {}: commit {commit} is on {refname}, but updating the index failed: {}; \
         `git status` shows the committed paths as changed until `git reset -- <paths>`",
        .repo.display(), .error.message()
    )]
    IndexNotUpdated {
        repo: PathBuf,
        refname: String,
        commit: String,
        error: git2::Error,
    },
    #[error(
        "git repository {}: pushing {refname} to remote `{remote}` was rejected: {message}",
        .repo.display()
    )]
    Rejected {
        repo: PathBuf,
        remote: String,
        refname: String,
        message: String,
    },
}

/// Lines of a signing program's stderr kept for an error.
const STDERR_TAIL_LINES: usize = 20;
/// Lines of the server's `remote:` messages kept for a rejected push.
const REMOTE_TAIL_LINES: usize = 20;

/// A non-bare repository opened at exactly its working tree.
pub struct Repo {
    repo: Repository,
    /// The working tree as the caller named it, for messages.
    path: PathBuf,
}

/// One path of a commit as found in the working tree.
enum Found {
    /// Blob id, file mode, stat data for the index.
    Present(Oid, FileMode, std::fs::Metadata),
    Missing,
}

impl Repo {
    /// Opens the repository whose working tree is exactly `workdir`: no discovery in parent
    /// directories, no `GIT_DIR` from the environment; a bare repository is refused.
    pub fn open(workdir: &Path) -> Result<Repo, GitError> {
        let fail = |reason: String| GitError::Open {
            repo: workdir.to_path_buf(),
            reason,
        };
        let repo = Repository::open_ext(
            workdir,
            RepositoryOpenFlags::NO_SEARCH,
            std::iter::empty::<&OsStr>(),
        )
        .map_err(|e| match e.code() {
            ErrorCode::NotFound => fail(
                "no git repository here (it must be the repository's working tree itself, \
                 not a directory inside it)"
                    .into(),
            ),
            _ => fail(e.message().to_string()),
        })?;
        if repo.is_bare() {
            return Err(fail(
                "it is a bare repository (a working tree is needed)".into(),
            ));
        }
        let Some(tree) = repo.workdir() else {
            return Err(fail("it has no working tree".into()));
        };
        let canonical = |p: &Path| {
            std::fs::canonicalize(p)
                .map_err(|e| fail(format!("cannot resolve {}: {e}", p.display())))
        };
        if canonical(tree)? != canonical(workdir)? {
            return Err(fail(format!(
                "its working tree is {}, not this directory",
                tree.display()
            )));
        }
        Ok(Repo {
            repo,
            path: workdir.to_path_buf(),
        })
    }

    /// The branch HEAD points to (`main` for `refs/heads/main`), born or not.
    pub fn head_branch(&self) -> Result<String, GitError> {
        let refname = self.head_refname("reading HEAD")?;
        match refname.strip_prefix("refs/heads/") {
            Some(branch) => Ok(branch.to_string()),
            None => Err(self.invalid(
                "reading HEAD",
                format!("HEAD points to {refname}, which is not a branch"),
            )),
        }
    }

    /// Commits exactly `paths` (relative to the working tree, `/`-separated) as they are in
    /// the working tree now (a missing file is a removal) on top of the branch HEAD points
    /// to; an unborn branch gets a root commit. Nothing else staged or modified is committed
    /// or disturbed; the index is updated for exactly these paths. Returns `None`, creating
    /// nothing, when the result would have the same tree as HEAD. The message is cleaned
    /// like `git commit --cleanup=whitespace` (trailing blanks and surplus empty lines go, one
    /// final newline); the branch moves only if it still is where it was read
    /// ([`GitError::RefMoved`] otherwise).
    pub fn commit_paths(
        &self,
        paths: &[String],
        message: &str,
        author: &Person,
        committer: &Person,
        signing: Option<&Signing>,
    ) -> Result<Option<String>, GitError> {
        const ACTION: &str = "committing";
        let paths = paths
            .iter()
            .map(|p| self.check_path(p).map(|()| p.as_str()))
            .collect::<Result<BTreeSet<&str>, _>>()?;
        let message = self.check_message(message)?;
        let author = self.signature("the author", author)?;
        let committer = self.signature("the committer", committer)?;

        // The branch and its current commit, read once: the ref update below insists on it.
        let head = self.head_refname(ACTION)?;
        let (refname, parent) = match self.repo.find_reference(&head) {
            Ok(r) => {
                let r = r.resolve().map_err(|e| self.git(ACTION, e))?;
                let name = r.name().map_err(|e| self.git(ACTION, e))?.to_string();
                let commit = r.peel_to_commit().map_err(|e| self.git(ACTION, e))?;
                (name, Some(commit))
            }
            Err(e) if e.code() == ErrorCode::NotFound => (head, None),
            Err(e) => return Err(self.git(ACTION, e)),
        };

        let mut found = Vec::with_capacity(paths.len());
        for p in &paths {
            found.push((*p, self.read_path(p)?));
        }

        let baseline = match &parent {
            Some(c) => c.tree().map_err(|e| self.git(ACTION, e))?,
            None => {
                if found.iter().all(|(_, f)| matches!(f, Found::Missing)) {
                    return Ok(None); // nothing to put in a root commit
                }
                let empty = self
                    .repo
                    .treebuilder(None)
                    .and_then(|b| b.write())
                    .map_err(|e| self.git(ACTION, e))?;
                self.repo
                    .find_tree(empty)
                    .map_err(|e| self.git(ACTION, e))?
            }
        };
        // libgit2 refuses to turn a file into a directory or back in one update, so what the
        // working tree replaced goes first: a file where it now has a directory (`a` for
        // `a/b`), a directory where it now has a file.
        let mut replaced = git2::build::TreeUpdateBuilder::new();
        let mut any_replaced = false;
        let is_tree = |p: &str| {
            baseline
                .get_path(Path::new(p))
                .ok()
                .map(|e| e.kind() == Some(git2::ObjectType::Tree))
        };
        for (p, f) in &found {
            if let Found::Present(..) = f {
                for parent in ancestors(p) {
                    if is_tree(parent) == Some(false) {
                        replaced.remove(parent);
                        any_replaced = true;
                    }
                }
                if is_tree(p) == Some(true) {
                    replaced.remove(*p);
                    any_replaced = true;
                }
            }
        }
        let base = if any_replaced {
            let id = replaced
                .create_updated(&self.repo, &baseline)
                .map_err(|e| self.git("building the commit's tree", e))?;
            self.repo
                .find_tree(id)
                .map_err(|e| self.git("building the commit's tree", e))?
        } else {
            baseline.clone()
        };
        let mut update = git2::build::TreeUpdateBuilder::new();
        for (p, f) in &found {
            match f {
                Found::Present(id, mode, _) => {
                    update.upsert(*p, *id, *mode);
                }
                Found::Missing => {
                    if base.get_path(Path::new(p)).is_ok() {
                        update.remove(*p);
                    }
                }
            }
        }
        let tree_id = update
            .create_updated(&self.repo, &base)
            .map_err(|e| self.git("building the commit's tree", e))?;
        if parent.is_some() && tree_id == baseline.id() {
            return Ok(None);
        }
        let tree = self
            .repo
            .find_tree(tree_id)
            .map_err(|e| self.git(ACTION, e))?;
        let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();

        let commit_id = match signing {
            None => self
                .repo
                .commit(None, &author, &committer, &message, &tree, &parents)
                .map_err(|e| self.git("creating the commit", e))?,
            Some(signing) => {
                let buffer = self
                    .repo
                    .commit_create_buffer(&author, &committer, &message, &tree, &parents)
                    .map_err(|e| self.git("creating the commit", e))?;
                let content = buffer
                    .as_str()
                    .map_err(|e| self.git("creating the commit", e))?;
                let signature = self.sign(signing, content.as_bytes())?;
                self.repo
                    .commit_signed(content, &signature, None)
                    .map_err(|e| self.git("creating the signed commit", e))?
            }
        };

        // The index, prepared before the branch moves so a conflict there commits nothing.
        let mut index = self
            .repo
            .index()
            .and_then(|mut i| i.read(true).map(|()| i))
            .map_err(|e| self.git("reading the index", e))?;
        for (p, f) in &found {
            let result = match f {
                // Entries the path replaced (a file `a` for `a/b`, a directory's files) go.
                Found::Present(id, mode, meta) => ancestors(p)
                    .try_for_each(|a| index.remove_path(Path::new(a)))
                    .and_then(|()| index.remove_dir(Path::new(p), 0))
                    .and_then(|()| index.add(&index_entry(p, *id, *mode, meta))),
                Found::Missing => index
                    .remove_path(Path::new(p))
                    .and_then(|()| index.remove_dir(Path::new(p), 0)),
            };
            result.map_err(|e| self.git(&format!("updating the index for {p:?}"), e))?;
        }

        let subject = message.lines().next().unwrap_or_default();
        let moved = |e: git2::Error| match e.code() {
            ErrorCode::Modified | ErrorCode::Exists => GitError::RefMoved {
                repo: self.path.clone(),
                refname: refname.clone(),
            },
            _ => self.git(&format!("updating {refname}"), e),
        };
        match &parent {
            Some(old) => self
                .repo
                .reference_matching(
                    &refname,
                    commit_id,
                    true,
                    old.id(),
                    &format!("commit: {subject}"),
                )
                .map_err(moved)?,
            None => self
                .repo
                .reference(
                    &refname,
                    commit_id,
                    false,
                    &format!("commit (initial): {subject}"),
                )
                .map_err(moved)?,
        };
        index.write().map_err(|error| GitError::IndexNotUpdated {
            repo: self.path.clone(),
            refname: refname.clone(),
            commit: commit_id.to_string(),
            error,
        })?;
        Ok(Some(commit_id.to_string()))
    }

    /// Pushes local `branch` to the same branch of the configured remote `remote` (a name,
    /// not a URL), without force; the remote-tracking ref follows. Credentials, each offered
    /// at most once: for ssh the agent, then the unencrypted default identity files
    /// (`~/.ssh/id_rsa`, `id_ecdsa`, `id_ed25519`), the host checked against
    /// `~/.ssh/known_hosts`; for https git's credential helpers (`credential.helper`).
    /// A rejected update is a [`GitError::Rejected`] with the server's message.
    pub fn push(&self, remote: &str, branch: &str) -> Result<(), GitError> {
        let refname = format!("refs/heads/{branch}");
        let action = format!("pushing {refname} to remote `{remote}`");
        if !git2::Remote::is_valid_name(remote) {
            return Err(self.invalid(
                &action,
                format!(
                    "{remote:?} is not a remote name; URLs are not accepted, configure a remote \
                     (`git remote add NAME URL`) and name it"
                ),
            ));
        }
        if branch.starts_with('-') || !git2::Reference::is_valid_name(&refname) {
            return Err(self.invalid(&action, format!("{branch:?} is not a branch name")));
        }
        match self.repo.find_reference(&refname) {
            Ok(_) => {}
            Err(e) if e.code() == ErrorCode::NotFound => {
                return Err(self.invalid(&action, format!("there is no local branch {branch:?}")));
            }
            Err(e) => return Err(self.git(&action, e)),
        }
        let mut handle = match self.repo.find_remote(remote) {
            Ok(r) => r,
            Err(e) if e.code() == ErrorCode::NotFound => {
                return Err(self.invalid(
                    &action,
                    format!("no remote named `{remote}` is configured (`git remote add`)"),
                ));
            }
            Err(e) => return Err(self.git(&action, e)),
        };
        let config = self
            .repo
            .config()
            .map_err(|e| self.git("reading the git configuration", e))?;

        let mut tried = Tried::new(std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".ssh")));
        let rejected = std::cell::RefCell::new(Vec::<(String, String)>::new());
        let remote_lines = std::cell::RefCell::new(VecDeque::<String>::new());
        let mut callbacks = RemoteCallbacks::new();
        callbacks.credentials(|url, user, allowed| tried.next(&config, url, user, allowed));
        callbacks.push_update_reference(|name, status| {
            if let Some(status) = status {
                rejected
                    .borrow_mut()
                    .push((name.to_string(), status.to_string()));
            }
            Ok(())
        });
        callbacks.sideband_progress(|data| {
            let mut lines = remote_lines.borrow_mut();
            for line in String::from_utf8_lossy(data).split(['\n', '\r']) {
                let line = line.trim();
                if !line.is_empty() {
                    lines.push_back(line.to_string());
                    if lines.len() > REMOTE_TAIL_LINES {
                        lines.pop_front();
                    }
                }
            }
            true
        });
        let mut proxy = git2::ProxyOptions::new();
        proxy.auto();
        let mut options = PushOptions::new();
        options.remote_callbacks(callbacks).proxy_options(proxy);
        let refspec = format!("{refname}:{refname}");
        let result = handle.push(&[refspec.as_str()], Some(&mut options));
        drop(options);

        let remote_said = || {
            let lines = remote_lines.borrow();
            if lines.is_empty() {
                String::new()
            } else {
                let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
                format!(" (remote: {})", lines.join(" | "))
            }
        };
        match result {
            Err(e) if e.code() == ErrorCode::NotFastForward => Err(GitError::Rejected {
                repo: self.path.clone(),
                remote: remote.to_string(),
                refname,
                message: format!(
                    "not a fast-forward: {} (fetch and integrate the remote's commits first){}",
                    e.message(),
                    remote_said()
                ),
            }),
            Err(e) if e.code() == ErrorCode::Auth => Err(self.invalid(
                &action,
                format!(
                    "authentication failed: {}; for ssh URLs load the key into ssh-agent \
                     (`ssh-add`), for https URLs configure a git credential helper",
                    e.message()
                ),
            )),
            Err(e) => Err(GitError::Git {
                repo: self.path.clone(),
                action: format!("{action}{}", remote_said()),
                error: e,
            }),
            Ok(()) => match rejected.into_inner().into_iter().next() {
                Some((name, status)) => Err(GitError::Rejected {
                    repo: self.path.clone(),
                    remote: remote.to_string(),
                    refname: name,
                    message: format!("{status}{}", remote_said()),
                }),
                None => Ok(()),
            },
        }
    }

    /// `refs/heads/...` as HEAD names it (the branch may be unborn).
    fn head_refname(&self, action: &str) -> Result<String, GitError> {
        let head = self
            .repo
            .find_reference("HEAD")
            .map_err(|e| self.git(action, e))?;
        match head.symbolic_target() {
            Ok(Some(target)) => Ok(target.to_string()),
            Ok(None) => Err(self.invalid(
                action,
                "HEAD is detached; check out a branch (`git switch BRANCH`)".into(),
            )),
            Err(e) => Err(self.git(action, e)),
        }
    }

    /// Refuses anything but a plain relative path inside the working tree, outside `.git`.
    fn check_path(&self, path: &str) -> Result<(), GitError> {
        let refuse = |reason: &str| GitError::InvalidPath {
            repo: self.path.clone(),
            path: path.to_string(),
            reason: reason.to_string(),
        };
        if path.is_empty() {
            return Err(refuse("it is empty"));
        }
        if path.contains('\0') {
            return Err(refuse("it contains a NUL byte"));
        }
        if path.starts_with('/') {
            return Err(refuse(
                "it is absolute; paths are relative to the working tree",
            ));
        }
        for component in path.split('/') {
            match component {
                "" => return Err(refuse("it has an empty component (`//` or a trailing `/`)")),
                "." | ".." => return Err(refuse("it has a `.` or `..` component")),
                c if is_dot_git(c) => return Err(refuse("it is inside `.git`")),
                _ => {}
            }
        }
        Ok(())
    }

    fn check_message(&self, message: &str) -> Result<String, GitError> {
        if message.contains('\0') {
            return Err(self.invalid(
                "committing",
                "the commit message contains a NUL byte".into(),
            ));
        }
        // Like `git commit --cleanup=whitespace`: trailing blanks go, one final newline.
        let cleaned = git2::message_prettify(message, None)
            .map_err(|e| self.git("cleaning up the commit message", e))?;
        if cleaned.trim().is_empty() {
            return Err(self.invalid("committing", "the commit message is empty".into()));
        }
        Ok(cleaned)
    }

    fn signature(&self, role: &str, person: &Person) -> Result<Signature<'static>, GitError> {
        let bad = |what: &str, value: &str| {
            let forbidden = ['<', '>', '\n', '\r', '\0'];
            if value.trim().is_empty() {
                Some(format!("{role}'s {what} is empty"))
            } else if value.contains(forbidden) {
                Some(format!(
                    "{role}'s {what} {value:?} contains `<`, `>`, a line break or a NUL byte"
                ))
            } else {
                None
            }
        };
        if let Some(message) = bad("name", &person.name).or_else(|| bad("email", &person.email)) {
            return Err(self.invalid("committing", message));
        }
        Signature::now(&person.name, &person.email)
            .map_err(|e| self.git(&format!("making {role}'s signature"), e))
    }

    /// What `path` (checked) is in the working tree now; its blob is written.
    fn read_path(&self, path: &str) -> Result<Found, GitError> {
        let root = self.repo.workdir().unwrap_or(&self.path);
        let io_err = |action: String, error: io::Error| GitError::Io {
            repo: self.path.clone(),
            action,
            error,
        };
        let refuse = |reason: String| GitError::InvalidPath {
            repo: self.path.clone(),
            path: path.to_string(),
            reason,
        };
        // Every parent must be a real directory of this working tree: not a symbolic link
        // (that would commit files from elsewhere) and not a nested repository.
        let mut dir = root.to_path_buf();
        let components: Vec<&str> = path.split('/').collect();
        let (name, parents) = components.split_last().unwrap_or((&"", &[]));
        for c in parents {
            dir.push(c);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(refuse(format!(
                        "{} is a symbolic link",
                        dir.strip_prefix(root).unwrap_or(&dir).display()
                    )));
                }
                Ok(m) if m.is_dir() => {
                    if std::fs::symlink_metadata(dir.join(".git")).is_ok() {
                        return Err(refuse(format!(
                            "{} is a nested git repository",
                            dir.strip_prefix(root).unwrap_or(&dir).display()
                        )));
                    }
                }
                // A parent that is gone or a file: the path is gone.
                Ok(_) => return Ok(Found::Missing),
                Err(e) if is_missing(&e) => return Ok(Found::Missing),
                Err(e) => return Err(io_err(format!("reading {path:?}"), e)),
            }
        }
        let file = dir.join(name);
        let meta = match std::fs::symlink_metadata(&file) {
            Ok(m) => m,
            Err(e) if is_missing(&e) => return Ok(Found::Missing),
            Err(e) => return Err(io_err(format!("reading {path:?}"), e)),
        };
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(&file)
                .map_err(|e| io_err(format!("reading the symbolic link {path:?}"), e))?;
            use std::os::unix::ffi::OsStrExt;
            let id = self
                .repo
                .blob(target.as_os_str().as_bytes())
                .map_err(|e| self.git(&format!("storing {path:?}"), e))?;
            return Ok(Found::Present(id, FileMode::Link, meta));
        }
        if ft.is_dir() {
            return Err(refuse("it is a directory; name the files in it".into()));
        }
        if !ft.is_file() {
            return Err(refuse("it is not a regular file or a symbolic link".into()));
        }
        // O_NOFOLLOW: had it become a symbolic link since, opening fails.
        let mut f = File::options()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&file)
            .map_err(|e| io_err(format!("opening {path:?}"), e))?;
        let meta = f
            .metadata()
            .map_err(|e| io_err(format!("reading {path:?}"), e))?;
        // Through the hint path, git's filters (`.gitattributes`, core.autocrlf) apply as
        // they do for `git add`.
        let mut writer = self
            .repo
            .blob_writer(Some(Path::new(path)))
            .map_err(|e| self.git(&format!("storing {path:?}"), e))?;
        io::copy(&mut f, &mut writer).map_err(|e| io_err(format!("storing {path:?}"), e))?;
        writer
            .flush()
            .map_err(|e| io_err(format!("storing {path:?}"), e))?;
        let id = writer
            .commit()
            .map_err(|e| self.git(&format!("storing {path:?}"), e))?;
        let mode = if meta.mode() & 0o100 != 0 {
            FileMode::BlobExecutable
        } else {
            FileMode::Blob
        };
        Ok(Found::Present(id, mode, meta))
    }

    /// The detached, armored signature of `content`.
    fn sign(&self, signing: &Signing, content: &[u8]) -> Result<String, GitError> {
        let (tool, install, program, mut command) = match signing {
            Signing::Gpg { key, program, home } => {
                let program = program.clone().unwrap_or_else(|| PathBuf::from("gpg"));
                let mut c = Command::new(&program);
                c.arg("--status-fd=2");
                match key {
                    Some(key) => {
                        if key.is_empty() || key.starts_with('-') || key.contains('\0') {
                            return Err(self.invalid(
                                "signing the commit",
                                format!("{key:?} is not a gpg key id"),
                            ));
                        }
                        c.arg("-bsau").arg(key);
                    }
                    None => {
                        c.arg("-bsa");
                    }
                }
                if let Some(home) = home {
                    c.env("GNUPGHOME", home);
                }
                ("gpg", "apt-get install gnupg", program, c)
            }
            Signing::Ssh { key_file, program } => {
                let program = program
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("ssh-keygen"));
                let mut c = Command::new(&program);
                c.args(["-Y", "sign", "-n", "git", "-f"]).arg(key_file);
                ("ssh", "apt-get install openssh-client", program, c)
            }
        };
        let fail = |reason: String| GitError::Signer {
            repo: self.path.clone(),
            tool,
            program: program.clone(),
            reason,
        };
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                GitError::SignerMissing {
                    repo: self.path.clone(),
                    tool,
                    program: program.clone(),
                    install,
                }
            } else {
                fail(format!("cannot start it: {e}"))
            }
        })?;
        let mut stdin = child.stdin.take();
        let output = std::thread::scope(|s| {
            s.spawn(move || {
                if let Some(stdin) = stdin.as_mut() {
                    // A program that exits early closes the pipe; its status says why.
                    let _ = stdin.write_all(content);
                }
            });
            child.wait_with_output()
        })
        .map_err(|e| fail(format!("cannot wait for it: {e}")))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail = || {
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n");
            crate::logging::redact(&tail)
        };
        if !output.status.success() {
            return Err(fail(format!(
                "{}; its stderr ends:\n{}",
                output.status,
                tail()
            )));
        }
        let signature = String::from_utf8(output.stdout)
            .map_err(|_| fail("its signature is not text".into()))?;
        let (marker, status) = match signing {
            Signing::Gpg { .. } => (
                "-----BEGIN PGP SIGNATURE-----",
                Some("[GNUPG:] SIG_CREATED "),
            ),
            Signing::Ssh { .. } => ("-----BEGIN SSH SIGNATURE-----", None),
        };
        if let Some(status) = status
            && !stderr.lines().any(|l| l.starts_with(status))
        {
            return Err(fail(format!(
                "it reported no `{}`; its stderr ends:\n{}",
                status.trim(),
                tail()
            )));
        }
        if !signature.contains(marker) {
            return Err(fail(format!(
                "it wrote no armored signature; its stderr ends:\n{}",
                tail()
            )));
        }
        Ok(signature)
    }

    fn git(&self, action: &str, error: git2::Error) -> GitError {
        GitError::Git {
            repo: self.path.clone(),
            action: action.to_string(),
            error,
        }
    }

    fn invalid(&self, action: &str, message: String) -> GitError {
        GitError::Invalid {
            repo: self.path.clone(),
            action: action.to_string(),
            message,
        }
    }
}

/// `.git` as git refuses it in a path component (also the NTFS spellings `.git.`, `git~1`).
fn is_dot_git(component: &str) -> bool {
    let c = component.trim_end_matches(['.', ' ']).to_ascii_lowercase();
    c == ".git" || c == "git~1"
}

/// `a` and `a/b` for `a/b/c`.
fn ancestors(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/').map(|(i, _)| &path[..i])
}

fn is_missing(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ENOTDIR)
}

/// The index entry for a committed path, with the stat data the blob was read with so
/// `git status` sees it clean without reading it again.
fn index_entry(path: &str, id: Oid, mode: FileMode, meta: &std::fs::Metadata) -> IndexEntry {
    // The index keeps 32 bits of each (git truncates the same way).
    IndexEntry {
        ctime: IndexTime::new(meta.ctime() as i32, meta.ctime_nsec() as u32),
        mtime: IndexTime::new(meta.mtime() as i32, meta.mtime_nsec() as u32),
        dev: meta.dev() as u32,
        ino: meta.ino() as u32,
        mode: u32::from(mode),
        uid: meta.uid(),
        gid: meta.gid(),
        file_size: meta.size() as u32,
        id,
        flags: 0,
        flags_extended: 0,
        path: path.as_bytes().to_vec(),
    }
}

/// Which credentials a push has offered: each at most once, or libgit2 asks forever.
#[derive(Default)]
struct Tried {
    /// `~/.ssh`, where the default identity files are (as OpenSSH would use them).
    ssh_dir: Option<PathBuf>,
    username: bool,
    agent: bool,
    /// Identity files offered so far.
    key_files: Vec<PathBuf>,
    helper: bool,
    default: bool,
}

/// The identity files OpenSSH tries by default, in its order (DSA left out).
const SSH_IDENTITIES: &[&str] = &["id_rsa", "id_ecdsa", "id_ed25519"];

impl Tried {
    fn new(ssh_dir: Option<PathBuf>) -> Tried {
        Tried {
            ssh_dir,
            ..Tried::default()
        }
    }

    /// The next credential for libgit2's `credentials` callback, or an error when every
    /// kind it allows has been offered once.
    fn next(
        &mut self,
        config: &git2::Config,
        url: &str,
        url_user: Option<&str>,
        allowed: CredentialType,
    ) -> Result<git2::Cred, git2::Error> {
        let user = url_user
            .map(str::to_string)
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "git".to_string());
        if allowed.contains(CredentialType::USERNAME) && !self.username {
            self.username = true;
            return git2::Cred::username(&user);
        }
        if allowed.contains(CredentialType::SSH_KEY) {
            if !self.agent {
                self.agent = true;
                return git2::Cred::ssh_key_from_agent(&user);
            }
            // Then unencrypted default identity files, like ssh without an agent.
            let next = self.ssh_dir.as_ref().and_then(|dir| {
                SSH_IDENTITIES
                    .iter()
                    .map(|name| dir.join(name))
                    .find(|p| p.is_file() && !self.key_files.contains(p))
            });
            if let Some(key) = next {
                self.key_files.push(key.clone());
                let public = key.with_extension("pub");
                let public = public.is_file().then_some(public.as_path());
                return git2::Cred::ssh_key(&user, public, &key, None);
            }
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) && !self.helper {
            self.helper = true;
            if let Ok(cred) = git2::Cred::credential_helper(config, url, url_user) {
                return Ok(cred);
            }
        }
        if allowed.contains(CredentialType::DEFAULT) && !self.default {
            self.default = true;
            return git2::Cred::default();
        }
        Err(git2::Error::new(
            ErrorCode::Auth,
            git2::ErrorClass::Net,
            format!("no accepted credentials (tried {})", self.offered()),
        ))
    }

    fn offered(&self) -> String {
        let mut offered = Vec::new();
        if self.agent {
            offered.push("ssh-agent".to_string());
        }
        for k in &self.key_files {
            offered.push(format!("the key file {}", k.display()));
        }
        if self.helper {
            offered.push("git credential helpers".to_string());
        }
        if self.default {
            offered.push("default credentials".to_string());
        }
        if offered.is_empty() {
            "nothing the server accepts".to_string()
        } else {
            offered.join(", ")
        }
    }
}
