//! Outbound HTTP (`wasi:http/outgoing-handler`): a plugin may send requests only to the
//! hosts its stage was granted (`allow = { hosts = [...] }`, or what a built-in plugin's
//! plan asks for). Every other request fails with `HTTP-request-denied` for the plugin and
//! a log line that names the stage, the host and what to add to the pipeline file.
//!
//! A grant is `host` (any port), `host:port`, or `*.domain` / `*.domain:port` (any
//! subdomain of `domain`). Host names compare case-insensitively.

use http::uri::Scheme;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use wasmtime::component::Linker;

use super::{Capability, GrantContext, StoreState};
use crate::bindings::Grant;
use crate::config::ConfigError;
use crate::logging;

/// The `http` capability: `allow.hosts` and the hosts a plan asks for.
pub struct Http;

impl Capability for Http {
    const ALLOW_KEYS: &'static [&'static str] = &["hosts"];
    const IMPORTS: &'static [(&'static str, &'static str)] = &[(
        "wasi:http/outgoing-handler",
        "HTTP: only hosts in `allow.hosts`",
    )];
    /// Outbound hosts (`host` or `host:port`, `*.domain` for subdomains).
    type Granted = Vec<String>;
    type State = HttpState;

    fn link(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
        // Every request passes the stage's host grants (`HostFilter`).
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(linker)
    }

    fn allowed(cx: &mut GrantContext<'_>, hosts: &mut Vec<String>) -> Result<(), ConfigError> {
        for (host, loc) in cx.allowed("hosts") {
            check_host(host)
                .and_then(|()| check_pattern(host))
                .map_err(|msg| {
                    cx.error(
                        Some(*loc),
                        "allow.hosts",
                        format!("stage `{}`: {msg}", cx.label()),
                    )
                })?;
            hosts.push(host.clone());
        }
        Ok(())
    }

    fn admit(
        cx: &mut GrantContext<'_>,
        asked: &Grant,
        hosts: &mut Vec<String>,
    ) -> Result<bool, ConfigError> {
        let Grant::Host(host) = asked else {
            return Ok(false);
        };
        check_host(host)
            .map_err(|msg| cx.error(None, "", format!("stage `{}`: {msg}", cx.label())))?;
        if !covers(hosts, host) {
            if !cx.builtin() {
                return Err(cx.refuse(&format!("to reach the host `{host}`"), "hosts", host));
            }
            hosts.push(host.clone());
        }
        Ok(true)
    }

    fn state(stage: &str, hosts: &Vec<String>) -> HttpState {
        HttpState::new(stage, hosts)
    }
}

/// An `allow.hosts` entry names a host, or with `*.` the subdomains of a domain of at least
/// two labels: `*.com` (every .com host) or a `*` elsewhere grants far more than anyone
/// means to.
fn check_pattern(host: &str) -> Result<(), String> {
    let name = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.parse::<u16>().is_ok() && !h.is_empty() {
            h
        } else {
            host
        }
    });
    let ok = match name.strip_prefix("*.") {
        Some(domain) => {
            !domain.contains('*')
                && domain.split('.').filter(|l| !l.is_empty()).count() >= 2
                && !domain.starts_with('.')
        }
        None => !name.contains('*') && !name.is_empty(),
    };
    if ok {
        return Ok(());
    }
    Err(format!(
        "`{host}` is not a host or `*.domain.tld` (a `*.` wildcard needs a domain of at least \
         two labels, e.g. `*.example.com`)"
    ))
}

/// The per-store state of the http capability.
pub struct HttpState {
    pub(crate) ctx: WasiHttpCtx,
    pub(crate) hooks: HostFilter,
}

impl HttpState {
    pub fn new(stage: &str, hosts: &[String]) -> HttpState {
        HttpState {
            ctx: WasiHttpCtx::new(),
            hooks: HostFilter {
                stage: stage.to_string(),
                hosts: hosts.to_vec(),
            },
        }
    }
}

/// The `send_request` hook: the stage's granted hosts, checked on every request.
pub struct HostFilter {
    stage: String,
    hosts: Vec<String>,
}

impl WasiHttpView for StoreState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.caps.http.ctx,
            table: &mut self.table,
            hooks: &mut self.caps.http.hooks,
        }
    }
}

type SendResult = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for HostFilter {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendResult {
        let uri = request.uri();
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme() == Some(&Scheme::HTTP) {
                80
            } else {
                443
            });
        if !allowed(&self.hosts, &host, port) {
            let shown = if uri.port_u16().is_some() {
                format!("{host}:{port}")
            } else {
                host.clone()
            };
            logging::error(
                Some(&self.stage),
                &format!(
                    "denied an HTTP request to `{shown}`: the stage is not granted that host (granted: {}); \
                     if you trust it with that, add to the stage: allow = {{ hosts = [\"{shown}\"] }}",
                    if self.hosts.is_empty() {
                        "none".to_string()
                    } else {
                        self.hosts.join(", ")
                    }
                ),
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        _ = fut;
        Box::new(async move {
            use http_body_util::BodyExt;
            let (res, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                res.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            ))
        })
    }
}

/// Whether `host:port` is covered by one of `grants`.
pub fn allowed(grants: &[String], host: &str, port: u16) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    grants.iter().any(|g| {
        let (pattern, gport) = split_port(g);
        if gport.is_some_and(|p| p != port) {
            return false;
        }
        let pattern = pattern.trim_start_matches('[').trim_end_matches(']');
        match pattern.strip_prefix("*.") {
            // Compared as bytes: a host may hold non-ASCII characters (an IDN written in
            // unicode), and slicing the string at a byte offset could split one.
            Some(domain) => {
                let (h, d) = (host.as_bytes(), domain.as_bytes());
                h.len() > d.len() + 1
                    && h[h.len() - d.len()..].eq_ignore_ascii_case(d)
                    && h[h.len() - d.len() - 1] == b'.'
            }
            None => pattern.eq_ignore_ascii_case(host),
        }
    })
}

/// Whether a plan's host grant (`host:port`, or `host` for any port) is covered by
/// `grants`: the same rule as the runtime check, so `*.example.com` or a bare host in
/// `allow.hosts` covers a plan asking for `dav.example.com:443`.
fn covers(grants: &[String], wanted: &str) -> bool {
    match split_port(wanted) {
        (host, Some(port)) => allowed(grants, host, port),
        // Any port: only a grant for any port of a matching host covers it.
        (host, None) => {
            let any_port: Vec<String> = grants
                .iter()
                .filter(|g| split_port(g).1.is_none())
                .cloned()
                .collect();
            allowed(&any_port, host, 0)
        }
    }
}

/// A host name or grant must be ASCII: HTTP sends host names in their ASCII form, so a
/// unicode name (`bücher.example`) could never match a request; say how to write it.
fn check_host(host: &str) -> Result<(), String> {
    if host.is_ascii() {
        return Ok(());
    }
    Err(format!(
        "host `{host}` is not ASCII: write an internationalised domain name in its ASCII \
         (punycode) form, `xn--…`, as `idn2` or a browser's address bar shows it"
    ))
}

/// `host:443` → (`host`, 443); `host` → (`host`, none); `[::1]:9000`, `[::1]`.
pub(crate) fn split_port(grant: &str) -> (&str, Option<u16>) {
    if let Some((host, port)) = grant.rsplit_once(':')
        && (!host.contains(':') || host.ends_with(']'))
        && let Ok(port) = port.parse()
    {
        return (host, Some(port));
    }
    (grant, None)
}

#[cfg(test)]
mod tests {
    use super::{allowed, covers};

    #[test]
    fn plan_grants_are_covered_by_the_runtime_rule() {
        let grants = g(&["*.example.com", "dav.test", "s3.local:9000"]);
        assert!(covers(&grants, "dav.example.com:443"));
        assert!(covers(&grants, "dav.test:8080"));
        assert!(covers(&grants, "dav.test"));
        assert!(covers(&grants, "s3.local:9000"));
        assert!(!covers(&grants, "s3.local:9001"));
        assert!(
            !covers(&grants, "s3.local"),
            "a port-limited grant is not any port"
        );
        assert!(!covers(&grants, "example.com:443"));
    }

    fn g(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exact_hosts_and_ports() {
        let grants = g(&["b.s3.us-east-1.amazonaws.com:443", "minio"]);
        assert!(allowed(&grants, "b.s3.us-east-1.amazonaws.com", 443));
        assert!(allowed(&grants, "B.S3.us-east-1.amazonaws.com", 443));
        assert!(!allowed(&grants, "b.s3.us-east-1.amazonaws.com", 80));
        assert!(!allowed(&grants, "c.s3.us-east-1.amazonaws.com", 443));
        assert!(allowed(&grants, "minio", 9000));
        assert!(allowed(&grants, "minio", 80));
        assert!(!allowed(&grants, "minio.evil", 80));
        assert!(!allowed(&[], "minio", 80));
    }

    #[test]
    fn wildcards() {
        let grants = g(&["*.example.com", "*.r2.dev:8443"]);
        assert!(allowed(&grants, "a.example.com", 443));
        assert!(allowed(&grants, "a.b.example.com", 80));
        assert!(!allowed(&grants, "example.com", 443));
        assert!(!allowed(&grants, "badexample.com", 443));
        assert!(allowed(&grants, "x.r2.dev", 8443));
        assert!(!allowed(&grants, "x.r2.dev", 443));
    }

    /// Odd hosts and grants (unicode, empty, very long) never panic, and a unicode host
    /// matches only what it should.
    #[test]
    fn odd_strings_never_panic() {
        let long = "é".repeat(300);
        let odd = [
            "",
            "*",
            "*.",
            "*.é",
            "é",
            "éé.example.com",
            "a.ñ.example.com",
            ":",
            "[",
            "]",
            "[]:",
            "*.example.com:",
            "ö:99999",
            "::::",
            long.as_str(),
        ];
        for grant in odd {
            for host in odd {
                let _ = allowed(&g(&[grant]), host, 443);
                let _ = covers(&g(&[grant]), host);
            }
        }
        assert!(allowed(&g(&["*.example.com"]), "bücher.example.com", 443));
        assert!(!allowed(&g(&["*.example.com"]), "éxample.com", 443));
        assert!(!allowed(&g(&["*.xample.com"]), "éxample.com", 443));
        assert!(allowed(&g(&["*.bücher.de"]), "www.bücher.de", 443));
    }

    #[test]
    fn ip_addresses() {
        let grants = g(&["127.0.0.1:9000", "[::1]:9000"]);
        assert!(allowed(&grants, "127.0.0.1", 9000));
        assert!(!allowed(&grants, "127.0.0.1", 9001));
        assert!(allowed(&grants, "[::1]", 9000));
        assert!(allowed(&grants, "::1", 9000));
    }
}
