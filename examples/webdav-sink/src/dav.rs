//! The WebDAV requests, through `wasi:http` (wstd).
//!
//! Memory stays bounded whatever the artifact's size:
//! * an upload is a `PUT` whose body is produced on demand from the stage's input stream,
//!   one chunk (at most [`CHUNK`] bytes) at a time; the host streams it to the server with
//!   chunked transfer encoding;
//! * a download hands each frame of the response body (wstd reads at most 64 KiB at a
//!   time) to the output stream before reading the next.
//!
//! Only a listing (`PROPFIND`) and error bodies are read whole, both with a size cap.

use std::io::{BufRead, Write};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::Frame;
use pipeline_plugin_sdk::io::{InputReader, OutputWriter};
use pipeline_plugin_sdk::{PluginError, log};
use wstd::http::error::ErrorCode;
use wstd::http::{Body, BodyExt, Client, Method, Request, Response};

use crate::config::Settings;
use crate::url::Collection;
use crate::xml::{self, Entry};

/// The most an upload reads from the input stream at a time.
pub const CHUNK: usize = 256 * 1024;
/// How much of an error answer is read to quote the server.
const ERROR_BODY_LIMIT: usize = 4 * 1024;
/// A listing larger than this is refused rather than held in memory.
const LISTING_LIMIT: usize = 32 * 1024 * 1024;
/// How long to wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to answer a request without a large body.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);
/// An upload's answer comes only once the whole body is sent, which takes as long as the
/// dump does; the stage's own time limit (`limits.timeout`, 24 h by default) is the bound.
const UPLOAD_ANSWER_TIMEOUT: Duration = Duration::from_secs(48 * 3600);
/// How often deleting a failed upload's `.partial` is tried.
const DISCARD_ATTEMPTS: u32 = 10;
/// The longest pause between two pieces of an answer's body.
const BETWEEN_BYTES_TIMEOUT: Duration = Duration::from_secs(300);

/// A request as the user reads it in an error: `PUT http://host/path`.
struct Op {
    method: Method,
    url: String,
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.url)
    }
}

/// One collection on one server, with this stage's settings.
pub struct Dav<'a> {
    settings: &'a Settings,
    /// The collection requests address: the configured one, or one below it ([`Dav::at`]).
    collection: Collection,
    client: Client,
    upload_client: Client,
}

impl<'a> Dav<'a> {
    pub fn new(settings: &'a Settings) -> Dav<'a> {
        let mut client = Client::new();
        client.set_connect_timeout(CONNECT_TIMEOUT);
        client.set_first_byte_timeout(ANSWER_TIMEOUT);
        client.set_between_bytes_timeout(BETWEEN_BYTES_TIMEOUT);
        let mut upload_client = client.clone();
        upload_client.set_first_byte_timeout(UPLOAD_ANSWER_TIMEOUT);
        Dav {
            settings,
            collection: settings.collection.clone(),
            client,
            upload_client,
        }
    }

    /// The same server and credentials, addressing the collection `dir` (`2026/12/`)
    /// below this one.
    pub fn at(&self, dir: &str) -> Dav<'a> {
        Dav {
            settings: self.settings,
            collection: self.collection.sub(dir),
            client: self.client.clone(),
            upload_client: self.upload_client.clone(),
        }
    }

    fn op(&self, method: &str, path: &str) -> Op {
        Op {
            method: Method::from_bytes(method.as_bytes()).unwrap_or(Method::GET),
            url: format!("{}{path}", self.collection.origin()),
        }
    }

    /// A request for `op` with the credentials and `headers`.
    fn request(
        &self,
        op: &Op,
        headers: &[(&str, &str)],
        body: Body,
    ) -> Result<Request<Body>, PluginError> {
        let mut builder = Request::builder()
            .method(op.method.clone())
            .uri(op.url.as_str())
            .header(
                "user-agent",
                concat!("pipeline-webdav/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(auth) = &self.settings.authorization {
            builder = builder.header("authorization", auth.as_str());
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder
            .body(body)
            .map_err(|e| PluginError::Other(format!("{op}: cannot build the request: {e}")))
    }

    /// Send a request without a body of its own.
    async fn send(&self, op: &Op, headers: &[(&str, &str)]) -> Result<Response<Body>, PluginError> {
        let mut all = vec![("content-length", "0")];
        all.extend_from_slice(headers);
        let req = self.request(op, &all, no_body())?;
        self.client
            .send(req)
            .await
            .map_err(|e| self.transport_error(op, &e))
    }

    /// `op` got no answer: the host refused it, or the connection failed.
    fn transport_error(&self, op: &Op, err: &wstd::http::Error) -> PluginError {
        let authority = &self.collection.authority;
        match err.downcast_ref::<ErrorCode>() {
            Some(ErrorCode::HttpRequestDenied) => PluginError::Denied(format!(
                "{op}: the host did not let this stage reach `{authority}`; grant it with \
                 allow = {{ hosts = [\"{authority}\"] }}"
            )),
            Some(ErrorCode::ConnectionRefused) => PluginError::Io(format!(
                "{op}: connection refused by {authority}: is the WebDAV server running there?"
            )),
            Some(ErrorCode::DnsError(_)) => PluginError::Io(format!(
                "{op}: cannot resolve the host of {authority}: check `url`"
            )),
            Some(ErrorCode::ConnectionTimeout) => PluginError::Io(format!(
                "{op}: no connection to {authority} within {} s",
                CONNECT_TIMEOUT.as_secs()
            )),
            Some(code) => PluginError::Io(format!("{op}: no answer from the server: {code:?}")),
            None => PluginError::Io(format!("{op}: no answer from the server: {err:#}")),
        }
    }

    /// `op` was answered with a status it does not expect: the status, the server's own
    /// words (briefly) and, for the usual causes, what to check.
    async fn http_error(&self, op: &Op, resp: Response<Body>) -> PluginError {
        let status = resp.status();
        let said = read_limited(resp, ERROR_BODY_LIMIT)
            .await
            .ok()
            .and_then(|bytes| summarize(&bytes, status.canonical_reason().unwrap_or("")));
        let hint = match status.as_u16() {
            401 => " — the server refused the credentials; check `username` and `password`",
            403 => " — the account may not do this here; check its rights on the collection",
            404 | 409 if op.method == Method::PUT => {
                " — the collection does not exist; create it or set create_collection = true"
            }
            413 => " — the server refuses a body this large; raise its upload limit",
            507 => " — the server is out of space",
            _ => "",
        };
        let message = format!(
            "{op}: HTTP {}{}{hint}",
            status.as_str(),
            match (status.canonical_reason(), said) {
                (Some(reason), Some(said)) => format!(" {reason} ({said})"),
                (Some(reason), None) => format!(" {reason}"),
                (None, Some(said)) => format!(" ({said})"),
                (None, None) => String::new(),
            }
        );
        match status.as_u16() {
            401 | 403 => PluginError::Denied(message),
            404 | 410 => PluginError::NotFound(message),
            _ => PluginError::Io(message),
        }
    }

    /// Whether `name` exists (`HEAD`).
    pub async fn exists(&self, name: &str) -> Result<bool, PluginError> {
        let op = self.op("HEAD", &self.collection.member_path(name));
        let resp = self.send(&op, &[]).await?;
        match resp.status().as_u16() {
            200..=299 => Ok(true),
            404 => Ok(false),
            _ => Err(self
                .http_error(&op, resp)
                .await
                .context("checking whether the artifact already exists")),
        }
    }

    /// Create the collection unless it exists, and the collections above it that are
    /// missing, at most `levels` in all counted from it (the collection itself is one).
    pub async fn ensure_collection(&self, levels: usize) -> Result<(), PluginError> {
        let collection = &self.collection;
        let op = self.op("PROPFIND", &collection.path);
        let resp = self.propfind(&op, "0").await?;
        match resp.status().as_u16() {
            207 | 200 => return Ok(()),
            404 => {}
            _ => {
                return Err(self
                    .http_error(&op, resp)
                    .await
                    .context("checking the collection"));
            }
        }
        // MKCOL answers 409 when the parent is missing: climb until one succeeds, then
        // create the rest downwards.
        let paths = collection.ancestry();
        let top = paths.len().saturating_sub(levels) + 1;
        let mut missing = Vec::new();
        let mut level = paths.len();
        while level > 0 {
            let path = &paths[level - 1];
            match self.mkcol(path).await? {
                Mkcol::Done => break,
                Mkcol::ParentMissing(_) if level > top => {
                    missing.push(level - 1);
                    level -= 1;
                }
                Mkcol::ParentMissing(err) => return Err(err),
            }
        }
        while let Some(i) = missing.pop() {
            if let Mkcol::ParentMissing(err) = self.mkcol(&paths[i]).await? {
                return Err(err);
            }
        }
        Ok(())
    }

    async fn mkcol(&self, path: &str) -> Result<Mkcol, PluginError> {
        let op = self.op("MKCOL", path);
        let resp = self.send(&op, &[]).await?;
        match resp.status().as_u16() {
            200..=299 => {
                log::info(format_args!("created the collection {}", op.url));
                Ok(Mkcol::Done)
            }
            // Already there (someone else created it meanwhile).
            405 => Ok(Mkcol::Done),
            409 => Ok(Mkcol::ParentMissing(
                self.http_error(&op, resp)
                    .await
                    .context("creating the collection"),
            )),
            _ => Err(self
                .http_error(&op, resp)
                .await
                .context("creating the collection")),
        }
    }

    async fn propfind(&self, op: &Op, depth: &str) -> Result<Response<Body>, PluginError> {
        let body = xml::PROPFIND_BODY;
        let length = body.len().to_string();
        let req = self.request(
            op,
            &[
                ("depth", depth),
                ("content-type", "application/xml; charset=utf-8"),
                ("content-length", &length),
            ],
            Body::from(body),
        )?;
        self.client
            .send(req)
            .await
            .map_err(|e| self.transport_error(op, &e))
    }

    /// Store `data` as `<name>.partial`, then move it to `name` without overwriting.
    /// On failure the `.partial` is deleted (best effort) and the error says what failed.
    /// Returns the number of bytes stored.
    pub async fn store(&self, name: &str, data: InputReader) -> Result<u64, PluginError> {
        let partial = format!("{name}.partial");
        match self.upload(name, &partial, data).await {
            Ok(size) => Ok(size),
            Err(err) => {
                self.discard(&partial).await;
                Err(err)
            }
        }
    }

    async fn upload(
        &self,
        name: &str,
        partial: &str,
        data: InputReader,
    ) -> Result<u64, PluginError> {
        let collection = &self.collection;
        let target = collection.member_url(name);
        let op = self.op("PUT", &collection.member_path(partial));
        let progress = Arc::new(Mutex::new(Progress::default()));
        let body = Body::from_http_body(Upload {
            data,
            progress: progress.clone(),
        });
        let req = self.request(&op, &[("content-type", "application/octet-stream")], body)?;
        let answer = self.upload_client.send(req).await;
        let (sent, input_error) = {
            let p = lock(&progress);
            (p.sent, p.input_error.clone())
        };
        // The input failing (an earlier stage failed) cut the upload short on purpose.
        if let Some(err) = input_error {
            return Err(PluginError::Io(format!(
                "the artifact's data failed after {sent} bytes were sent ({err}); {target} \
                 was not stored"
            )));
        }
        let resp = answer.map_err(|e| {
            self.transport_error(&op, &e)
                .context(format_args!("uploading after {sent} bytes"))
        })?;
        if !resp.status().is_success() {
            return Err(self.http_error(&op, resp).await.context("uploading"));
        }
        log::debug(format_args!("uploaded {sent} bytes to {}", op.url));

        // Publish under the real name; `Overwrite: F` keeps an existing artifact intact.
        let op = self.op("MOVE", &collection.member_path(partial));
        let resp = self
            .send(&op, &[("destination", &target), ("overwrite", "F")])
            .await?;
        match resp.status().as_u16() {
            200..=299 => Ok(sent),
            412 => Err(PluginError::Other(format!(
                "{target} appeared while it was being uploaded; refusing to overwrite it"
            ))),
            _ => Err(self
                .http_error(&op, resp)
                .await
                .context(format_args!("publishing {target}"))),
        }
    }

    /// Delete a `.partial` left by a failed upload; failures are only logged. The server
    /// may still be closing the aborted upload and answer `423 Locked` (or a 5xx) for a
    /// moment: those are retried for about ten seconds.
    async fn discard(&self, partial: &str) {
        let op = self.op("DELETE", &self.collection.member_path(partial));
        let mut pause = Duration::from_millis(100);
        for attempt in 1..=DISCARD_ATTEMPTS {
            let err = match self.send(&op, &[]).await {
                Ok(resp) if resp.status().is_success() => {
                    log::info(format_args!("deleted the incomplete upload {}", op.url));
                    return;
                }
                Ok(resp) if resp.status().as_u16() == 404 => return,
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let err = self.http_error(&op, resp).await;
                    if attempt < DISCARD_ATTEMPTS && (status == 423 || status >= 500) {
                        wstd::task::sleep(pause.into()).await;
                        pause = (pause * 2).min(Duration::from_secs(2));
                        continue;
                    }
                    err
                }
                Err(err) => err,
            };
            log::warn(format_args!(
                "could not delete the incomplete upload ({err}); delete it by hand"
            ));
            return;
        }
    }

    /// The collection's members (`PROPFIND`, depth 1). A missing collection is empty.
    pub async fn list(&self) -> Result<Vec<Entry>, PluginError> {
        let op = self.op("PROPFIND", &self.collection.path);
        let resp = self.propfind(&op, "1").await?;
        match resp.status().as_u16() {
            207 => {}
            404 => return Ok(Vec::new()),
            _ => return Err(self.http_error(&op, resp).await.context("listing")),
        }
        let bytes = read_limited(resp, LISTING_LIMIT)
            .await
            .map_err(|e| PluginError::Io(format!("{op}: reading the listing: {e}")))?;
        if bytes.len() >= LISTING_LIMIT {
            return Err(PluginError::Other(format!(
                "{op}: the listing is larger than {} MiB; the collection holds too many files",
                LISTING_LIMIT / (1024 * 1024)
            )));
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| PluginError::Io(format!("{op}: the listing is not UTF-8")))?;
        xml::parse_multistatus(&text).map_err(|e| PluginError::Io(format!("{op}: {e}")))
    }

    /// Stream `name` into `out`; returns the number of bytes written.
    pub async fn download(
        &self,
        name: &str,
        mut out: OutputWriter<'_>,
    ) -> Result<u64, PluginError> {
        let op = self.op("GET", &self.collection.member_path(name));
        let resp = self.send(&op, &[]).await?;
        match resp.status().as_u16() {
            200 => {}
            404 => {
                return Err(PluginError::NotFound(format!("{} does not exist", op.url)));
            }
            _ => return Err(self.http_error(&op, resp).await.context("downloading")),
        }
        let expected = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let mut body = resp.into_body().into_boxed_body();
        let mut sent: u64 = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                PluginError::Io(format!(
                    "{op}: the download failed after {sent} bytes: {e:#}"
                ))
            })?;
            if let Ok(data) = frame.into_data() {
                out.write_all(&data).map_err(|e| {
                    PluginError::Io(format!("{op}: passing on the data after {sent} bytes: {e}"))
                })?;
                sent += data.len() as u64;
            }
        }
        if let Some(expected) = expected
            && expected != sent
        {
            return Err(PluginError::Io(format!(
                "{op}: the server announced {expected} bytes and sent {sent}"
            )));
        }
        out.flush()
            .map_err(|e| PluginError::Io(format!("{op}: passing on the data: {e}")))?;
        Ok(sent)
    }

    /// Delete `name`; a missing one is `NotFound`.
    pub async fn delete(&self, name: &str) -> Result<(), PluginError> {
        let op = self.op("DELETE", &self.collection.member_path(name));
        let resp = self.send(&op, &[]).await?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            404 => Err(PluginError::NotFound(format!("{} does not exist", op.url))),
            _ => Err(self.http_error(&op, resp).await.context("deleting")),
        }
    }
}

/// An empty request body that writes nothing. (wstd's `Body::empty()` still calls
/// `check-write` on the body stream, which the host may already have closed after a
/// `content-length: 0` request went out: the request then fails with "connection reset"
/// although the server answered.)
fn no_body() -> Body {
    Body::from_http_body(wstd::http::body::util::Empty::<Bytes>::new())
}

enum Mkcol {
    Done,
    ParentMissing(PluginError),
}

/// How far an upload got, shared between the request body and the code that waits for the
/// answer.
#[derive(Default)]
struct Progress {
    sent: u64,
    input_error: Option<String>,
}

fn lock(progress: &Mutex<Progress>) -> MutexGuard<'_, Progress> {
    progress.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A request body read from the stage's input stream as the host sends it: one chunk in
/// memory at a time. An input that fails makes the body fail, which aborts the request, so
/// the server never sees a complete upload.
struct Upload {
    data: InputReader,
    progress: Arc<Mutex<Progress>>,
}

impl http_body::Body for Upload {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        // Blocks until the previous stage produces data; nothing else runs in this
        // component meanwhile, and the host keeps the connection going.
        let chunk = match this.data.fill_buf() {
            Ok([]) => return Poll::Ready(None),
            Ok(chunk) => Bytes::copy_from_slice(chunk),
            Err(err) => {
                lock(&this.progress).input_error = Some(err.to_string());
                return Poll::Ready(Some(Err(err)));
            }
        };
        this.data.consume(chunk.len());
        lock(&this.progress).sent += chunk.len() as u64;
        Poll::Ready(Some(Ok(Frame::data(chunk))))
    }
}

/// The body of `resp`, at most `limit` bytes of it (the rest is left unread).
async fn read_limited(resp: Response<Body>, limit: usize) -> Result<Vec<u8>, String> {
    let mut body = resp.into_body().into_boxed_body();
    let mut bytes = Vec::new();
    while bytes.len() < limit {
        let Some(frame) = body.frame().await else {
            break;
        };
        let frame = frame.map_err(|e| format!("{e:#}"))?;
        if let Ok(data) = frame.into_data() {
            let take = data.len().min(limit - bytes.len());
            bytes.extend_from_slice(&data[..take]);
        }
    }
    Ok(bytes)
}

/// A server's error body as one short line: markup removed, whitespace collapsed, at
/// most 200 characters; `None` when it says nothing beyond the status's own reason.
pub fn summarize(body: &[u8], reason: &str) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let mut plain = String::new();
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                plain.push(' ');
            }
            _ if in_tag => {}
            c if c.is_control() => plain.push(' '),
            c => plain.push(c),
        }
    }
    let words: Vec<&str> = plain.split_whitespace().collect();
    let mut line = words.join(" ");
    // "401 Unauthorized", "Unauthorized." and the like add nothing to the status line.
    let bare = line
        .trim_start_matches(|c: char| c.is_ascii_digit() || c == ' ')
        .trim_end_matches('.');
    if line.is_empty() || bare.eq_ignore_ascii_case(reason) {
        return None;
    }
    if line.chars().count() > 200 {
        line = line.chars().take(199).collect();
        line.push('…');
    }
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::summarize;

    #[test]
    fn error_bodies_become_one_short_line() {
        assert_eq!(summarize(b"", "Unauthorized"), None);
        assert_eq!(summarize(b"401 Unauthorized\n", "Unauthorized"), None);
        assert_eq!(summarize(b"Unauthorized.", "Unauthorized"), None);
        assert_eq!(
            summarize(
                b"<html><head><title>403 Forbidden</title></head>\n<body><h1>Forbidden</h1>\n<p>You don't have permission.</p></body></html>",
                "Forbidden"
            )
            .as_deref(),
            Some("403 Forbidden Forbidden You don't have permission.")
        );
        assert_eq!(
            summarize(b"quota\texceeded\r\n", "Insufficient Storage").as_deref(),
            Some("quota exceeded")
        );
        let long = "x".repeat(500);
        let line = summarize(long.as_bytes(), "").expect("a line");
        assert_eq!(line.chars().count(), 200);
        assert!(line.ends_with('…'));
    }
}
