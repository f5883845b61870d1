//! Running the `pipeline` binary from tests: a scratch directory per test with its own
//! working directory, backups and state, and assertions shared by the end-to-end tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::PgCluster;

const BIN: &str = env!("CARGO_BIN_EXE_pipeline");

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ is inside the repo")
        .to_path_buf()
}

pub fn nightly() -> PathBuf {
    repo().join("pipelines/nightly.toml")
}

/// A scratch place for one test: working directory, backups, state.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn backups(&self) -> PathBuf {
        self.path().join("backups")
    }
    /// `pipeline <args>` with a clean environment plus `env`.
    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        self.command(args, env)
            .output()
            .expect("run the pipeline binary")
    }
    /// `pipeline <args>` with `input` on its stdin.
    pub fn run_with_stdin(&self, args: &[&str], env: &[(&str, &str)], input: &str) -> Output {
        use std::io::Write;
        let mut child = self
            .command(args, env)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the pipeline binary");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("write stdin");
        drop(stdin);
        child.wait_with_output().expect("run the pipeline binary")
    }
    /// Starts `pipeline <args>` in the background (stdout and stderr piped), for tests
    /// that signal it while it runs.
    pub fn spawn(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
        self.command(args, env)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the pipeline binary")
    }
    /// The command `run` and `spawn` start, for a test that connects it itself (a
    /// pseudo-terminal, [`super::pty`]).
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut cmd = Command::new(BIN);
        for var in [
            "DATABASE_URL",
            "BACKUP_DIR",
            "BACKUP_RETENTION_DAYS",
            "PIPELINE_DIR",
            "S3_BUCKET",
            "S3_REGION",
            "S3_ACCESS_KEY",
            "S3_SECRET_KEY",
            "S3_ENDPOINT",
            "S3_PREFIX",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
            "GIT_SNAPSHOTS_ENABLED",
            "GIT_SNAPSHOT_USER",
            "GIT_SNAPSHOT_EMAIL",
            "GIT_SIGN_COMMITS",
            "GIT_SIGNING_KEY",
            "GIT_SNAPSHOT_REPO",
            "GIT_SNAPSHOT_PUSH",
            "GIT_SNAPSHOT_REMOTE",
            "GIT_SNAPSHOT_BRANCH",
            "GNUPGHOME",
            "PIPELINE_PROGRESS",
        ] {
            cmd.env_remove(var);
        }
        cmd.args(args)
            .current_dir(self.path())
            .env("PIPELINE_STATE_DIR", self.path().join("state"))
            // No AWS configuration of the machine may leak into a test.
            .env("AWS_CONFIG_FILE", self.path().join("no-aws-config"))
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                self.path().join("no-aws-credentials"),
            )
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env(
                "PIPELINE_CACHE_DIR",
                Path::new(env!("CARGO_TARGET_TMPDIR")).join("component-cache"),
            );
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }
    pub fn files(&self) -> Vec<String> {
        list(&self.backups())
    }
}

pub fn list(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    };
    v.sort();
    v
}

/// stdout then stderr: everything a run printed.
pub fn logs(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn assert_no_secret(pg: &PgCluster, text: &str) {
    let encoded = PgCluster::url(pg, "x");
    let pw_encoded = encoded
        .split("app:")
        .nth(1)
        .and_then(|s| s.split('@').next())
        .expect("url has a password");
    assert!(
        !text.contains(PgCluster::PASSWORD),
        "the password leaked:\n{text}"
    );
    assert!(
        !text.contains(pw_encoded),
        "the encoded password leaked:\n{text}"
    );
}

pub fn is_backup_name(name: &str) -> bool {
    // backup-2025-12-10T12-00-00-000Z.sql.zst
    let Some(t) = name
        .strip_prefix("backup-")
        .and_then(|n| n.strip_suffix(".sql.zst"))
    else {
        return false;
    };
    t.len() == 24
        && t.chars().enumerate().all(|(i, c)| match i {
            4 | 7 | 13 | 16 | 19 => c == '-',
            10 => c == 'T',
            23 => c == 'Z',
            _ => c.is_ascii_digit(),
        })
}
