//! A real SMTP server (Python's aiosmtpd running `smtpd.py` beside this file) on a free
//! port, stopped when dropped. It serves a certificate for `127.0.0.1` and `localhost`
//! issued by a throwaway CA this harness makes with the openssl CLI (the client under test
//! trusts it through `SSL_CERT_FILE`, or [`SmtpServer::ca`] directly), requires a login
//! ([`SmtpServer::USER`], [`SmtpServer::PASSWORD`]) before it takes a message, and writes
//! every message it accepts, with its envelope, to a directory the test reads
//! ([`SmtpServer::messages`]); [`SmtpServer::events`] lists the commands it saw.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use super::s3::free_port;

const INSTALL_HINT: &str = "install it: python3 -m pip install 'aiosmtpd==1.4.6' \
     (or run scripts/install-prerequisites.sh --tests)";
const OPENSSL_HINT: &str = "install the openssl command (Debian: apt-get install openssl, or run scripts/install-prerequisites.sh --tests)";

const SCRIPT: &str = include_str!("smtpd.py");

/// How the server protects connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// STARTTLS offered (and required before AUTH and MAIL), like port 587.
    StartTls,
    /// TLS from the first byte, like port 465.
    Tls,
    /// No TLS; AUTH offered in clear.
    Plain,
}

/// One message the server accepted.
#[derive(Debug, serde::Deserialize)]
pub struct Received {
    /// Every header as Python's `email` package reads it (decoded), in order.
    pub headers: Vec<(String, String)>,
    /// The plain-text body, its transfer encoding undone.
    pub text: Option<String>,
    /// What the `email` package found wrong with the message.
    pub defects: Vec<String>,
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    pub mail_options: Vec<String>,
    /// The message as received (CRLF line ends, dots unstuffed).
    pub data: String,
    /// Whether it came over TLS.
    pub tls: bool,
    /// Who logged in.
    pub user: Option<String>,
}

impl Received {
    /// The value of header `name` as a mail client shows it (unfolded, RFC 2047 decoded),
    /// if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The raw header section, as sent.
    pub fn raw_header(&self) -> &str {
        self.data.split("\r\n\r\n").next().unwrap_or_default()
    }
}

/// An aiosmtpd server; killed when dropped.
pub struct SmtpServer {
    pub port: u16,
    pub mode: Mode,
    dir: tempfile::TempDir,
    child: Child,
}

impl SmtpServer {
    pub const USER: &'static str = "notify@pipeline.test";
    /// What no log line, error or report may show.
    pub const PASSWORD: &'static str = "smtp-S3cret-7f2c91d4";

    pub fn start(mode: Mode) -> SmtpServer {
        SmtpServer::start_with(mode, &[])
    }

    /// With more arguments for `smtpd.py` (`--auth-exclude PLAIN`).
    pub fn start_with(mode: Mode, extra: &[&str]) -> SmtpServer {
        let dir = tempfile::Builder::new()
            .prefix("smtpd-")
            .tempdir()
            .expect("a temp dir for the SMTP server");
        let mail = dir.path().join("mail");
        std::fs::create_dir(&mail).expect("mail dir");
        make_certificates(dir.path());
        let port = free_port();
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .args(["--port", &port.to_string(), "--mode"])
            .arg(match mode {
                Mode::StartTls => "starttls",
                Mode::Tls => "tls",
                Mode::Plain => "plain",
            })
            .arg("--dir")
            .arg(&mail)
            .arg("--cert")
            .arg(dir.path().join("server.pem"))
            .arg("--key")
            .arg(dir.path().join("server.key"))
            .args(["--user", Self::USER, "--password", Self::PASSWORD])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("\n\ncannot start python3 ({e}): the mail tests run aiosmtpd.\n{INSTALL_HINT}\n\n")
            });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let ready = lines.any(|l| l.is_ok_and(|l| l.trim() == "READY"));
            let _ = tx.send(ready);
        });
        let ready = rx.recv_timeout(Duration::from_secs(30)).unwrap_or(false);
        if !ready {
            let _ = child.kill();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            let _ = child.wait();
            panic!("\n\nthe aiosmtpd server did not start:\n{err}\n{INSTALL_HINT}\n\n");
        }
        // Its log goes nowhere: a full pipe must not stall it.
        drop(child.stderr.take());
        SmtpServer {
            port,
            mode,
            dir,
            child,
        }
    }

    /// `127.0.0.1:<port>`, what a pipeline file names.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The PEM file of the CA that issued the server's certificate.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The messages accepted so far, in order.
    pub fn messages(&self) -> Vec<Received> {
        let mail = self.dir.path().join("mail");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&mail)
            .expect("the mail dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|f| {
                let text = std::fs::read_to_string(f).expect("a message file");
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            })
            .collect()
    }

    /// The commands the server saw, one line each (`EHLO <name> tls=True`, `STARTTLS`,
    /// `AUTH PLAIN tls=True`, `LOGIN PLAIN refused`, `MAIL tls=True`).
    pub fn events(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("mail/events.log"))
            .map(|t| t.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ca.pem` and `server.pem`/`server.key` (for 127.0.0.1 and localhost, signed by the
/// CA) in `dir`.
fn make_certificates(dir: &Path) {
    make_certificates_for(dir, "IP:127.0.0.1,DNS:localhost");
}

/// `ca.pem` and `server.pem`/`server.key` for the subject alternative names `san`
/// (`IP:…,DNS:…`), signed by the CA, in `dir`.
pub fn make_certificates_for(dir: &Path, san: &str) {
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName={san}\n"
        ),
    )
    .expect("server.ext");
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &[
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=pipeline test CA",
            ],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &["req", "-subj", "/CN=127.0.0.1"],
            &ec[..],
            &["-keyout", "server.key", "-out", "server.csr"],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ],
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("\n\ncannot run openssl ({e}): {OPENSSL_HINT}\n\n"));
    assert!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}
