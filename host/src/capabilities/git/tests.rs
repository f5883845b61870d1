//! Real repositories, the real `git` CLI as an independent witness (with no user or system
//! configuration), a real throwaway GnuPG key. Nothing is mocked; a missing `git`, `gpg` or
//! `ssh-keygen` fails the tests with how to install it.

use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::*;

const HOSTILE: &str = "it's \"quoted\" $(touch pwned) ; rm -rf x";
const UNICODE: &str = "Ünïcode ✓";

fn ada() -> Person {
    Person {
        name: "Ada Author".into(),
        email: "ada@example.invalid".into(),
    }
}

fn carl() -> Person {
    Person {
        name: "Carl Committer".into(),
        email: "carl@example.invalid".into(),
    }
}

/// Runs a program the tests need; a missing one is a failure that says how to install it.
fn run(mut cmd: Command, install: &str) -> Output {
    let program = cmd.get_program().to_string_lossy().into_owned();
    match cmd.output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            panic!("these tests need `{program}` on PATH: install it (`{install}`)")
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    }
}

/// A temporary directory with a private HOME for the git CLI and a repository `repo`.
struct Fixture {
    tmp: TempDir,
    repo: PathBuf,
    home: PathBuf,
}

impl Fixture {
    /// `repo` is a fresh repository on an unborn `main`.
    fn new() -> Fixture {
        let tmp = tempfile::Builder::new()
            .prefix("gitcap")
            .tempdir()
            .expect("tempdir");
        let home = tmp.path().join("home");
        std::fs::create_dir(&home).expect("home");
        let f = Fixture {
            repo: tmp.path().join("repo"),
            home,
            tmp,
        };
        f.git_in(f.tmp.path(), &["init", "-q", "-b", "main", "repo"]);
        f
    }

    fn cli(&self, dir: &Path, args: &[&str]) -> Command {
        let mut c = Command::new("git");
        c.arg("-C").arg(dir).args(args);
        self.isolate(&mut c);
        c
    }

    /// No user or system git configuration, a private HOME, a fixed identity for setup
    /// commits, no stdin.
    fn isolate(&self, c: &mut Command) {
        c.env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", &self.home)
            .env("GIT_AUTHOR_NAME", "Setup")
            .env("GIT_AUTHOR_EMAIL", "setup@example.invalid")
            .env("GIT_COMMITTER_NAME", "Setup")
            .env("GIT_COMMITTER_EMAIL", "setup@example.invalid");
        for v in ["GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GNUPGHOME"] {
            c.env_remove(v);
        }
        c.stdin(Stdio::null());
    }

    /// git in `dir`, which must succeed; its stdout.
    fn git_in(&self, dir: &Path, args: &[&str]) -> String {
        output_of(self.cli(dir, args), args)
    }

    fn git(&self, args: &[&str]) -> String {
        self.git_in(&self.repo, args)
    }

    fn write(&self, path: &str, content: &str) {
        let p = self.repo.join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, content).expect("write");
    }

    fn open(&self) -> Repo {
        Repo::open(&self.repo).expect("open")
    }

    fn commit(&self, paths: &[&str], message: &str) -> Result<Option<String>, GitError> {
        let paths: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        self.open()
            .commit_paths(&paths, message, &ada(), &carl(), None)
    }

    fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"]).trim().to_string()
    }

    fn count(&self) -> usize {
        self.git(&["rev-list", "--count", "HEAD"])
            .trim()
            .parse()
            .expect("count")
    }

    fn status(&self) -> Vec<String> {
        let out = self.git(&["status", "--porcelain=v1", "-z"]);
        let mut v: Vec<String> = out
            .split('\0')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }

    /// Everything under the fixture named `name`.
    fn find(&self, name: &str) -> Vec<PathBuf> {
        fn walk(dir: &Path, name: &str, hits: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let p = e.path();
                if e.file_name() == name {
                    hits.push(p.clone());
                }
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(&p, name, hits);
                }
            }
        }
        let mut hits = Vec::new();
        walk(self.tmp.path(), name, &mut hits);
        hits
    }
}

fn output_of(cmd: Command, what: &[&str]) -> String {
    let out = run(cmd, "apt-get install git");
    assert!(
        out.status.success(),
        "git {what:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// A throwaway GnuPG home (short path under /tmp for the agent's socket) with one
/// passphrase-less signing key; the agent is killed when it is dropped.
struct Gnupg {
    home: TempDir,
    fingerprint: String,
}

impl Gnupg {
    fn new() -> Gnupg {
        let home = tempfile::Builder::new()
            .prefix("gpg")
            .tempdir_in("/tmp")
            .expect("gnupg home");
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod 700");
        // Dropped (agent killed) even if what follows fails.
        let mut g = Gnupg {
            home,
            fingerprint: String::new(),
        };
        let out = g.gpg(&[
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
        ]);
        assert!(
            out.status.success(),
            "gpg --quick-gen-key failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = g.gpg(&["--batch", "--with-colons", "--list-secret-keys"]);
        let listing = String::from_utf8_lossy(&out.stdout).into_owned();
        g.fingerprint = listing
            .lines()
            .find(|l| l.starts_with("fpr:"))
            .and_then(|l| l.split(':').nth(9))
            .unwrap_or_else(|| panic!("no fingerprint in {listing}"))
            .to_string();
        g
    }

    fn gpg(&self, args: &[&str]) -> Output {
        let mut c = Command::new("gpg");
        c.args(args)
            .env("GNUPGHOME", self.home.path())
            .stdin(Stdio::null());
        run(c, "apt-get install gnupg")
    }

    fn signing(&self, key: Option<&str>) -> Signing {
        Signing::Gpg {
            key: key.map(str::to_string),
            program: None,
            home: Some(self.home.path().to_path_buf()),
        }
    }
}

impl Drop for Gnupg {
    fn drop(&mut self) {
        let mut c = Command::new("gpgconf");
        c.args(["--kill", "gpg-agent"])
            .env("GNUPGHOME", self.home.path())
            .stdin(Stdio::null());
        let _ = c.output();
    }
}

#[test]
fn first_commit_in_an_unborn_repository_has_exactly_the_given_people_and_message() {
    let f = Fixture::new();
    assert_eq!(f.open().head_branch().expect("head branch"), "main");
    f.write("a.txt", "alpha\n");
    f.write("sub/b.txt", "beta\n");
    f.write("run.sh", "#!/bin/sh\n");
    std::fs::set_permissions(
        f.repo.join("run.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    let id = f
        .commit(
            &["a.txt", "sub/b.txt", "run.sh"],
            "First snapshot\n\nWith a body.",
        )
        .expect("commit")
        .expect("a commit");

    assert_eq!(f.head(), id);
    assert_eq!(f.git(&["rev-parse", "refs/heads/main"]).trim(), id);
    let log = f.git(&["log", "-1", "--format=%an%x00%ae%x00%cn%x00%ce%x00%P%x00%B"]);
    let fields: Vec<&str> = log.split('\0').collect();
    assert_eq!(
        fields,
        [
            "Ada Author",
            "ada@example.invalid",
            "Carl Committer",
            "carl@example.invalid",
            "", // a root commit
            "First snapshot\n\nWith a body.\n\n"
        ]
    );
    let tree = f.git(&["ls-tree", "-r", "HEAD"]);
    let modes: Vec<(&str, &str)> = tree
        .lines()
        .filter_map(|l| Some((l.split(' ').next()?, l.split('\t').nth(1)?)))
        .collect();
    assert_eq!(
        modes,
        [
            ("100644", "a.txt"),
            ("100755", "run.sh"),
            ("100644", "sub/b.txt")
        ]
    );
    assert_eq!(f.git(&["show", "HEAD:sub/b.txt"]), "beta\n");
    assert!(f.status().is_empty(), "status: {:?}", f.status());
    assert_eq!(
        f.git(&["log", "-g", "--format=%gs", "refs/heads/main"]),
        "commit (initial): First snapshot\n"
    );
    f.git(&["fsck", "--strict", "--no-progress"]);
}

#[test]
fn only_the_given_paths_are_committed_and_other_changes_stay_as_they_were() {
    let f = Fixture::new();
    for p in ["ours.txt", "gone.txt", "staged.txt", "modified.txt"] {
        f.write(p, &format!("{p} v1\n"));
    }
    f.git(&["add", "."]);
    f.git(&["commit", "-q", "-m", "setup"]);
    let setup = f.head();

    f.write("staged.txt", "staged v2\n");
    f.git(&["add", "staged.txt"]);
    f.write("modified.txt", "modified v2\n");
    f.write("untracked.txt", "untracked\n");
    f.write("ours.txt", "ours v2\n");
    f.write("dir/new.txt", "new\n");
    std::fs::remove_file(f.repo.join("gone.txt")).expect("rm");

    let id = f
        .commit(&["ours.txt", "dir/new.txt", "gone.txt"], "snapshot")
        .expect("commit")
        .expect("a commit");

    assert_eq!(f.git(&["rev-parse", "HEAD^"]).trim(), setup);
    assert_eq!(
        f.git(&["show", "--name-status", "--format=", &id]),
        "A\tdir/new.txt\nD\tgone.txt\nM\tours.txt\n"
    );
    assert_eq!(f.git(&["show", "HEAD:staged.txt"]), "staged.txt v1\n");
    assert_eq!(f.git(&["show", "HEAD:modified.txt"]), "modified.txt v1\n");
    // The staged file is still staged (with its new content), the modified one still only
    // modified, the untracked one untracked; the committed paths are clean.
    assert_eq!(
        f.status(),
        [" M modified.txt", "?? untracked.txt", "M  staged.txt"]
    );
    assert_eq!(f.git(&["show", ":staged.txt"]), "staged v2\n");
    assert_eq!(f.git(&["diff", "--cached", "--name-only"]), "staged.txt\n");
    assert_eq!(
        std::fs::read_to_string(f.repo.join("modified.txt")).expect("read"),
        "modified v2\n"
    );
}

#[test]
fn nothing_changed_is_none_and_no_commit() {
    let f = Fixture::new();
    // Unborn, and nothing there to commit: no root commit, no branch.
    assert!(
        f.commit(&["missing.txt"], "nothing")
            .expect("commit")
            .is_none()
    );
    assert!(f.commit(&[], "nothing").expect("commit").is_none());
    assert!(
        !f.cli(&f.repo, &["rev-parse", "--verify", "-q", "HEAD"])
            .status()
            .expect("git")
            .success(),
        "the branch was born"
    );

    f.write("a.txt", "a\n");
    let first = f
        .commit(&["a.txt"], "one")
        .expect("commit")
        .expect("a commit");
    assert_eq!(f.commit(&["a.txt"], "again").expect("commit"), None);
    assert_eq!(
        f.commit(&["a.txt", "never-existed.txt"], "again")
            .expect("commit"),
        None
    );
    assert_eq!(f.count(), 1);
    assert_eq!(f.head(), first);
    assert_eq!(f.git(&["reflog", "--format=%gs"]).lines().count(), 1);
}

#[test]
fn hostile_names_and_messages_are_data() {
    let f = Fixture::new();
    let names = [
        HOSTILE.to_string(),
        format!("{UNICODE}.txt"),
        "line\nbreak.txt".to_string(),
        "-rf".to_string(),
        format!("dir $(id)/{HOSTILE}"),
    ];
    for n in &names {
        f.write(n, &format!("content of {n}\n"));
    }
    let message = format!("{HOSTILE}\n\n{UNICODE}\nNamed \"line\nbreak.txt\" `id` $HOME");
    let author = Person {
        name: format!("{UNICODE} {HOSTILE}"),
        email: "weird+$(touch pwned)@example.invalid".into(),
    };
    let id = f
        .open()
        .commit_paths(&names, &message, &author, &carl(), None)
        .expect("commit")
        .expect("a commit");

    let mut listed: Vec<String> = f
        .git(&["ls-tree", "-r", "-z", "--name-only", &id])
        .split('\0')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    listed.sort();
    let mut expected = names.to_vec();
    expected.sort();
    assert_eq!(listed, expected);
    for n in &names {
        assert_eq!(
            f.git(&["show", &format!("{id}:{n}")]),
            format!("content of {n}\n")
        );
    }
    assert_eq!(
        f.git(&["log", "-1", "--format=%B", &id]),
        format!("{message}\n\n")
    );
    assert_eq!(
        f.git(&["log", "-1", "--format=%an%x00%ae", &id]),
        format!("{}\0{}\n", author.name, author.email)
    );
    assert!(f.status().is_empty(), "status: {:?}", f.status());

    // A person's name or email with a line break or angle brackets would forge headers.
    for (name, email) in [
        ("Evil\nName", "e@example.invalid"),
        ("Evil", "e@example.invalid>\ncommitter x <x"),
        ("Evil <x@y>", "e@example.invalid"),
        ("", "e@example.invalid"),
    ] {
        let p = Person {
            name: name.into(),
            email: email.into(),
        };
        f.write("later.txt", "later\n");
        let err = f
            .open()
            .commit_paths(&["later.txt".into()], "m", &p, &carl(), None)
            .expect_err("a hostile person is refused");
        assert!(matches!(err, GitError::Invalid { .. }), "{err}");
    }
    assert_eq!(f.count(), 1);

    assert!(f.find("pwned").is_empty(), "found {:?}", f.find("pwned"));
    assert!(!Path::new("pwned").exists());
}

#[test]
fn paths_outside_the_working_tree_are_refused() {
    let f = Fixture::new();
    f.write("a.txt", "a\n");
    f.write("sub/x", "x\n");
    std::os::unix::fs::symlink("/etc", f.repo.join("etc-link")).expect("symlink");
    std::fs::create_dir_all(f.repo.join("nested/.git")).expect("nested repo");
    for bad in [
        "../outside",
        "sub/../a.txt",
        "/etc/passwd",
        "./a.txt",
        "a//b",
        "sub/",
        "",
        ".git/config",
        "sub/.GIT/x",
        ".git",
        "etc-link/passwd",
        "nested/file",
        "sub",
    ] {
        let err = f
            .commit(&["a.txt", bad], "bad")
            .expect_err(&format!("{bad:?} is refused"));
        assert!(
            matches!(err, GitError::InvalidPath { .. }),
            "{bad:?}: {err}"
        );
        let shown = err.to_string();
        assert!(shown.contains(&f.repo.display().to_string()), "{shown}");
    }
    assert!(
        !f.cli(&f.repo, &["rev-parse", "--verify", "-q", "HEAD"])
            .status()
            .expect("git")
            .success(),
        "something was committed"
    );
    // A symbolic link itself is committed as a link, not followed.
    f.commit(&["etc-link"], "link")
        .expect("commit")
        .expect("a commit");
    assert_eq!(
        f.git(&["ls-tree", "HEAD", "etc-link"])
            .split_whitespace()
            .next(),
        Some("120000")
    );
    assert_eq!(f.git(&["show", "HEAD:etc-link"]), "/etc");
}

#[test]
fn open_takes_exactly_a_working_tree() {
    let f = Fixture::new();
    f.write("sub/a", "a\n");
    let refused = |p: &Path| match Repo::open(p) {
        Ok(_) => panic!("{} opened", p.display()),
        Err(e) => {
            assert!(matches!(e, GitError::Open { .. }), "{e}");
            assert!(e.to_string().contains(&p.display().to_string()), "{e}");
        }
    };
    refused(&f.repo.join("sub")); // no discovery of the parent's repository
    refused(&f.repo.join(".git"));
    refused(f.tmp.path());
    f.git_in(f.tmp.path(), &["init", "-q", "--bare", "bare.git"]);
    refused(&f.tmp.path().join("bare.git"));
    assert!(Repo::open(&f.repo).is_ok());

    f.git(&["commit", "-q", "--allow-empty", "-m", "x"]);
    f.git(&["checkout", "-q", "--detach"]);
    f.write("b", "b\n");
    let err = f.commit(&["b"], "m").expect_err("detached HEAD");
    assert!(err.to_string().contains("detached"), "{err}");
}

#[test]
fn a_gpg_signed_commit_verifies_with_git() {
    let f = Fixture::new();
    let gpg = Gnupg::new();
    f.write("a.txt", "signed\n");
    let message = format!("{HOSTILE}\n\n{UNICODE}");
    let signing = gpg.signing(Some(&gpg.fingerprint));
    let id = f
        .open()
        .commit_paths(&["a.txt".into()], &message, &ada(), &carl(), Some(&signing))
        .expect("signed commit")
        .expect("a commit");
    assert_eq!(f.head(), id);
    assert!(f.status().is_empty(), "status: {:?}", f.status());

    let verify = |id: &str| {
        let mut c = f.cli(&f.repo, &["verify-commit", "--raw", id]);
        c.env("GNUPGHOME", gpg.home.path());
        run(c, "apt-get install git gnupg")
    };
    let out = verify(&id);
    assert!(
        out.status.success(),
        "git verify-commit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[GNUPG:] GOODSIG"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = f.cli(&f.repo, &["log", "-1", "--format=%G?%x00%GF%x00%B", &id]);
    c.env("GNUPGHOME", gpg.home.path());
    assert_eq!(
        output_of(c, &["log"]),
        format!("G\0{}\0{message}\n\n", gpg.fingerprint)
    );

    // gpg's default key, no -u.
    f.write("a.txt", "signed by the default key\n");
    let id = f
        .open()
        .commit_paths(
            &["a.txt".into()],
            "default key",
            &ada(),
            &carl(),
            Some(&gpg.signing(None)),
        )
        .expect("signed commit")
        .expect("a commit");
    assert!(verify(&id).status.success());

    // An unsigned commit does not verify: the check above means something.
    f.write("a.txt", "unsigned\n");
    let id = f
        .commit(&["a.txt"], "unsigned")
        .expect("commit")
        .expect("a commit");
    assert!(!verify(&id).status.success());
    drop(gpg);
}

#[test]
fn a_gpg_failure_names_gpg_and_commits_nothing() {
    let f = Fixture::new();
    let gpg = Gnupg::new();
    f.write("a.txt", "a\n");
    f.commit(&["a.txt"], "one").expect("commit");
    let before = f.head();
    f.write("a.txt", "changed\n");
    let err = f
        .open()
        .commit_paths(
            &["a.txt".into()],
            "signed",
            &ada(),
            &carl(),
            Some(&gpg.signing(Some("0000DEADBEEF0000"))),
        )
        .expect_err("an unknown key fails");
    let shown = err.to_string();
    assert!(matches!(err, GitError::Signer { .. }), "{shown}");
    assert!(shown.contains("gpg"), "{shown}");
    assert!(
        shown.contains("0000DEADBEEF0000"),
        "gpg's stderr is in: {shown}"
    );
    assert!(shown.contains(&f.repo.display().to_string()), "{shown}");
    assert_eq!(f.head(), before);
    assert_eq!(f.status(), [" M a.txt"]);

    let missing = Signing::Gpg {
        key: None,
        program: Some(f.tmp.path().join("no-such-gpg")),
        home: None,
    };
    let err = f
        .open()
        .commit_paths(&["a.txt".into()], "signed", &ada(), &carl(), Some(&missing))
        .expect_err("a missing gpg fails");
    let shown = err.to_string();
    assert!(matches!(err, GitError::SignerMissing { .. }), "{shown}");
    assert!(shown.contains("apt-get install gnupg"), "{shown}");
    assert_eq!(f.head(), before);

    let err = f
        .open()
        .commit_paths(
            &["a.txt".into()],
            "signed",
            &ada(),
            &carl(),
            Some(&gpg.signing(Some("--output=/tmp/x"))),
        )
        .expect_err("an option as key is refused");
    assert!(matches!(err, GitError::Invalid { .. }), "{err}");
    assert_eq!(f.head(), before);
}

#[test]
fn an_ssh_signed_commit_verifies_with_git() {
    let f = Fixture::new();
    let key = f.tmp.path().join("id_ed25519");
    let mut c = Command::new("ssh-keygen");
    c.args([
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "snap@test.invalid",
        "-f",
    ])
    .arg(&key)
    .stdin(Stdio::null());
    let out = run(c, "apt-get install openssh-client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(key.with_extension("pub")).expect("public key");
    let allowed = f.tmp.path().join("allowed_signers");
    std::fs::write(&allowed, format!("snap@test.invalid {public}")).expect("allowed signers");

    f.write("a.txt", "ssh signed\n");
    let signing = Signing::Ssh {
        key_file: key,
        program: None,
    };
    let id = f
        .open()
        .commit_paths(
            &["a.txt".into()],
            "ssh signed",
            &ada(),
            &carl(),
            Some(&signing),
        )
        .expect("signed commit")
        .expect("a commit");
    let allowed = format!("gpg.ssh.allowedSignersFile={}", allowed.display());
    let out = run(
        f.cli(&f.repo, &["-c", &allowed, "verify-commit", &id]),
        "apt-get install git openssh-client",
    );
    assert!(
        out.status.success(),
        "git verify-commit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("Good \"git\" signature for snap@test.invalid"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The fixture's repository with remote `origin`, a bare repository in the fixture.
fn with_origin(f: &Fixture) -> PathBuf {
    let bare = f.tmp.path().join("origin.git");
    f.git_in(
        f.tmp.path(),
        &["init", "-q", "--bare", "-b", "main", "origin.git"],
    );
    f.git(&["remote", "add", "origin", &bare.display().to_string()]);
    bare
}

#[test]
fn push_lands_on_the_remote_and_a_non_fast_forward_is_refused() {
    let f = Fixture::new();
    let bare = with_origin(&f);
    f.write("a.txt", "one\n");
    let first = f
        .commit(&["a.txt"], "one")
        .expect("commit")
        .expect("a commit");
    let repo = f.open();
    repo.push("origin", "main").expect("push");
    assert_eq!(
        f.git_in(&bare, &["rev-parse", "refs/heads/main"]).trim(),
        first
    );
    assert_eq!(
        f.git(&["rev-parse", "refs/remotes/origin/main"]).trim(),
        first
    );

    f.write("a.txt", "two\n");
    let second = f
        .commit(&["a.txt"], "two")
        .expect("commit")
        .expect("a commit");
    repo.push("origin", "main").expect("a fast-forward push");
    assert_eq!(
        f.git_in(&bare, &["rev-parse", "refs/heads/main"]).trim(),
        second
    );

    // Someone else pushes first; our next commit does not contain theirs.
    f.git_in(
        f.tmp.path(),
        &["clone", "-q", &bare.display().to_string(), "other"],
    );
    let other = f.tmp.path().join("other");
    std::fs::write(other.join("theirs.txt"), "theirs\n").expect("write");
    f.git_in(&other, &["add", "theirs.txt"]);
    f.git_in(&other, &["commit", "-q", "-m", "theirs"]);
    f.git_in(&other, &["push", "-q", "origin", "main"]);
    let theirs = f.git_in(&other, &["rev-parse", "HEAD"]).trim().to_string();

    f.write("a.txt", "three\n");
    f.commit(&["a.txt"], "three")
        .expect("commit")
        .expect("a commit");
    let err = repo.push("origin", "main").expect_err("not a fast-forward");
    let shown = err.to_string();
    assert!(matches!(err, GitError::Rejected { .. }), "{shown}");
    assert!(shown.contains("refs/heads/main"), "{shown}");
    assert!(shown.contains("`origin`"), "{shown}");
    assert_eq!(
        f.git_in(&bare, &["rev-parse", "refs/heads/main"]).trim(),
        theirs
    );

    // Even when we know their commit, pushing over it is refused.
    f.git(&["fetch", "-q", "origin"]);
    let err = repo
        .push("origin", "main")
        .expect_err("still not a fast-forward");
    assert!(err.to_string().contains("refs/heads/main"), "{err}");
    assert_eq!(
        f.git_in(&bare, &["rev-parse", "refs/heads/main"]).trim(),
        theirs
    );
}

#[test]
fn push_takes_only_configured_remote_names_and_existing_branches() {
    let f = Fixture::new();
    with_origin(&f);
    f.write("a.txt", "a\n");
    f.commit(&["a.txt"], "a").expect("commit");
    let repo = f.open();
    for (remote, branch) in [
        ("https://example.invalid/x.git", "main"),
        ("/tmp/somewhere", "main"),
        ("nope", "main"),
        ("origin", "no-such-branch"),
        ("origin", "--force"),
        ("origin", "main:refs/heads/other"),
    ] {
        let err = repo.push(remote, branch).expect_err("refused");
        assert!(
            matches!(err, GitError::Invalid { .. }),
            "{remote} {branch}: {err}"
        );
        assert!(
            err.to_string().contains(&f.repo.display().to_string()),
            "{err}"
        );
    }
}

/// `git daemon` serving the fixture's directory on a free local port, with pushes enabled;
/// killed when dropped.
struct Daemon(std::process::Child, u16);

impl Daemon {
    fn start(f: &Fixture) -> Daemon {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        // git-daemon itself, not `git daemon`: killing the `git` wrapper would leave it.
        let exec_path = f.git_in(f.tmp.path(), &["--exec-path"]);
        let program = Path::new(exec_path.trim()).join("git-daemon");
        assert!(
            program.exists(),
            "{} is missing: install git (`apt-get install git`)",
            program.display()
        );
        let mut c = Command::new(program);
        f.isolate(&mut c);
        c.args([
            "--reuseaddr",
            "--export-all",
            "--enable=receive-pack",
            "--listen=127.0.0.1",
            &format!("--port={port}"),
            &format!("--base-path={}", f.tmp.path().display()),
        ])
        .arg(f.tmp.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = c.spawn().expect("git daemon (apt-get install git)");
        let d = Daemon(child, port);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "git daemon did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_push_the_server_rejects_is_an_error_with_its_message() {
    let f = Fixture::new();
    let bare = f.tmp.path().join("served.git");
    f.git_in(
        f.tmp.path(),
        &["init", "-q", "--bare", "-b", "main", "served.git"],
    );
    let hook = bare.join("hooks/pre-receive");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho 'snapshots are frozen today' >&2\nexit 1\n",
    )
    .expect("hook");
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let daemon = Daemon::start(&f);
    f.git(&[
        "remote",
        "add",
        "origin",
        &format!("git://127.0.0.1:{}/served.git", daemon.1),
    ]);

    f.write("a.txt", "a\n");
    f.commit(&["a.txt"], "a")
        .expect("commit")
        .expect("a commit");
    let err = f
        .open()
        .push("origin", "main")
        .expect_err("the hook rejects");
    let shown = err.to_string();
    assert!(matches!(err, GitError::Rejected { .. }), "{shown}");
    assert!(shown.contains("refs/heads/main"), "{shown}");
    assert!(shown.contains("pre-receive hook declined"), "{shown}");
    assert!(shown.contains("snapshots are frozen today"), "{shown}");
    assert!(
        !f.cli(&bare, &["rev-parse", "--verify", "-q", "refs/heads/main"])
            .status()
            .expect("git")
            .success()
    );

    // Without the hook the same push lands.
    std::fs::remove_file(&hook).expect("rm hook");
    f.open().push("origin", "main").expect("push");
    assert_eq!(
        f.git_in(&bare, &["rev-parse", "refs/heads/main"]).trim(),
        f.head()
    );
    drop(daemon);
}

#[test]
fn credentials_are_offered_at_most_once_each() {
    let f = Fixture::new();
    let ssh_dir = f.home.join(".ssh");
    std::fs::create_dir(&ssh_dir).expect("mkdir .ssh");
    let mut c = Command::new("ssh-keygen");
    c.args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(ssh_dir.join("id_ed25519"))
        .stdin(Stdio::null());
    let out = run(c, "apt-get install openssh-client");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kind = |c: &git2::Cred| CredentialType::from_bits_truncate(c.credtype());
    let refused = |r: Result<git2::Cred, git2::Error>| match r {
        Ok(c) => panic!("offered {:?} again", kind(&c)),
        Err(e) => e,
    };
    let empty = git2::Config::new().expect("config");

    // ssh with no user in the URL: a user name, the agent, the key file, then nothing.
    let mut tried = Tried::new(Some(ssh_dir.clone()));
    let allowed = CredentialType::USERNAME | CredentialType::SSH_KEY;
    let url = "ssh://example.invalid/x.git";
    let first = tried.next(&empty, url, None, allowed).expect("user name");
    assert_eq!(kind(&first), CredentialType::USERNAME);
    let agent = tried.next(&empty, url, Some("git"), CredentialType::SSH_KEY);
    assert_eq!(kind(&agent.expect("agent")), CredentialType::SSH_KEY);
    let file = tried.next(&empty, url, Some("git"), CredentialType::SSH_KEY);
    assert_eq!(kind(&file.expect("key file")), CredentialType::SSH_KEY);
    assert_eq!(tried.key_files, [ssh_dir.join("id_ed25519")]);
    let err = refused(tried.next(&empty, url, Some("git"), CredentialType::SSH_KEY));
    assert_eq!(err.code(), ErrorCode::Auth);
    assert!(err.message().contains("ssh-agent"), "{}", err.message());
    assert!(err.message().contains("id_ed25519"), "{}", err.message());
    let err = refused(tried.next(&empty, url, Some("git"), allowed));
    assert_eq!(err.code(), ErrorCode::Auth);

    // https: git's credential helper (the real `git credential-store`), once.
    let store = f.tmp.path().join("store");
    std::fs::write(&store, "https://snap:s3cret@example.invalid\n").expect("store");
    let config_file = f.tmp.path().join("config");
    std::fs::write(
        &config_file,
        format!(
            "[credential]\n\thelper = store --file={}\n",
            store.display()
        ),
    )
    .expect("config");
    let config = git2::Config::open(&config_file).expect("config");
    let mut tried = Tried::new(None);
    let allowed = CredentialType::USER_PASS_PLAINTEXT;
    let url = "https://example.invalid/x.git";
    let cred = tried
        .next(&config, url, None, allowed)
        .expect("from the helper");
    assert_eq!(kind(&cred), CredentialType::USER_PASS_PLAINTEXT);
    let err = refused(tried.next(&config, url, None, allowed));
    assert!(
        err.message().contains("credential helper"),
        "{}",
        err.message()
    );
    // No helper configured: no credentials, no endless loop.
    let mut tried = Tried::new(None);
    assert!(tried.next(&empty, url, None, allowed).is_err());
}

#[test]
fn a_branch_that_moved_meanwhile_is_not_overwritten() {
    let gpg = Gnupg::new();
    for born in [true, false] {
        let f = Fixture::new();
        if born {
            f.write("a.txt", "a\n");
            f.commit(&["a.txt"], "one").expect("commit");
        }
        // A "gpg" that lets another commit land on the branch while it signs.
        let script = f.tmp.path().join("gpg-racing");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n\
                 GIT_CONFIG_GLOBAL=/dev/null GIT_CONFIG_NOSYSTEM=1 HOME='{home}' \
                 GIT_AUTHOR_NAME=Other GIT_AUTHOR_EMAIL=o@example.invalid \
                 GIT_COMMITTER_NAME=Other GIT_COMMITTER_EMAIL=o@example.invalid \
                 git -C '{repo}' commit -q --allow-empty -m concurrent </dev/null >&2 || exit 9\n\
                 exec gpg \"$@\"\n",
                home = f.home.display(),
                repo = f.repo.display()
            ),
        )
        .expect("script");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let signing = Signing::Gpg {
            key: Some(gpg.fingerprint.clone()),
            program: Some(script),
            home: Some(gpg.home.path().to_path_buf()),
        };
        f.write("a.txt", "ours\n");
        let err = f
            .open()
            .commit_paths(&["a.txt".into()], "ours", &ada(), &carl(), Some(&signing))
            .expect_err("the branch moved");
        assert!(matches!(err, GitError::RefMoved { .. }), "{err}");
        assert!(err.to_string().contains("refs/heads/main"), "{err}");
        // Their commit stays, ours is not on the branch and the index is as it was.
        assert_eq!(f.git(&["log", "-1", "--format=%s"]), "concurrent\n");
        assert_eq!(f.count(), if born { 2 } else { 1 });
        assert_eq!(f.status(), [if born { " M a.txt" } else { "?? a.txt" }]);
    }
}

#[test]
fn a_file_can_become_a_directory_and_back() {
    let f = Fixture::new();
    f.write("a", "file\n");
    f.write("d/x", "x\n");
    f.commit(&["a", "d/x"], "one").expect("commit");
    std::fs::remove_file(f.repo.join("a")).expect("rm");
    f.write("a/b", "nested\n");
    std::fs::remove_dir_all(f.repo.join("d")).expect("rm");
    f.write("d", "now a file\n");
    f.commit(&["a/b", "d"], "two")
        .expect("commit")
        .expect("a commit");
    assert_eq!(f.git(&["ls-tree", "-r", "--name-only", "HEAD"]), "a/b\nd\n");
    assert!(f.status().is_empty(), "status: {:?}", f.status());

    std::fs::remove_dir_all(f.repo.join("a")).expect("rm");
    f.write("a", "file again\n");
    std::fs::remove_file(f.repo.join("d")).expect("rm");
    f.write("d/y", "y\n");
    f.commit(&["a", "d/y"], "three")
        .expect("commit")
        .expect("a commit");
    assert_eq!(f.git(&["ls-tree", "-r", "--name-only", "HEAD"]), "a\nd/y\n");
    assert_eq!(f.git(&["show", "HEAD:a"]), "file again\n");
    assert!(f.status().is_empty(), "status: {:?}", f.status());
    f.git(&["fsck", "--strict", "--no-progress"]);
}
