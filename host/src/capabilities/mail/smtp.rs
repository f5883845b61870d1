//! A synchronous SMTP submission client: what the `mail` interface's `send` does for a
//! plugin. One connection per message, within one time budget ([`BUDGET`]) for everything
//! (a host call is not stopped by the stage's time limit, which only interrupts
//! WebAssembly code).
//!
//! The exchange: connect (TLS from the first byte with `security = tls`), the greeting,
//! `EHLO`; with `starttls`, `STARTTLS` (a server that does not offer it is refused before
//! anything else is sent) and `EHLO` again over TLS; `AUTH PLAIN` (or `LOGIN` when only that
//! is offered) when a username is given; `MAIL FROM`, one `RCPT TO` per recipient (one
//! refused recipient fails the whole message: nothing is sent), `DATA` with the lines
//! ending in CRLF and leading dots doubled, `QUIT`. Certificates are checked against the
//! system's roots (`SSL_CERT_FILE` is honoured) and the server's name.
//!
//! Refused before connecting: a password with `security = none`, `security = none` to a
//! server that is not on this machine (loopback addresses only), envelope addresses that
//! are empty, not ASCII (`SMTPUTF8` is not spoken) or hold a control character, a space,
//! `<` or `>` (which would let a value add SMTP commands or parameters).
//!
//! Errors name the server, the step and the server's reply. Nothing that carries the
//! password (the `AUTH` lines) is ever logged or put in an error.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::bindings::PluginError;
pub use crate::bindings::mail_notifier::pipeline::plugin::mail::{Message, Security, Server};

/// How long sending one message may take, from connecting to the server's answer to the
/// data: under a notifier's default time limit (30 s), so that a server that hangs is
/// reported as what it is rather than as a notifier that did not answer.
pub const BUDGET: Duration = Duration::from_secs(25);

/// The longest reply line read (RFC 5321 allows 512 bytes; servers write longer ones).
const MAX_LINE: usize = 4096;
/// The most lines one reply may have (an `EHLO` answer has one per extension).
const MAX_REPLY_LINES: usize = 100;
/// How much of a server's reply an error quotes.
const MAX_QUOTED: usize = 300;

/// Sends messages. [`Client::system`] trusts the system's certificate authorities (what
/// the `mail` capability uses); [`Client::trusting`] only those of one PEM file.
pub struct Client {
    roots: Roots,
    budget: Duration,
}

enum Roots {
    System,
    Own(Arc<ClientConfig>),
}

impl Client {
    /// A client trusting the system's roots (`SSL_CERT_FILE` and `SSL_CERT_DIR` are
    /// honoured), read on first use of TLS.
    pub fn system() -> Client {
        Client {
            roots: Roots::System,
            budget: BUDGET,
        }
    }

    /// A client trusting only the certificates in the PEM file `ca` (a private CA).
    pub fn trusting(ca: &Path) -> Result<Client, String> {
        let mut roots = RootCertStore::empty();
        let certs = CertificateDer::pem_file_iter(ca)
            .map_err(|e| format!("cannot read {}: {e}", ca.display()))?;
        for cert in certs {
            let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: a certificate is refused: {e}", ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("{} holds no certificate", ca.display()));
        }
        Ok(Client {
            roots: Roots::Own(tls_config(roots)?),
            budget: BUDGET,
        })
    }

    /// The same client with another time budget per message.
    pub fn budget(self, budget: Duration) -> Client {
        Client { budget, ..self }
    }

    /// Submits `message` through `server`: Ok only when the server accepted it (250 after
    /// the data). See the module documentation for what is refused.
    pub fn send(&self, server: &Server, message: &Message) -> Result<(), PluginError> {
        let (host, port) = parse_address(&server.address)
            .map_err(|e| PluginError::Config(format!("mail server `{}`: {e}", server.address)))?;
        let address = server.address.as_str();
        let login = match (&server.username, &server.password) {
            (Some(user), Some(password)) => Some((user.as_str(), password.as_str())),
            (None, None) => None,
            (Some(_), None) => {
                return Err(PluginError::Config(format!(
                    "mail server {address}: a username without a password"
                )));
            }
            (None, Some(_)) => {
                return Err(PluginError::Config(format!(
                    "mail server {address}: a password without a username"
                )));
            }
        };
        if matches!(server.security, Security::None) && login.is_some() {
            return Err(PluginError::Denied(format!(
                "mail server {address}: refusing to send a password without encryption \
                 (security = none); use security = \"starttls\" (port 587) or \"tls\" (port 465)"
            )));
        }
        check_envelope(message)
            .map_err(|e| PluginError::Denied(format!("mail server {address}: {e}")))?;
        let deadline = Instant::now() + self.budget;
        let addrs: Vec<SocketAddr> = (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| {
                PluginError::Io(format!("mail server {address}: cannot resolve {host}: {e}"))
            })?
            .collect();
        if matches!(server.security, Security::None)
            && let Some(far) = addrs.iter().find(|a| !is_loopback(a.ip()))
        {
            return Err(PluginError::Denied(format!(
                "mail server {address}: security = none is only for a relay on this machine \
                 (a loopback address), and {host} is {}; use security = \"starttls\" or \"tls\"",
                far.ip()
            )));
        }
        let tls = match server.security {
            Security::None => None,
            Security::Starttls | Security::Tls => Some(self.tls()?),
        };
        let tcp = connect(&addrs, deadline, self.budget)
            .map_err(|e| PluginError::Io(format!("mail server {address}: cannot connect: {e}")))?;
        let mut session = Session {
            conn: Conn::Plain(tcp),
            buffered: Vec::new(),
            address,
            deadline,
            budget: self.budget,
        };
        if let (Security::Tls, Some(tls)) = (&server.security, &tls) {
            session.upgrade(tls, &host)?;
        }
        let result = session.submit(&server.security, tls.as_ref(), &host, login, message);
        // Said whatever happened; an answer to QUIT changes nothing.
        session.quit();
        result
    }

    fn tls(&self) -> Result<Arc<ClientConfig>, PluginError> {
        match &self.roots {
            Roots::Own(config) => Ok(config.clone()),
            Roots::System => system_config().map_err(PluginError::Other),
        }
    }
}

/// The TLS configuration with the system's roots, read once.
pub(crate) fn system_config() -> Result<Arc<ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(format!(
                    "no trusted certificate authorities found on this machine{why}: install \
                     them (Debian: apt-get install ca-certificates) or point SSL_CERT_FILE at a \
                     PEM file of the ones to trust"
                ));
            }
            tls_config(roots)
        })
        .clone()
}

/// rustls with ring (the provider the rest of the host uses), safe default versions.
pub(crate) fn tls_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// `host:port` (`[v6]:port`) → (host without brackets, port); the port is required.
pub fn parse_address(address: &str) -> Result<(String, u16), String> {
    let (host, port) = super::super::http::split_port(address);
    let Some(port) = port.filter(|p| *p != 0) else {
        return Err(
            "not `host:port` (the port is required: 587 for starttls, 465 for tls, \
                    25 for a local relay)"
                .into(),
        );
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if !host.is_ascii()
        || host
            .chars()
            .any(|c| c.is_ascii_control() || c == ' ' || c == '/')
    {
        return Err("the host is not an ASCII host name or address (write an \
                    internationalised name in its xn-- form)"
            .into());
    }
    Ok((host.to_string(), port))
}

/// Whether an envelope address can be sent in `MAIL FROM:<…>` / `RCPT TO:<…>` as it is.
pub fn check_mailbox(address: &str) -> Result<(), String> {
    if address.is_empty() {
        return Err("an empty address".into());
    }
    if let Some(c) = address
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>'))
    {
        return Err(format!(
            "the address {:?} holds {c:?}, which an envelope address may not",
            address
        ));
    }
    if !address.is_ascii() {
        return Err(format!(
            "the address {address:?} is not ASCII (internationalised addresses need SMTPUTF8, \
             which this host does not speak)"
        ));
    }
    Ok(())
}

fn check_envelope(message: &Message) -> Result<(), String> {
    check_mailbox(&message.sender).map_err(|e| format!("sender: {e}"))?;
    if message.recipients.is_empty() {
        return Err("a message needs at least one recipient".into());
    }
    for r in &message.recipients {
        check_mailbox(r).map_err(|e| format!("recipient: {e}"))?;
    }
    Ok(())
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The first address that accepts, each tried within what is left of the budget.
fn connect(addrs: &[SocketAddr], deadline: Instant, budget: Duration) -> Result<TcpStream, String> {
    let mut last = "no address to connect to".to_string();
    for addr in addrs {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no connection within {} s", budget.as_secs()));
        }
        match TcpStream::connect_timeout(addr, left) {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = format!("{addr}: {e}"),
        }
    }
    Err(last)
}

/// The message as it goes after `DATA`: every line ending in CRLF (a lone CR or LF is a
/// line end too), a leading `.` doubled, then the ending `.` line.
pub fn wire_data(data: &str) -> Vec<u8> {
    let bytes = data.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 40 + 8);
    let mut start = 0;
    let mut i = 0;
    let line = |out: &mut Vec<u8>, text: &[u8]| {
        if text.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(text);
        out.extend_from_slice(b"\r\n");
    };
    while i < bytes.len() {
        match bytes[i] {
            b'\r' | b'\n' => {
                line(&mut out, &bytes[start..i]);
                if bytes[i] == b'\r' && bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    if start < bytes.len() {
        line(&mut out, &bytes[start..]);
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// The connection, plain or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
    /// While the plain connection is being upgraded.
    Gone,
}

impl Conn {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Conn::Plain(tcp) => Some(tcp),
            Conn::Tls(tls) => Some(&tls.sock),
            Conn::Gone => None,
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection is closed")
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(tcp) => tcp.read(buf),
            Conn::Tls(tls) => tls.read(buf),
            Conn::Gone => Err(gone()),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(tcp) => tcp.write(buf),
            Conn::Tls(tls) => tls.write(buf),
            Conn::Gone => Err(gone()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(tcp) => tcp.flush(),
            Conn::Tls(tls) => tls.flush(),
            Conn::Gone => Err(gone()),
        }
    }
}

/// One server reply: its code and its lines' text (after `250-` / `250 `).
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.lines.join(" ");
        let text: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let text = text.trim();
        match text.char_indices().nth(MAX_QUOTED) {
            Some((cut, _)) => write!(f, "{} {}…", self.code, &text[..cut]),
            None if text.is_empty() => write!(f, "{}", self.code),
            None => write!(f, "{} {text}", self.code),
        }
    }
}

/// The extensions an `EHLO` reply lists: keyword (upper case) and parameters.
struct Extensions(Vec<(String, Vec<String>)>);

impl Extensions {
    fn of(reply: &Reply) -> Extensions {
        Extensions(
            reply
                .lines
                .iter()
                .skip(1)
                .filter_map(|line| {
                    // `AUTH=PLAIN LOGIN` is the old form of `AUTH PLAIN LOGIN`.
                    let line = line.replacen('=', " ", 1);
                    let mut words = line.split_whitespace();
                    let keyword = words.next()?.to_ascii_uppercase();
                    Some((keyword, words.map(str::to_ascii_uppercase).collect()))
                })
                .collect(),
        )
    }

    fn has(&self, keyword: &str) -> bool {
        self.0.iter().any(|(k, _)| k == keyword)
    }

    fn auth(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == "AUTH")
            .flat_map(|(_, params)| params.iter().map(String::as_str))
            .collect()
    }
}

struct Session<'a> {
    conn: Conn,
    /// Read from the server, not yet consumed.
    buffered: Vec<u8>,
    /// `host:port` as given: every error names it.
    address: &'a str,
    deadline: Instant,
    budget: Duration,
}

impl Session<'_> {
    fn submit(
        &mut self,
        security: &Security,
        tls: Option<&Arc<ClientConfig>>,
        host: &str,
        login: Option<(&str, &str)>,
        message: &Message,
    ) -> Result<(), PluginError> {
        self.expect("the connection", &[220])?;
        let mut extensions = self.ehlo()?;
        if let (Security::Starttls, Some(tls)) = (security, tls) {
            if !extensions.has("STARTTLS") {
                return Err(PluginError::Denied(format!(
                    "mail server {}: does not offer STARTTLS, and security = starttls: nothing \
                     was sent (for a server that speaks TLS from the start, port 465, set \
                     security = \"tls\")",
                    self.address
                )));
            }
            self.command("STARTTLS", "STARTTLS")?;
            self.expect("STARTTLS", &[220])?;
            if !self.buffered.is_empty() {
                // Anything read before the handshake was not protected by it.
                return Err(PluginError::Other(format!(
                    "mail server {}: sent data after its STARTTLS answer, before TLS began; \
                     refusing to go on (something between may be tampering with the connection)",
                    self.address
                )));
            }
            self.upgrade(tls, host)?;
            extensions = self.ehlo()?;
        }
        if let Some((user, password)) = login {
            self.login(&extensions, user, password)?;
        }
        let data = wire_data(&message.data);
        let body = if message.data.is_ascii() {
            ""
        } else if extensions.has("8BITMIME") {
            " BODY=8BITMIME"
        } else {
            return Err(PluginError::Other(format!(
                "mail server {}: the message holds 8-bit text and the server does not offer \
                 8BITMIME; encode the body (quoted-printable or base64)",
                self.address
            )));
        };
        self.command(
            "MAIL FROM",
            &format!("MAIL FROM:<{}>{body}", message.sender),
        )?;
        self.expect("MAIL FROM", &[250])?;
        for r in &message.recipients {
            let step = format!("RCPT TO:<{r}>");
            self.command(&step, &step)?;
            self.expect(&step, &[250, 251])?;
        }
        self.command("DATA", "DATA")?;
        self.expect("DATA", &[354])?;
        self.arm("the message")?;
        self.conn
            .write_all(&data)
            .and_then(|()| self.conn.flush())
            .map_err(|e| self.io_error("the message", &e))?;
        self.expect("the message", &[250])?;
        Ok(())
    }

    fn ehlo(&mut self) -> Result<Extensions, PluginError> {
        let name = helo_name(self.conn.tcp());
        self.command("EHLO", &format!("EHLO {name}"))?;
        let reply = self.expect("EHLO", &[250])?;
        Ok(Extensions::of(&reply))
    }

    /// AUTH PLAIN, else LOGIN. No line of it is logged or quoted: they carry the password.
    fn login(
        &mut self,
        extensions: &Extensions,
        user: &str,
        password: &str,
    ) -> Result<(), PluginError> {
        let offered = extensions.auth();
        let hide = |e: PluginError| hide_secret(e, user, password);
        if offered.contains(&"PLAIN") {
            let token = BASE64.encode(format!("\0{user}\0{password}"));
            self.command("AUTH PLAIN", &format!("AUTH PLAIN {token}"))
                .map_err(hide)?;
            self.expect("AUTH PLAIN", &[235]).map_err(hide)?;
        } else if offered.contains(&"LOGIN") {
            self.command("AUTH LOGIN", "AUTH LOGIN").map_err(hide)?;
            self.expect("AUTH LOGIN", &[334]).map_err(hide)?;
            self.command("AUTH LOGIN", &BASE64.encode(user))
                .map_err(hide)?;
            self.expect("AUTH LOGIN (username)", &[334]).map_err(hide)?;
            self.command("AUTH LOGIN", &BASE64.encode(password))
                .map_err(hide)?;
            self.expect("AUTH LOGIN (password)", &[235]).map_err(hide)?;
        } else {
            return Err(PluginError::Other(format!(
                "mail server {}: a username and password are set but the server offers no \
                 login this host speaks (PLAIN or LOGIN){}",
                self.address,
                if offered.is_empty() {
                    ", or none at all".to_string()
                } else {
                    format!("; it offers: {}", offered.join(" "))
                }
            )));
        }
        Ok(())
    }

    /// TLS over the connection, handshake done, certificate checked against `host`.
    fn upgrade(&mut self, tls: &Arc<ClientConfig>, host: &str) -> Result<(), PluginError> {
        let Conn::Plain(mut tcp) = std::mem::replace(&mut self.conn, Conn::Gone) else {
            return Err(PluginError::Other(format!(
                "mail server {}: TLS was asked for twice",
                self.address
            )));
        };
        let name = ServerName::try_from(host.to_string()).map_err(|e| {
            PluginError::Config(format!(
                "mail server {}: {host} is not a TLS server name: {e}",
                self.address
            ))
        })?;
        let mut conn = ClientConnection::new(tls.clone(), name).map_err(|e| {
            PluginError::Other(format!("mail server {}: TLS setup: {e}", self.address))
        })?;
        self.limit(&tcp, "the TLS handshake")?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).map_err(|e| {
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    self.io_error("the TLS handshake", &e)
                } else {
                    PluginError::Io(format!(
                        "mail server {}: the TLS handshake failed: {e}",
                        self.address
                    ))
                }
            })?;
        }
        self.conn = Conn::Tls(Box::new(StreamOwned::new(conn, tcp)));
        Ok(())
    }

    /// QUIT, and the TLS close; errors are ignored (the message was sent or not already).
    fn quit(&mut self) {
        if self.command("QUIT", "QUIT").is_ok() {
            let _ = self.reply("QUIT");
        }
        if let Conn::Tls(tls) = &mut self.conn {
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    }

    /// Sends `line` and CRLF. `step` names it in errors: never `line` (it may hold a
    /// password).
    fn command(&mut self, step: &str, line: &str) -> Result<(), PluginError> {
        self.arm(step)?;
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.conn
            .write_all(&bytes)
            .and_then(|()| self.conn.flush())
            .map_err(|e| self.io_error(step, &e))
    }

    /// A reply whose code is one of `ok`, else an error quoting it.
    fn expect(&mut self, step: &str, ok: &[u16]) -> Result<Reply, PluginError> {
        let reply = self.reply(step)?;
        if ok.contains(&reply.code) {
            return Ok(reply);
        }
        let what = if step == "the connection" {
            "refused the connection".to_string()
        } else {
            format!("refused {step}")
        };
        Err(PluginError::Other(format!(
            "mail server {} {what}: {reply}",
            self.address
        )))
    }

    fn reply(&mut self, step: &str) -> Result<Reply, PluginError> {
        let mut code = None;
        let mut lines = Vec::new();
        loop {
            let line = self.line(step)?;
            let b = line.as_bytes();
            let valid = b.len() >= 3
                && b[..3].iter().all(u8::is_ascii_digit)
                && (b.len() == 3 || b[3] == b' ' || b[3] == b'-');
            let this = line.get(..3).and_then(|c| c.parse::<u16>().ok());
            let (true, Some(this)) = (valid, this) else {
                return Err(PluginError::Io(format!(
                    "mail server {} answered {step} with {:?}, which is not an SMTP reply",
                    self.address,
                    line.chars().take(80).collect::<String>()
                )));
            };
            if code.is_some_and(|c| c != this) {
                return Err(PluginError::Io(format!(
                    "mail server {} answered {step} with a reply whose lines have different codes",
                    self.address
                )));
            }
            code = Some(this);
            lines.push(line.get(4..).unwrap_or_default().to_string());
            if b.len() == 3 || b[3] == b' ' {
                return Ok(Reply { code: this, lines });
            }
            if lines.len() >= MAX_REPLY_LINES {
                return Err(PluginError::Io(format!(
                    "mail server {} answered {step} with more than {MAX_REPLY_LINES} lines",
                    self.address
                )));
            }
        }
    }

    /// One line from the server, without its line end.
    fn line(&mut self, step: &str) -> Result<String, PluginError> {
        loop {
            if let Some(end) = self.buffered.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffered.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line);
                return Ok(text.trim_end_matches(['\r', '\n']).to_string());
            }
            if self.buffered.len() > MAX_LINE {
                return Err(PluginError::Io(format!(
                    "mail server {} answered {step} with a line longer than {MAX_LINE} bytes",
                    self.address
                )));
            }
            self.arm(step)?;
            let mut chunk = [0u8; 4096];
            match self.conn.read(&mut chunk) {
                Ok(0) => {
                    return Err(PluginError::Io(format!(
                        "mail server {} closed the connection (waiting for its answer to {step})",
                        self.address
                    )));
                }
                Ok(n) => self.buffered.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(step, &e)),
            }
        }
    }

    /// Gives the next read or write what is left of the budget.
    fn arm(&self, step: &str) -> Result<(), PluginError> {
        match self.conn.tcp() {
            Some(tcp) => self.limit(tcp, step),
            None => Err(self.io_error(step, &gone())),
        }
    }

    /// Gives the next read or write on `tcp` what is left of the budget.
    fn limit(&self, tcp: &TcpStream, step: &str) -> Result<(), PluginError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.timeout(step));
        }
        tcp.set_read_timeout(Some(left))
            .and_then(|()| tcp.set_write_timeout(Some(left)))
            .map_err(|e| self.io_error(step, &e))
    }

    fn timeout(&self, step: &str) -> PluginError {
        PluginError::Io(format!(
            "mail server {}: no answer within {} s (at {step})",
            self.address,
            self.budget.as_secs_f64()
        ))
    }

    fn io_error(&self, step: &str, e: &io::Error) -> PluginError {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => self.timeout(step),
            _ => PluginError::Io(format!("mail server {} ({step}): {e}", self.address)),
        }
    }
}

/// The name `EHLO` gives: this machine's host name when it is a plausible domain, else
/// the connection's own address as an address literal.
fn helo_name(tcp: Option<&TcpStream>) -> String {
    let valid = |n: &str| {
        !n.is_empty()
            && n.split('.').all(|label| {
                !label.is_empty()
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
            })
    };
    if let Some(name) = crate::machine::host_name().filter(|n| valid(n)) {
        return name;
    }
    match tcp.and_then(|t| t.local_addr().ok()).map(|a| a.ip()) {
        Some(IpAddr::V6(v6)) => format!("[IPv6:{v6}]"),
        Some(IpAddr::V4(v4)) => format!("[{v4}]"),
        None => "[127.0.0.1]".into(),
    }
}

/// An error of the login steps with the user's password (and its encodings) masked, should
/// a server ever quote what it was sent.
fn hide_secret(e: PluginError, user: &str, password: &str) -> PluginError {
    let secrets = [
        BASE64.encode(format!("\0{user}\0{password}")),
        BASE64.encode(password),
        password.to_string(),
    ];
    let mask = |m: String| {
        secrets
            .iter()
            .filter(|s| !s.is_empty())
            .fold(m, |m, s| m.replace(s.as_str(), "***"))
    };
    match e {
        PluginError::Config(m) => PluginError::Config(mask(m)),
        PluginError::NotFound(m) => PluginError::NotFound(mask(m)),
        PluginError::Denied(m) => PluginError::Denied(mask(m)),
        PluginError::Locked(m) => PluginError::Locked(mask(m)),
        PluginError::Io(m) => PluginError::Io(mask(m)),
        PluginError::Other(m) => PluginError::Other(mask(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_lines_end_in_crlf_and_leading_dots_are_doubled() {
        assert_eq!(wire_data("a\nb\r\nc"), b"a\r\nb\r\nc\r\n.\r\n");
        assert_eq!(wire_data("a\rb\n"), b"a\r\nb\r\n.\r\n");
        assert_eq!(wire_data(".\n..x\nend.\n"), b"..\r\n...x\r\nend.\r\n.\r\n");
        assert_eq!(wire_data("x\n\n.y"), b"x\r\n\r\n..y\r\n.\r\n");
        assert_eq!(wire_data(""), b".\r\n");
        assert_eq!(wire_data("\r\n"), b"\r\n.\r\n");
    }

    #[test]
    fn envelope_addresses_cannot_carry_commands_or_parameters() {
        assert!(check_mailbox("ops@example.com").is_ok());
        assert!(check_mailbox("root").is_ok());
        for bad in [
            "",
            "a@b\r\nRCPT TO:<x@y>",
            "a@b\nDATA",
            "a@b> SIZE=1",
            "<a@b",
            "a b@c",
            "a@b\0",
            "ünï@example.com",
        ] {
            assert!(check_mailbox(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn addresses_need_a_port() {
        assert_eq!(
            parse_address("smtp.example.com:587"),
            Ok(("smtp.example.com".into(), 587))
        );
        assert_eq!(parse_address("[::1]:25"), Ok(("::1".into(), 25)));
        assert!(parse_address("smtp.example.com").is_err());
        assert!(parse_address(":587").is_err());
        assert!(parse_address("smtp.example.com:0").is_err());
        assert!(parse_address("bücher.example:587").is_err());
    }

    #[test]
    fn extensions_are_read_from_ehlo() {
        let reply = Reply {
            code: 250,
            lines: vec![
                "mail.example.com greets you".into(),
                "starttls".into(),
                "AUTH=LOGIN".into(),
                "AUTH PLAIN LOGIN".into(),
                "8BITMIME".into(),
            ],
        };
        let ext = Extensions::of(&reply);
        assert!(ext.has("STARTTLS") && ext.has("8BITMIME") && !ext.has("SMTPUTF8"));
        assert_eq!(ext.auth(), ["LOGIN", "PLAIN", "LOGIN"]);
    }

    #[test]
    fn a_quoted_reply_is_one_clipped_line() {
        let reply = Reply {
            code: 535,
            lines: vec!["5.7.8 bad\tcredentials".into(), "x".repeat(400)],
        };
        let shown = reply.to_string();
        assert!(
            shown.starts_with("535 5.7.8 bad credentials xxx"),
            "{shown}"
        );
        assert!(
            shown.ends_with('…') && shown.chars().count() < 320,
            "{shown}"
        );
    }

    #[test]
    fn login_errors_never_show_the_password() {
        let e = PluginError::Other(format!(
            "refused: you sent {} and {}",
            BASE64.encode("\0u\0hunter2"),
            "hunter2"
        ));
        let PluginError::Other(m) = hide_secret(e, "u", "hunter2") else {
            panic!("kind changed");
        };
        assert_eq!(m, "refused: you sent *** and ***");
    }
}
