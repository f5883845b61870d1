//! A real OCI registry for the `oci://` plugin tests: Debian's `docker-registry` (the CNCF
//! distribution reference server) on a free port of 127.0.0.1, storing on the filesystem
//! in a scratch directory, with htpasswd (bcrypt) basic authentication. Stopped on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Registry {
    tmp: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Registry {
    pub const USER: &'static str = "publisher";
    /// Long enough for the log's redactor to mask it wherever it appears.
    pub const PASSWORD: &'static str = "registry-Pa55word-for-tests";

    /// Starts a registry whose only user is [`Self::USER`] / [`Self::PASSWORD`].
    pub fn start() -> Registry {
        let bin = which("docker-registry").unwrap_or_else(|| {
            panic!(
                "docker-registry not found: install it (Debian/Ubuntu: `apt-get install docker-registry`, \
                 or `scripts/install-prerequisites.sh --tests`)"
            )
        });
        let htpasswd_bin = which("htpasswd").unwrap_or_else(|| {
            panic!(
                "htpasswd not found: install it (Debian/Ubuntu: `apt-get install apache2-utils`, \
                 or `scripts/install-prerequisites.sh --tests`)"
            )
        });
        let tmp = tempfile::tempdir().expect("temp dir for the registry");
        let htpasswd = tmp.path().join("htpasswd");
        let out = Command::new(htpasswd_bin)
            .args(["-Bbn", Self::USER, Self::PASSWORD])
            .output()
            .expect("run htpasswd");
        assert!(
            out.status.success(),
            "htpasswd -B failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&htpasswd, &out.stdout).expect("write htpasswd");
        let port = free_port();
        let config = tmp.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {data}\n\
                 http:\n  addr: 127.0.0.1:{port}\n  secret: pipeline-tests\n\
                 auth:\n  htpasswd:\n    realm: pipeline-tests\n    path: {htpasswd}\n",
                data = tmp.path().join("data").display(),
                htpasswd = htpasswd.display()
            ),
        )
        .expect("write the registry's config");
        let log = std::fs::File::create(tmp.path().join("registry.log")).expect("registry log");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let mut reg = Registry {
            tmp,
            port,
            child: Some(child),
        };
        reg.wait_ready();
        reg
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                if answer.starts_with("HTTP/1.") {
                    return;
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("docker-registry exited ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer within 20 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`, as a reference names it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("registry.log")).unwrap_or_default()
    }

    /// The file in the registry's storage that holds blob `sha256:<hex>`.
    pub fn blob_file(&self, hex: &str) -> PathBuf {
        self.tmp
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The registry's scratch directory (for a Docker config file next to it).
    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// Stops the server (a test of what works without it).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}
