//! A real S3-compatible server for tests: s3s-fs (which checks SigV4 signatures) on a
//! free port, serving a temporary directory, killed when dropped.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ACCESS_KEY: &str = "AKIAPIPELINETEST";
pub const SECRET_KEY: &str = "pipeline-test-secret-4f9c2e1b";
pub const BUCKET: &str = "backups";

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// An s3s-fs server on a free port, serving a directory; killed when dropped.
pub struct S3Server {
    root: tempfile::TempDir,
    pub port: u16,
    pub child: Child,
}

impl S3Server {
    pub fn start() -> S3Server {
        let root = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(root.path().join(BUCKET)).expect("create the bucket");
        let port = free_port();
        let child = spawn_s3s(root.path(), port);
        S3Server { root, port, child }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn bucket(&self) -> PathBuf {
        self.root.path().join(BUCKET)
    }

    /// Objects under `prefix` (a directory in the bucket), sorted.
    pub fn objects(&self, prefix: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.bucket().join(prefix))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Multipart uploads the server still holds (started and neither completed nor
    /// aborted), and their parts.
    pub fn pending_uploads(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.root.path())
            .expect("read the server's root")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".upload"))
            .collect();
        v.sort();
        v
    }
}

pub fn spawn_s3s(root: &Path, port: u16) -> Child {
    let child = Command::new("s3s-fs")
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let child = match child {
        Ok(c) => c,
        Err(e) => panic!(
            "\n\ncannot start s3s-fs ({e}): the S3 tests need it on PATH.\n\
             install it: cargo install s3s-fs --version 0.14.1 --features binary --locked\n\
             (or run scripts/install-prerequisites.sh --tests)\n\n"
        ),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "s3s-fs did not start on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
