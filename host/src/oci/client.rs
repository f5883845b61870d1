//! The registry's HTTP API (OCI distribution spec) for what `pipeline` needs: fetch a
//! manifest and a blob, upload a blob and a manifest. hyper and rustls, which the host
//! already links for wasi:http and S3; https with the system's roots, plain http only for
//! [`Reference::insecure`] registries.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http::header::{
    ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, LOCATION, WWW_AUTHENTICATE,
};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::auth::{self, Challenge, Found};
use super::cache::{BlobWriter, Cache, Mismatch};
use super::manifest::{self, Manifest};
use super::reference::{self, Reference};

/// How long a registry may take to answer a request, or to send the next part of a body.
const TIMEOUT: Duration = Duration::from_secs(60);
/// A manifest larger than this is not a plugin's.
const MAX_MANIFEST: u64 = 4 << 20;
/// Nor is a layer larger than this.
const MAX_LAYER: u64 = 512 << 20;

/// Runs `make()`'s future to completion on a thread of its own with its own runtime, so a
/// caller inside or outside a tokio runtime can wait for it.
pub fn block_on<T, F, M>(make: M) -> Result<T>
where
    T: Send,
    F: Future<Output = Result<T>>,
    M: FnOnce() -> F + Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the registry client's runtime")?;
            rt.block_on(make())
        })
        .join()
        .map_err(|_| anyhow!("the registry client stopped unexpectedly"))?
    })
}

pub struct Registry<'a> {
    r: &'a Reference,
    /// `https://host:port` (or `http://` for an insecure registry).
    base: String,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// The `Authorization` value that the last challenge was answered with.
    auth: Option<String>,
    /// Looked up at the first challenge.
    found: Option<Found>,
}

impl<'a> Registry<'a> {
    pub fn new(r: &'a Reference) -> Result<Registry<'a>> {
        let insecure = r.insecure();
        let tls = match crate::capabilities::mail::smtp::system_config() {
            Ok(c) => (*c).clone(),
            // A plain-http registry needs no roots.
            Err(_) if insecure => {
                (*crate::capabilities::mail::smtp::tls_config(rustls::RootCertStore::empty())
                    .map_err(|e| anyhow!(e))?)
                .clone()
            }
            Err(e) => bail!("{r}: {e}"),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let scheme = if insecure { "http" } else { "https" };
        Ok(Registry {
            r,
            base: format!("{scheme}://{}", r.registry),
            http: Client::builder(TokioExecutor::new()).build(connector),
            auth: None,
            found: None,
        })
    }

    /// Whether `url` is on the registry itself (same scheme, host and port as its base):
    /// only there are credentials and tokens sent, and a 401 answered.
    fn on_registry(&self, url: &str) -> bool {
        same_origin(&self.base, url)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.r.repository)
    }

    /// A `Location` header's URL: absolute, or a path on the registry.
    fn resolve(&self, location: &str) -> String {
        if location.starts_with('/') {
            format!("{}{location}", self.base)
        } else {
            location.to_string()
        }
    }

    /// Sends a request, answering one authentication challenge (401) and trying again.
    async fn send(
        &mut self,
        method: Method,
        url: &str,
        headers: &[(HeaderName, &str)],
        body: Bytes,
    ) -> Result<Response<Incoming>> {
        let mut answered = false;
        loop {
            let mut req = Request::builder().method(method.clone()).uri(url);
            for (k, v) in headers {
                req = req.header(k, *v);
            }
            // Credentials go to the registry only, never to where it redirects.
            let on_registry = self.on_registry(url);
            if let Some(a) = &self.auth
                && on_registry
            {
                req = req.header(AUTHORIZATION, a);
            }
            let req = req
                .header(CONTENT_LENGTH, body.len())
                .body(Full::new(body.clone()))
                .with_context(|| format!("{}: not a valid request URL", self.r))?;
            let resp = tokio::time::timeout(TIMEOUT, self.http.request(req))
                .await
                .map_err(|_| {
                    anyhow!(
                        "{}: registry {} did not answer in {}s",
                        self.r,
                        self.r.registry,
                        TIMEOUT.as_secs()
                    )
                })?
                .map_err(|e| {
                    anyhow!(
                        "{}: cannot reach registry {}: {}",
                        self.r,
                        self.r.registry,
                        error_chain(&e)
                    )
                })?;
            if resp.status() != StatusCode::UNAUTHORIZED || answered {
                return Ok(resp);
            }
            if !on_registry {
                // Storage the registry redirected to wants credentials: none are sent
                // anywhere but the registry.
                bail!(
                    "{}: registry {} redirected to {}, which asks for credentials (HTTP 401); they are sent to the registry only",
                    self.r,
                    self.r.registry,
                    without_query(url)
                );
            }
            answered = true;
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(auth::parse_challenge);
            self.authenticate(challenge).await?;
        }
    }

    /// The credentials for this registry, or why there are none to give.
    fn credentials(&mut self) -> Result<Option<auth::Credentials>> {
        if self.found.is_none() {
            self.found =
                Some(auth::lookup(&self.r.registry).map_err(|e| anyhow!("{}: {e}", self.r))?);
        }
        match &self.found {
            Some(Found::Credentials(c)) => Ok(Some(c.clone())),
            Some(Found::Helper { helper, file }) => bail!(
                "{}: registry {} asks for credentials and {} names the credential helper `{helper}`, which pipeline does not run: set {}, {} and {}, or add an `auths` entry for it",
                self.r,
                self.r.registry,
                file.display(),
                auth::ENV_USER,
                auth::ENV_PASSWORD,
                auth::ENV_HOST
            ),
            _ => Ok(None),
        }
    }

    async fn authenticate(&mut self, challenge: Option<Challenge>) -> Result<()> {
        match challenge {
            Some(Challenge::Bearer {
                realm,
                service,
                scope,
            }) => {
                // Public repositories hand out anonymous tokens: a credential helper that
                // is not run is an error only if the token service wants credentials.
                let (creds, unusable) = match self.credentials() {
                    Ok(c) => (c, None),
                    Err(e) if matches!(self.found, Some(Found::Helper { .. })) => (None, Some(e)),
                    Err(e) => return Err(e),
                };
                let token = match self.token(&realm, service, scope, creds).await {
                    Ok(t) => t,
                    Err(e) => return Err(unusable.unwrap_or(e)),
                };
                self.auth = Some(format!("Bearer {token}"));
            }
            _ => {
                let creds = self.credentials()?.ok_or_else(|| {
                    anyhow!(
                        "{}: registry {} asks for credentials and none were found: set {} and {} (and {}={}), or log in to it in the Docker config file ($DOCKER_CONFIG/config.json or ~/.docker/config.json)",
                        self.r,
                        self.r.registry,
                        auth::ENV_USER,
                        auth::ENV_PASSWORD,
                        auth::ENV_HOST,
                        self.r.registry
                    )
                })?;
                self.auth = Some(creds.basic());
            }
        }
        Ok(())
    }

    /// The token flow: GET realm?service=…&scope=… (with the credentials, if any).
    async fn token(
        &self,
        realm: &str,
        service: Option<String>,
        scope: Option<String>,
        creds: Option<auth::Credentials>,
    ) -> Result<String> {
        let uri: http::Uri = realm
            .parse()
            .map_err(|_| anyhow!("{}: the token realm `{realm}` is not a URL", self.r))?;
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
        let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
        let http = uri.scheme() == Some(&http::uri::Scheme::HTTP);
        if !(https || http && reference::plain_http_allowed(authority)) {
            bail!(
                "{}: registry {} sends for tokens to `{realm}`, which is not https (plain http only for a loopback host or one PIPELINE_INSECURE_REGISTRIES lists)",
                self.r,
                self.r.registry
            );
        }
        // Credentials only where they may go; elsewhere an anonymous token is asked for.
        let creds = creds.filter(|c| auth::realm_gets_credentials(&uri, self.r.host(), c));
        let mut query = Vec::new();
        for (k, v) in [("service", service), ("scope", scope)] {
            if let Some(v) = v {
                query.push(format!("{k}={}", crate::redact::percent_encode(&v)));
            }
        }
        let sep = if realm.contains('?') { '&' } else { '?' };
        let url = if query.is_empty() {
            realm.to_string()
        } else {
            format!("{realm}{sep}{}", query.join("&"))
        };
        let mut req = Request::builder().method(Method::GET).uri(&url);
        if let Some(c) = &creds {
            req = req.header(AUTHORIZATION, c.basic());
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .with_context(|| format!("{}: the token realm `{realm}` is not a URL", self.r))?;
        let resp = tokio::time::timeout(TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| anyhow!("{}: the token service {realm} did not answer", self.r))?
            .map_err(|e| {
                anyhow!(
                    "{}: cannot reach the token service {realm}: {}",
                    self.r,
                    error_chain(&e)
                )
            })?;
        let status = resp.status();
        let body = read_limited(resp, 1 << 20).await?;
        if !status.is_success() {
            let by = creds
                .as_ref()
                .map(|c| format!(" for user `{}` (from {})", c.user, c.source))
                .unwrap_or_default();
            bail!(
                "{}: the token service {realm} refused a token{by}: HTTP {status}",
                self.r
            );
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Token = serde_json::from_slice(&body)
            .map_err(|_| anyhow!("{}: the token service {realm} sent no token", self.r))?;
        let token = t
            .token
            .or(t.access_token)
            .ok_or_else(|| anyhow!("{}: the token service {realm} sent no token", self.r))?;
        let mut r = crate::redact::Redactor::default();
        r.add_opaque(&token);
        crate::logging::add_secrets(&r);
        Ok(token)
    }

    /// `resp` if it succeeded; else an error saying what failed, the status and the
    /// registry's own error code and message.
    async fn check(&self, resp: Response<Incoming>, what: &str) -> Result<Response<Incoming>> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = read_limited(resp, 64 << 10).await.unwrap_or_default();
        let said = registry_errors(&body);
        let hint = match (status, &self.found) {
            (StatusCode::UNAUTHORIZED, Some(Found::Credentials(c))) => format!(
                ": the registry refused the credentials of user `{}` (from {})",
                c.user, c.source
            ),
            (StatusCode::UNAUTHORIZED, Some(Found::Helper { helper, file })) => format!(
                ": {} names the credential helper `{helper}`, which pipeline does not run: set {}, {} and {}",
                file.display(),
                auth::ENV_USER,
                auth::ENV_PASSWORD,
                auth::ENV_HOST
            ),
            (StatusCode::UNAUTHORIZED, _) => format!(
                ": no credentials were given: set {} and {} (and {}={})",
                auth::ENV_USER,
                auth::ENV_PASSWORD,
                auth::ENV_HOST,
                self.r.registry
            ),
            (StatusCode::NOT_FOUND, _) => ": not in the registry".into(),
            _ => String::new(),
        };
        bail!("{}: {what}: HTTP {status}{said}{hint}", self.r)
    }

    /// The manifest `target` names (a tag or `sha256:<hex>`), as sent.
    pub async fn manifest(&mut self, target: &str) -> Result<Vec<u8>> {
        let url = self.url(&format!("manifests/{target}"));
        let resp = self
            .send(
                Method::GET,
                &url,
                &[(ACCEPT, manifest::MEDIA_TYPE)],
                Bytes::new(),
            )
            .await?;
        let resp = self.check(resp, "cannot fetch its manifest").await?;
        read_limited(resp, MAX_MANIFEST).await
    }

    /// Streams the blob `sha256:<hex>` into the cache, following redirects (to storage
    /// that holds the blob); kept only if its SHA-256 is `hex` and it is `size` bytes.
    pub async fn blob(&mut self, cache: &Cache, hex: &str, size: u64) -> Result<()> {
        if size > MAX_LAYER {
            bail!(
                "{}: its layer is {size} bytes, more than a plugin's {MAX_LAYER}",
                self.r
            );
        }
        let mut url = self.url(&format!("blobs/sha256:{hex}"));
        let mut resp = self.send(Method::GET, &url, &[], Bytes::new()).await?;
        for _ in 0..5 {
            if !resp.status().is_redirection() {
                break;
            }
            let next = resp
                .headers()
                .get(LOCATION)
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| anyhow!("{}: a redirect without a location", self.r))?;
            url = self.resolve(next);
            let scheme = url
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.scheme().cloned());
            let plain = match scheme {
                Some(s) if s == http::uri::Scheme::HTTPS => false,
                Some(s) if s == http::uri::Scheme::HTTP => true,
                _ => bail!(
                    "{}: the registry redirects its layer to `{}`, which is not an http(s) URL",
                    self.r,
                    without_query(&url)
                ),
            };
            if plain && !self.on_registry(&url) {
                bail!(
                    "{}: the registry redirects its layer to plain http ({})",
                    self.r,
                    without_query(&url)
                );
            }
            resp = self.send(Method::GET, &url, &[], Bytes::new()).await?;
        }
        let resp = self.check(resp, "cannot fetch its layer").await?;
        let mut w = cache.writer()?;
        stream(resp, &mut w, size).await?;
        if w.written() != size {
            bail!(
                "{}: its layer sha256:{hex} is {} bytes, the manifest says {size}",
                self.r,
                w.written()
            );
        }
        match w.finish(hex) {
            Ok(()) => Ok(()),
            Err(Mismatch::Digest(got)) => bail!(
                "{}: digest mismatch: its layer should be sha256:{hex} (as the manifest says) but the registry sent sha256:{got}; refusing it",
                self.r
            ),
            Err(Mismatch::Io(e)) => bail!("{}: {e}", self.r),
        }
    }

    /// Uploads a blob unless the registry has it already (monolithic upload: POST, PUT).
    pub async fn upload(&mut self, hex: &str, bytes: Bytes) -> Result<()> {
        let url = self.url(&format!("blobs/sha256:{hex}"));
        let resp = self.send(Method::HEAD, &url, &[], Bytes::new()).await?;
        if resp.status().is_success() {
            return Ok(());
        }
        let resp = self
            .send(Method::POST, &self.url("blobs/uploads/"), &[], Bytes::new())
            .await?;
        let resp = self.check(resp, "cannot start an upload").await?;
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| anyhow!("{}: the registry gave no upload location", self.r))?;
        let mut put = self.resolve(location);
        put.push(if put.contains('?') { '&' } else { '?' });
        put.push_str(&format!("digest=sha256%3A{hex}"));
        let resp = self
            .send(
                Method::PUT,
                &put,
                &[(CONTENT_TYPE, "application/octet-stream")],
                bytes,
            )
            .await?;
        self.check(resp, &format!("cannot upload blob sha256:{hex}"))
            .await?;
        Ok(())
    }

    /// Stores a manifest under `target` (a tag).
    pub async fn put_manifest(&mut self, target: &str, bytes: Bytes) -> Result<()> {
        let url = self.url(&format!("manifests/{target}"));
        let resp = self
            .send(
                Method::PUT,
                &url,
                &[(CONTENT_TYPE, manifest::MEDIA_TYPE)],
                bytes,
            )
            .await?;
        self.check(resp, "cannot store its manifest").await?;
        Ok(())
    }
}

/// Pulls `r` into the cache: its manifest (checked against the pinned digest, if any),
/// then its layer (checked against the manifest); records a tag's digest. The manifest's
/// SHA-256, hex.
pub async fn pull(r: &Reference, cache: &Cache) -> Result<String> {
    let mut reg = Registry::new(r)?;
    let target = match (&r.digest, &r.tag) {
        (Some(d), _) => format!("sha256:{d}"),
        (None, Some(t)) => t.clone(),
        (None, None) => bail!("{r}: names neither a tag nor a digest"),
    };
    let bytes = reg.manifest(&target).await?;
    let mut w = cache.writer()?;
    w.write(&bytes)?;
    let got = w.digest();
    if let Some(want) = &r.digest
        && *want != got
    {
        bail!(
            "{r}: digest mismatch: expected sha256:{want}, the registry sent a manifest with sha256:{got}; refusing it"
        );
    }
    let m = Manifest::parse(&bytes).map_err(|e| anyhow!("{r}: {e}"))?;
    if let Err(e) = w.finish(&got) {
        bail!("{r}: cannot store its manifest: {e:?}");
    }
    if cache.read_blob(&m.layer.hex)?.is_none() {
        reg.blob(cache, &m.layer.hex, m.layer.size).await?;
    }
    if let (None, Some(tag)) = (&r.digest, &r.tag) {
        cache.set_tag(r, tag, &got)?;
    }
    Ok(got)
}

/// Pushes a component: its config and layer blobs, then the manifest under the tag. The
/// manifest's SHA-256, hex.
pub async fn push(r: &Reference, wasm: Bytes, config: Bytes) -> Result<String> {
    let Some(tag) = &r.tag else {
        bail!("{r}: push to a tag (`oci://registry/repository:1.0`), not a digest");
    };
    if r.digest.is_some() {
        bail!("{r}: push to a tag alone; the digest is what the push prints");
    }
    let m = manifest::build(&wasm, &config);
    let mut reg = Registry::new(r)?;
    reg.upload(&m.config_hex, config).await?;
    reg.upload(&m.layer_hex, wasm).await?;
    reg.put_manifest(tag, Bytes::from(m.bytes)).await?;
    Ok(m.hex)
}

async fn read_limited(resp: Response<Incoming>, max: u64) -> Result<Vec<u8>> {
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(frame) = tokio::time::timeout(TIMEOUT, body.frame())
        .await
        .map_err(|_| anyhow!("the registry stopped sending"))?
    {
        let frame = frame.map_err(|e| anyhow!("reading from the registry: {}", error_chain(&e)))?;
        if let Ok(data) = frame.into_data() {
            if out.len() as u64 + data.len() as u64 > max {
                bail!("the registry's answer is larger than {max} bytes");
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

async fn stream(resp: Response<Incoming>, w: &mut BlobWriter, max: u64) -> Result<()> {
    let mut body = resp.into_body();
    while let Some(frame) = tokio::time::timeout(TIMEOUT, body.frame())
        .await
        .map_err(|_| anyhow!("the registry stopped sending"))?
    {
        let frame = frame.map_err(|e| anyhow!("reading from the registry: {}", error_chain(&e)))?;
        if let Ok(data) = frame.into_data() {
            if w.written() + data.len() as u64 > max {
                bail!("the registry sent more than the manifest's {max} bytes");
            }
            w.write(&data)?;
        }
    }
    Ok(())
}

/// `: CODE: message` of a registry's `{"errors": [{"code", "message"}]}`.
fn registry_errors(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<Error>,
    }
    #[derive(serde::Deserialize)]
    struct Error {
        code: Option<String>,
        message: Option<String>,
    }
    let Ok(e) = serde_json::from_slice::<Errors>(body) else {
        return String::new();
    };
    e.errors
        .iter()
        .map(|e| {
            format!(
                ": {} {}",
                e.code.as_deref().unwrap_or(""),
                e.message.as_deref().unwrap_or("")
            )
            .trim_end()
            .to_string()
        })
        .collect()
}

/// Whether `url` has the scheme, host and port of `base` (compared as URLs: case-insensitive
/// scheme and host, a user part or another port is another origin).
fn same_origin(base: &str, url: &str) -> bool {
    let (Ok(b), Ok(u)) = (base.parse::<http::Uri>(), url.parse::<http::Uri>()) else {
        return false;
    };
    let port = |u: &http::Uri| {
        u.port_u16().or_else(
            || match u.scheme_str().map(str::to_ascii_lowercase).as_deref() {
                Some("https") => Some(443),
                Some("http") => Some(80),
                _ => None,
            },
        )
    };
    b.scheme().is_some()
        && b.scheme() == u.scheme()
        && !u.authority().is_some_and(|a| a.as_str().contains('@'))
        && b.host()
            .is_some_and(|h| u.host().is_some_and(|x| x.eq_ignore_ascii_case(h)))
        && port(&b) == port(&u)
}

/// A URL without its query (which may hold a storage signature).
fn without_query(url: &str) -> &str {
    url.split('?').next().unwrap_or("")
}

/// An error with its sources, which hyper keeps apart (`connection refused` is a source).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_and_401_handling_only_on_the_registry_itself() {
        let base = "http://127.0.0.1:5000";
        for url in [
            "http://127.0.0.1:5000/v2/acme/sink/blobs/sha256:00",
            "HTTP://127.0.0.1:5000/v2/",
            "http://127.0.0.1:5000",
        ] {
            assert!(same_origin(base, url), "{url}");
        }
        for url in [
            "http://127.0.0.1:5001/v2/",
            "https://127.0.0.1:5000/v2/",
            "http://127.0.0.1:5000.evil.example/v2/",
            "http://127.0.0.1:5000@evil.example/v2/",
            "http://evil.example/http://127.0.0.1:5000/v2/",
            "http://127.0.0.2:5000/v2/",
            "/v2/relative",
            "not a url",
        ] {
            assert!(!same_origin(base, url), "{url}");
        }
        assert!(same_origin(
            "https://registry.example",
            "https://Registry.Example:443/v2/"
        ));
        assert!(!same_origin(
            "https://registry.example",
            "https://registry.example:8443/v2/"
        ));
    }
}
