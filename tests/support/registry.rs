//! A real OCI registry for the `oci://` plugin tests: Debian's `docker-registry` (the CNCF
//! distribution reference server) on a free port of 127.0.0.1 (or, speaking https only, of
//! an address of this machine that is not loopback), storing on the filesystem in a
//! scratch directory, with htpasswd (bcrypt) basic authentication, or with the token
//! flow real registries use: the registry answers `WWW-Authenticate: Bearer realm=…`, and
//! a token server here ([`TokenServer`]) checks the user's password and issues a JWT
//! (RS256, signed by `openssl` with a throwaway key whose certificate the registry trusts)
//! granting the scope asked for. Stopped on drop.

use std::io::{BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Registry {
    tmp: tempfile::TempDir,
    child: Option<Child>,
    /// With the token flow: the token server (stopped with the registry).
    token: Option<TokenServer>,
    /// `host:port` it listens on.
    address: String,
}

/// How the registry authenticates and where it listens.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// htpasswd users, plain http on 127.0.0.1.
    Basic,
    /// A token server, plain http on 127.0.0.1.
    Tokens,
    /// htpasswd users, https on an address of this machine that is not loopback, with a
    /// certificate from a throwaway CA ([`Registry::ca`]).
    Tls,
}

impl Registry {
    pub const USER: &'static str = "publisher";
    /// Long enough for the log's redactor to mask it wherever it appears.
    pub const PASSWORD: &'static str = "registry-Pa55word-for-tests";

    /// Starts a registry whose only user is [`Self::USER`] / [`Self::PASSWORD`], checked
    /// by the registry itself (HTTP Basic).
    pub fn start() -> Registry {
        Self::start_with(Kind::Basic, "")
    }

    /// Starts a registry like [`Self::start`] that answers every blob download with a
    /// redirect (307) to `base_url` followed by the blob's storage path, as registries
    /// keeping blobs in S3 or behind a CDN do (docker-registry's `redirect` storage
    /// middleware).
    pub fn start_redirecting(base_url: &str) -> Registry {
        Self::start_with(Kind::Basic, &redirect_to(base_url))
    }

    /// [`Self::start_tls`] redirecting blob downloads to `https://` the same address and
    /// `storage_port` (where a server may use [`Self::tls_identity`] to be trusted).
    pub fn start_tls_redirecting(storage_port: u16) -> Registry {
        let base = format!("https://{}:{storage_port}/", outward_ipv4());
        Self::start_with(Kind::Tls, &redirect_to(&base))
    }

    /// A TLS registry's certificate and key (PEM files), valid for its address on any port.
    pub fn tls_identity(&self) -> (PathBuf, PathBuf) {
        (
            self.tmp.path().join("server.pem"),
            self.tmp.path().join("server.key"),
        )
    }

    /// Starts a registry that sends clients to a token server for a bearer token; the
    /// token server checks [`Self::USER`] / [`Self::PASSWORD`].
    pub fn start_with_tokens() -> Registry {
        Self::start_with(Kind::Tokens, "")
    }

    /// Starts a registry with htpasswd users that speaks https only, on an IPv4 address of
    /// this machine that is not loopback (so a client must use https with it); its
    /// certificate is signed by the CA in [`Self::ca`].
    pub fn start_tls() -> Registry {
        Self::start_with(Kind::Tls, "")
    }

    /// `extra`: more of the registry's configuration (YAML, top-level keys).
    fn start_with(kind: Kind, extra: &str) -> Registry {
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
        let host = if kind == Kind::Tls {
            outward_ipv4()
        } else {
            "127.0.0.1".to_string()
        };
        let tls = if kind == Kind::Tls {
            super::smtp::make_certificates_for(tmp.path(), &format!("IP:{host}"));
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                tmp.path().join("server.pem").display(),
                tmp.path().join("server.key").display()
            )
        } else {
            String::new()
        };
        let (token, auth) = if kind == Kind::Tokens {
            let t = TokenServer::start(tmp.path());
            let auth = format!(
                "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {}\n    \
                 issuer: {}\n    rootcertbundle: {}\n",
                t.port,
                TokenServer::SERVICE,
                TokenServer::ISSUER,
                t.cert.display()
            );
            (Some(t), auth)
        } else {
            let auth = format!(
                "auth:\n  htpasswd:\n    realm: pipeline-tests\n    path: {}\n",
                htpasswd.display()
            );
            (None, auth)
        };
        let config = tmp.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {data}\n\
                 http:\n  addr: {host}:{port}\n  secret: pipeline-tests\n{tls}{auth}{extra}",
                data = tmp.path().join("data").display(),
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
            child: Some(child),
            token,
            address: format!("{host}:{port}"),
        };
        reg.wait_ready();
        reg
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = TcpStream::connect(&self.address) {
                // Plain http: a TLS registry answers it too (400), which says it is up.
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

    /// How many tokens the token server issued (0 without one).
    pub fn tokens_issued(&self) -> usize {
        self.token
            .as_ref()
            .map_or(0, |t| t.issued.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// `127.0.0.1:PORT` (`IP:PORT` for [`Self::start_tls`]), as a reference names it.
    pub fn address(&self) -> String {
        self.address.clone()
    }

    /// The CA that signed a TLS registry's certificate (PEM), for `SSL_CERT_FILE`.
    pub fn ca(&self) -> PathBuf {
        self.tmp.path().join("ca.pem")
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

/// A token server for the registry's token auth: `GET /token?service=…&scope=…` with the
/// user's Basic credentials answers `{"token": JWT}` granting the scope; anything else 401.
pub struct TokenServer {
    port: u16,
    cert: PathBuf,
    issued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl TokenServer {
    pub const SERVICE: &'static str = "pipeline-test-registry";
    pub const ISSUER: &'static str = "pipeline-test-tokens";

    fn start(dir: &Path) -> TokenServer {
        let key = dir.join("token-key.pem");
        let cert = dir.join("token-cert.pem");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=pipeline-test-tokens", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "openssl not found ({e}): install it (Debian/Ubuntu: `apt-get install openssl`)"
                )
            });
        assert!(
            out.status.success(),
            "openssl req: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let der = Command::new("openssl")
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .expect("openssl x509");
        assert!(der.status.success(), "openssl x509 -outform DER");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the token server");
        let port = listener.local_addr().expect("its address").port();
        let issued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = issued.clone();
        let x5c = b64(&der.stdout, false);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (key, x5c, counter) = (key.clone(), x5c.clone(), counter.clone());
                std::thread::spawn(move || serve_token(stream, &key, &x5c, &counter));
            }
        });
        TokenServer { port, cert, issued }
    }
}

fn b64(bytes: &[u8], url: bool) -> String {
    use base64::Engine as _;
    if url {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    } else {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

fn serve_token(stream: TcpStream, key: &Path, x5c: &str, issued: &std::sync::atomic::AtomicUsize) {
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    let Some((_, path, headers)) = super::receiver::read_head(&mut reader) else {
        return;
    };
    let authorization = headers
        .into_iter()
        .find(|(n, _)| n == "authorization")
        .map(|(_, v)| v);
    let expected = format!(
        "Basic {}",
        b64(
            format!("{}:{}", Registry::USER, Registry::PASSWORD).as_bytes(),
            false
        )
    );
    let reply = |w: &mut TcpStream, status: &str, body: &str| {
        let _ = write!(
            w,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    };
    if authorization.as_deref() != Some(expected.as_str()) {
        reply(
            &mut writer,
            "401 Unauthorized",
            r#"{"details":"bad credentials"}"#,
        );
        return;
    }
    // scope=repository:acme/sink:pull,push (percent-encoded), possibly several.
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let mut access = Vec::new();
    for pair in query.split('&') {
        let Some(("scope", v)) = pair.split_once('=') else {
            continue;
        };
        let v = percent_decode(v);
        let mut parts = v.splitn(3, ':');
        if let (Some(kind), Some(name), Some(actions)) = (parts.next(), parts.next(), parts.next())
        {
            access.push(serde_json::json!({
                "type": kind,
                "name": name,
                "actions": actions.split(',').collect::<Vec<_>>(),
            }));
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": TokenServer::ISSUER,
        "sub": Registry::USER,
        "aud": TokenServer::SERVICE,
        "exp": now + 300,
        "nbf": now - 10,
        "iat": now,
        "jti": format!("{now}-{}", issued.load(std::sync::atomic::Ordering::SeqCst)),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes(), true),
        b64(claims.to_string().as_bytes(), true)
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("openssl dgst");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(signing_input.as_bytes())
        .expect("write to openssl");
    let sig = child.wait_with_output().expect("openssl dgst -sign");
    assert!(sig.status.success(), "openssl dgst -sign failed");
    let token = format!("{signing_input}.{}", b64(&sig.stdout, true));
    issued.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    reply(
        &mut writer,
        "200 OK",
        &serde_json::json!({"token": token, "access_token": token, "expires_in": 300}).to_string(),
    );
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The registry configuration of docker-registry's `redirect` storage middleware.
fn redirect_to(base_url: &str) -> String {
    format!(
        "middleware:\n  storage:\n    - name: redirect\n      options:\n        baseurl: {base_url}\n"
    )
}

/// An IPv4 address of this machine that is not loopback (`hostname -I`).
fn outward_ipv4() -> String {
    let out = Command::new("hostname")
        .arg("-I")
        .output()
        .unwrap_or_else(|e| panic!("cannot run `hostname -I` ({e}): install hostname (Debian: apt-get install hostname)"));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .find(|a| {
            a.parse::<std::net::Ipv4Addr>()
                .is_ok_and(|ip| !ip.is_loopback())
        })
        .map(str::to_string)
        .unwrap_or_else(|| {
            panic!("this machine has no IPv4 address but loopback (`hostname -I`): the https registry test needs one")
        })
}
