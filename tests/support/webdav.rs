//! A real WebDAV server for tests — `rclone serve webdav` (Debian's `rclone` package) on a
//! free port, serving a temporary directory behind basic authentication, killed when
//! dropped — and the example WebDAV sink plugin (`examples/webdav-sink`), built the way a
//! stranger builds a plugin: its own crate, its own lock file, `cargo build` in its directory.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::s3::free_port;
use super::scratch::repo;

pub const USER: &str = "backup";
pub const PASSWORD: &str = "dav-secret-3b7e91c4";

/// The collection the tests store backups in, under the server's root.
pub const COLLECTION: &str = "backups";

const INSTALL_HINT: &str = "the WebDAV tests need `rclone` on PATH (Debian/Ubuntu: \
     `apt-get install rclone`, or run scripts/install-prerequisites.sh --tests)";

/// `rclone serve webdav` on a free port, serving a temporary directory; killed when dropped.
pub struct WebDavServer {
    root: tempfile::TempDir,
    state: tempfile::TempDir,
    pub port: u16,
    child: Child,
}

impl WebDavServer {
    pub fn start() -> WebDavServer {
        let root = tempfile::tempdir().expect("temp dir");
        let state = tempfile::tempdir().expect("temp dir");
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            let port = free_port();
            let log = state.path().join(format!("rclone-{attempt}.log"));
            let mut child = spawn_rclone(root.path(), state.path(), &log, port);
            match wait_until_listening(&mut child, port) {
                Ok(()) => {
                    return WebDavServer {
                        root,
                        state,
                        port,
                        child,
                    };
                }
                // Another process took the port between the probe and rclone's bind.
                Err(exited) if exited && attempt < ATTEMPTS => continue,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "rclone serve webdav did not start on 127.0.0.1:{port}:\n{}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
            }
        }
        unreachable!("the loop returns or panics");
    }

    /// `127.0.0.1:<port>`: what a stage must be granted to reach the server.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The URL of the test collection, `http://127.0.0.1:<port>/backups/`.
    pub fn url(&self) -> String {
        format!("http://{}/{COLLECTION}/", self.host())
    }

    /// The directory the server serves.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The test collection's directory on disk.
    pub fn collection(&self) -> PathBuf {
        self.root().join(COLLECTION)
    }

    /// Names of the files in the test collection and the collections below it (the example
    /// sink files artifacts under `YYYY/MM/`), sorted; empty if it does not exist.
    pub fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .paths()
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names
    }

    /// Where the file `name` is on disk, relative to the collection (`2026/12/name`).
    pub fn path_of(&self, name: &str) -> PathBuf {
        let collection = self.collection();
        self.paths()
            .into_iter()
            .find(|p| p.file_name().is_some_and(|n| n == name))
            .and_then(|p| p.strip_prefix(&collection).ok().map(Path::to_path_buf))
            .unwrap_or_else(|| panic!("{name} is not in the collection: {:?}", self.files()))
    }

    /// Every file below the collection.
    fn paths(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut dirs = vec![self.collection()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    found.push(path);
                }
            }
        }
        found
    }

    /// What rclone logged (for failure messages).
    pub fn log(&self) -> String {
        let mut text = String::new();
        for name in super::scratch::list(self.state.path()) {
            if name.ends_with(".log") {
                text.push_str(
                    &std::fs::read_to_string(self.state.path().join(name)).unwrap_or_default(),
                );
            }
        }
        text
    }
}

impl Drop for WebDavServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_rclone(root: &Path, state: &Path, log: &Path, port: u16) -> Child {
    let result = Command::new("rclone")
        .args(["serve", "webdav"])
        .arg(root)
        .args(["--addr", &format!("127.0.0.1:{port}")])
        .args(["--user", USER, "--pass", PASSWORD])
        // No configuration or cache of the machine's user is read or written.
        .arg("--config")
        .arg(state.join("rclone.conf"))
        .arg("--cache-dir")
        .arg(state.join("cache"))
        .arg("--log-file")
        .arg(log)
        .env_remove("RCLONE_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match result {
        Ok(child) => child,
        Err(e) => panic!("\n\ncannot start rclone ({e}): {INSTALL_HINT}\n\n"),
    }
}

/// Wait until the server accepts connections. `Err(true)` when rclone exited (e.g. the port
/// was taken), `Err(false)` on a timeout.
fn wait_until_listening(child: &mut Child, port: u16) -> Result<(), bool> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if matches!(child.try_wait(), Ok(Some(_))) {
            return Err(true);
        }
        if Instant::now() > deadline {
            return Err(false);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The example plugin, `pipeline_webdav.wasm`, built once per test binary with
/// `cargo build --release --locked --target wasm32-wasip2` in `examples/webdav-sink`, into
/// `target/examples` (never the host's own target directory).
pub fn plugin() -> &'static Path {
    static WASM: OnceLock<PathBuf> = OnceLock::new();
    WASM.get_or_init(|| {
        super::cargo::build_wasm(
            &repo().join("examples/webdav-sink"),
            "pipeline_webdav",
            true,
        )
    })
}
