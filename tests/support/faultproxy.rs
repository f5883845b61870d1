//! A fault-injecting HTTP proxy for the S3 tests: it sits between the `s3` sink and the
//! real S3-compatible server and, for requests that match a rule, answers an error status,
//! resets the connection in the middle of the request body, or stalls without answering.
//! Everything else is forwarded unchanged, one request per connection (`Connection: close`
//! is forced both ways so that every request passes the rules).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What to do with a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer this HTTP status with an S3 XML error body.
    Status(u16),
    /// Forward the head and part of the body, then reset both connections (RST).
    ResetMidBody,
    /// Read the request and never answer (until the proxy is dropped, at most 5 minutes).
    Stall,
}

/// Requests whose request line starts with `method` and contains `contains` get `fault`,
/// the first `times` times they are seen (`usize::MAX`: always).
#[derive(Debug, Clone)]
pub struct Rule {
    pub method: &'static str,
    pub contains: String,
    pub times: usize,
    pub fault: Fault,
}

impl Rule {
    pub fn new(method: &'static str, contains: &str, times: usize, fault: Fault) -> Rule {
        Rule {
            method,
            contains: contains.to_string(),
            times,
            fault,
        }
    }
}

struct Shared {
    rules: Mutex<Vec<Rule>>,
    /// Request lines that got a fault, in order.
    faulted: Mutex<Vec<String>>,
    /// Every request line seen.
    seen: Mutex<Vec<String>>,
    stop: AtomicBool,
}

pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl FaultProxy {
    pub fn start(upstream: u16, rules: Vec<Rule>) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            rules: Mutex::new(rules),
            faulted: Mutex::new(Vec::new()),
            seen: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let s = s.clone();
                std::thread::spawn(move || handle(client, upstream, &s));
            }
        });
        FaultProxy { port, shared }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Request lines that were answered with a fault.
    pub fn faulted(&self) -> Vec<String> {
        self.shared
            .faulted
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Every request line the proxy saw.
    pub fn seen(&self) -> Vec<String> {
        self.shared
            .seen
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn read_head(client: &mut TcpStream) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match client.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    Some(head)
}

/// The head with any `Connection` header replaced by `Connection: close`.
fn force_close(head: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(head);
    let mut out = String::new();
    for line in text.split("\r\n").filter(|l| !l.is_empty()) {
        if line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out.into_bytes()
}

fn content_length(head: &[u8]) -> usize {
    String::from_utf8_lossy(head)
        .split("\r\n")
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

fn fault_for(shared: &Shared, line: &str) -> Option<Fault> {
    let mut rules = shared.rules.lock().ok()?;
    let rule = rules
        .iter_mut()
        .find(|r| r.times > 0 && line.starts_with(r.method) && line.contains(&r.contains))?;
    if rule.times != usize::MAX {
        rule.times -= 1;
    }
    Some(rule.fault)
}

/// Sets SO_LINGER to 0 so that closing the socket sends a reset, as a crashed peer does.
fn reset(stream: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this function owns, with a correctly sized value.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(stream);
}

fn handle(mut client: TcpStream, upstream: u16, shared: &Shared) {
    let Some(head) = read_head(&mut client) else {
        return;
    };
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    if let Ok(mut seen) = shared.seen.lock() {
        seen.push(line.clone());
    }
    let fault = fault_for(shared, &line);
    if let Some(f) = fault
        && let Ok(mut faulted) = shared.faulted.lock()
    {
        faulted.push(format!("{f:?} {line}"));
    }
    match fault {
        Some(Fault::Status(code)) => {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{}</Code>\
                 <Message>injected fault</Message></Error>",
                match code {
                    503 => "SlowDown",
                    403 => "AccessDenied",
                    _ => "InternalError",
                }
            );
            let _ = write!(
                client,
                "HTTP/1.1 {code} Injected\r\nContent-Type: application/xml\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.shutdown(Shutdown::Write);
            // Drain the body so the client reads the answer rather than a reset.
            let _ = client.set_read_timeout(Some(Duration::from_secs(5)));
            let mut sink = [0u8; 65536];
            while matches!(client.read(&mut sink), Ok(n) if n > 0) {}
        }
        Some(Fault::ResetMidBody) => {
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                return;
            };
            let _ = server.write_all(&force_close(&head));
            // Half of the body (at least one byte when there is one), then a reset.
            let mut left = content_length(&head) / 2;
            let mut buf = [0u8; 65536];
            while left > 0 {
                let want = left.min(buf.len());
                match client.read(&mut buf[..want]) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let _ = server.write_all(&buf[..n]);
                        left -= n;
                    }
                }
            }
            reset(client);
            reset(server);
        }
        Some(Fault::Stall) => {
            let deadline = Instant::now() + Duration::from_secs(300);
            let _ = client.set_read_timeout(Some(Duration::from_millis(100)));
            let mut sink = [0u8; 65536];
            while Instant::now() < deadline && !shared.stop.load(Ordering::SeqCst) {
                match client.read(&mut sink) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
        }
        None => {
            let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                return;
            };
            if server.write_all(&force_close(&head)).is_err() {
                return;
            }
            let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
                return;
            };
            let up = std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut s2);
                let _ = s2.shutdown(Shutdown::Write);
            });
            let _ = std::io::copy(&mut server, &mut client);
            let _ = client.shutdown(Shutdown::Write);
            let _ = up.join();
        }
    }
}
