//! Real git and gpg for the snapshot tests: repositories, a bare remote and a throwaway
//! signing key in a GNUPGHOME of the test's own. A missing `git` or `gpg` is a loud failure.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `git -C dir args…` with no global or system configuration; panics on failure.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = git_cmd(dir, args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run git (apt-get install git): {e}"));
    assert!(
        out.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn git_cmd(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_AUTHOR_NAME", "Test Human")
        .env("GIT_AUTHOR_EMAIL", "human@test.invalid")
        .env("GIT_COMMITTER_NAME", "Test Human")
        .env("GIT_COMMITTER_EMAIL", "human@test.invalid");
    cmd
}

/// A repository on branch `main` with one commit, and a bare remote `origin`.
pub struct Repo {
    pub dir: PathBuf,
    pub remote: PathBuf,
}

impl Repo {
    pub fn new(parent: &Path) -> Repo {
        let dir = parent.join("repo");
        let remote = parent.join("remote.git");
        std::fs::create_dir_all(&dir).unwrap();
        git(
            parent,
            &[
                "init",
                "-q",
                "--bare",
                "-b",
                "main",
                remote.to_str().unwrap(),
            ],
        );
        git(&dir, &["init", "-q", "-b", "main"]);
        std::fs::write(dir.join("README.md"), "app\n").unwrap();
        git(&dir, &["add", "README.md"]);
        git(&dir, &["commit", "-q", "-m", "initial"]);
        git(&dir, &["remote", "add", "origin", remote.to_str().unwrap()]);
        git(&dir, &["push", "-q", "origin", "main"]);
        Repo { dir, remote }
    }

    pub fn head(&self) -> String {
        git(&self.dir, &["rev-parse", "HEAD"]).trim().to_string()
    }

    /// Commits since `since` (exclusive), oldest first: (id, subject).
    pub fn commits_since(&self, since: &str) -> Vec<(String, String)> {
        let range = format!("{since}..HEAD");
        git(
            &self.dir,
            &["log", "--reverse", "--format=%H%x09%s", &range],
        )
        .lines()
        .map(|l| {
            let (id, subject) = l.split_once('\t').expect("id and subject");
            (id.to_string(), subject.to_string())
        })
        .collect()
    }
}

/// A GNUPGHOME with one signing key; the agent is stopped on drop.
pub struct Gpg {
    pub home: tempfile::TempDir,
    pub fingerprint: String,
}

impl Gpg {
    pub fn new() -> Gpg {
        // A short path: gpg-agent's socket path has a length limit.
        let home = tempfile::Builder::new()
            .prefix("gpg")
            .tempdir_in("/tmp")
            .expect("gnupg home");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let out = Command::new("gpg")
            .env("GNUPGHOME", home.path())
            .args([
                "--batch",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--quick-gen-key",
                "Snap Test <snap@test.invalid>",
                "ed25519",
                "sign",
                "never",
            ])
            .output()
            .unwrap_or_else(|e| panic!("cannot run gpg (apt-get install gnupg): {e}"));
        assert!(
            out.status.success(),
            "gpg --quick-gen-key: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new("gpg")
            .env("GNUPGHOME", home.path())
            .args(["--with-colons", "--list-secret-keys"])
            .output()
            .expect("gpg --list-secret-keys");
        let fingerprint = String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("fpr:"))
            .and_then(|l| l.trim_matches(':').rsplit(':').next().map(str::to_string))
            .expect("a fingerprint");
        Gpg { home, fingerprint }
    }

    pub fn path(&self) -> &Path {
        self.home.path()
    }

    /// `git verify-commit id` with this keyring.
    pub fn verify(&self, repo: &Path, id: &str) -> Result<(), String> {
        let out = git_cmd(repo, &["verify-commit", id])
            .env("GNUPGHOME", self.path())
            .output()
            .expect("git verify-commit");
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}
