//! `oci://registry/repository[:tag][@sha256:hex]`: what a plugin reference names, checked
//! strictly, since its parts become URL paths and cache file names.

use std::fmt;
use std::net::IpAddr;

/// Whether plain http may be spoken to `authority` (`host[:port]`): a loopback host, or one
/// `PIPELINE_INSECURE_REGISTRIES` lists (comma-separated `host:port`, as written there).
pub fn plain_http_allowed(authority: &str) -> bool {
    plain_http_allowed_in(
        authority,
        std::env::var("PIPELINE_INSECURE_REGISTRIES")
            .ok()
            .as_deref(),
    )
}

/// [`plain_http_allowed`] with the list given.
fn plain_http_allowed_in(authority: &str, insecure: Option<&str>) -> bool {
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if !port.contains(']') => h,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    {
        return true;
    }
    insecure.is_some_and(|list| {
        list.split(',')
            .any(|r| r.trim().eq_ignore_ascii_case(authority))
    })
}

/// A plugin in an OCI registry: a tag, a digest, or both (the digest wins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host` or `host:port`, lowercase.
    pub registry: String,
    /// `acme/webdav-sink`: lowercase path components.
    pub repository: String,
    pub tag: Option<String>,
    /// The manifest's SHA-256, 64 lowercase hex digits.
    pub digest: Option<String>,
}

pub const SCHEME: &str = "oci://";

impl Reference {
    /// Parses `oci://host[:port]/repo/path[:tag][@sha256:<hex>]` (the `oci://` may be left
    /// out on the command line). The error says what is wrong, not the whole grammar.
    pub fn parse(text: &str) -> Result<Reference, String> {
        let rest = text.strip_prefix(SCHEME).unwrap_or(text);
        let (name, digest) = match rest.split_once('@') {
            Some((name, d)) => (name, Some(parse_digest(d)?)),
            None => (rest, None),
        };
        let Some((registry, path)) = name.split_once('/') else {
            return Err(
                "name the registry and the repository: `oci://registry.example/acme/plugin:1.0`"
                    .into(),
            );
        };
        let registry = parse_registry(registry)?;
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) => (repo, Some(parse_tag(tag)?)),
            None => (path, None),
        };
        check_repository(repository)?;
        if tag.is_none() && digest.is_none() {
            return Err(
                "name a tag (`:1.2`) or a digest (`@sha256:…`); there is no implicit `latest`"
                    .into(),
            );
        }
        Ok(Reference {
            registry,
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// The registry's host without the port.
    pub fn host(&self) -> &str {
        self.registry
            .rsplit_once(':')
            .map_or(self.registry.as_str(), |(h, _)| h)
    }

    /// Plain http is used for a registry on a loopback address and for those listed in
    /// `PIPELINE_INSECURE_REGISTRIES` (comma-separated `host:port`), https otherwise.
    pub fn insecure(&self) -> bool {
        plain_http_allowed(&self.registry)
    }

    /// The last component of the repository: a stage's default name.
    pub fn short_name(&self) -> &str {
        self.repository
            .rsplit('/')
            .next()
            .unwrap_or(&self.repository)
    }

    /// The same reference without its tag, pinned to `digest`.
    pub fn pinned(&self, digest: &str) -> Reference {
        Reference {
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@sha256:{d}")?;
        }
        Ok(())
    }
}

fn parse_digest(d: &str) -> Result<String, String> {
    let hex = d.strip_prefix("sha256:").ok_or_else(|| {
        format!("digest `{d}` is not `sha256:<64 hex digits>` (only sha256 is supported)")
    })?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(format!(
            "digest `{d}` is not `sha256:<64 hex digits>` (lowercase hex, 64 of them)"
        ));
    }
    Ok(hex.to_string())
}

fn parse_registry(r: &str) -> Result<String, String> {
    let (host, port) = match r.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (r, None),
    };
    if let Some(p) = port
        && !p.parse::<u16>().is_ok_and(|p| p != 0)
    {
        return Err(format!("registry `{r}`: `{p}` is not a port"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || !host.split('.').all(label_ok) {
        return Err(format!(
            "registry `{r}` is not a host name (letters, digits, `-` and `.`) with an optional `:port`"
        ));
    }
    Ok(r.to_ascii_lowercase())
}

/// The distribution spec's `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` per path component.
fn check_repository(repo: &str) -> Result<(), String> {
    if repo.is_empty() {
        return Err("the repository is missing after the registry (`registry/acme/plugin`)".into());
    }
    if repo.len() > 255 {
        return Err("the repository name is longer than 255 characters".into());
    }
    for part in repo.split('/') {
        if !component_ok(part) {
            return Err(format!(
                "repository `{repo}`: `{part}` is not a valid path component (lowercase letters and digits, separated by `.`, `_`, `__` or dashes)"
            ));
        }
    }
    Ok(())
}

fn component_ok(part: &str) -> bool {
    let b = part.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let (Some(&first), Some(&last)) = (b.first(), b.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Each run of separators must be `.`, `_`, `__` or one or more `-`.
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let run = &part[start..i];
        let ok = run == "." || run == "_" || run == "__" || run.bytes().all(|c| c == b'-');
        if !ok {
            return false;
        }
    }
    true
}

fn parse_tag(t: &str) -> Result<String, String> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && t.bytes().enumerate().all(|(i, c)| {
            c.is_ascii_alphanumeric() || c == b'_' || (i > 0 && (c == b'.' || c == b'-'))
        });
    if !ok {
        return Err(format!(
            "tag `{t}` is not valid (letters, digits, `_`, `.` and `-`, not starting with `.` or `-`, at most 128)"
        ));
    }
    Ok(t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn tag_digest_and_both() {
        let r = Reference::parse("oci://registry.example/acme/webdav-sink:1.2").unwrap();
        assert_eq!(r.registry, "registry.example");
        assert_eq!(r.repository, "acme/webdav-sink");
        assert_eq!(r.tag.as_deref(), Some("1.2"));
        assert_eq!(r.digest, None);
        assert_eq!(r.short_name(), "webdav-sink");

        let text = format!("oci://127.0.0.1:5000/acme/sink@sha256:{HEX}");
        let r = Reference::parse(&text).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.host(), "127.0.0.1");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(HEX));
        assert!(r.insecure());
        assert_eq!(r.to_string(), text);

        let text = format!("oci://Registry.Example:443/a/b/c:v1@sha256:{HEX}");
        let r = Reference::parse(&text).unwrap();
        assert_eq!(r.registry, "registry.example:443");
        assert_eq!(r.repository, "a/b/c");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert!(!r.insecure());
        // Without the scheme, as `plugins pull` accepts it.
        assert_eq!(
            Reference::parse("localhost:5000/x:1").unwrap().registry,
            "localhost:5000"
        );
    }

    #[test]
    fn plain_http_only_for_loopback_or_listed_hosts() {
        for loopback in ["127.0.0.1:9000", "127.8.0.1", "localhost:80", "[::1]:5000"] {
            assert!(plain_http_allowed_in(loopback, None), "{loopback}");
        }
        let list = Some("registry.lan:5000, auth.lan:8080");
        assert!(plain_http_allowed_in("auth.lan:8080", list));
        assert!(plain_http_allowed_in("Registry.LAN:5000", list));
        for other in [
            "auth.example:8080",
            "auth.lan",
            "auth.lan:8081",
            "10.0.0.1:80",
        ] {
            assert!(!plain_http_allowed_in(other, list), "{other}");
        }
    }

    #[test]
    fn hostile_and_broken_references_are_refused() {
        let cases = [
            (
                "oci://registry.example/../etc:1",
                "not a valid path component",
            ),
            (
                "oci://registry.example/acme/..:1",
                "not a valid path component",
            ),
            (
                "oci://registry.example/a//b:1",
                "not a valid path component",
            ),
            (
                "oci://registry.example/Acme/Sink:1",
                "not a valid path component",
            ),
            ("oci://registry.example/acme/sink:../x", "tag `../x`"),
            ("oci://registry.example/acme/sink:.hidden", "tag `.hidden`"),
            ("oci://registry.example/acme/sink", "name a tag"),
            ("oci://registry.example/:1", "repository is missing"),
            (
                "oci://registry.example",
                "name the registry and the repository",
            ),
            ("oci://../acme/sink:1", "is not a host name"),
            ("oci://reg_istry/acme/sink:1", "is not a host name"),
            ("oci://registry.example:99999/a:1", "is not a port"),
            ("oci://registry.example/a@sha256:abc", "64 hex digits"),
            ("oci://registry.example/a@md5:abc", "only sha256"),
            (
                &format!("oci://registry.example/a@sha256:{}", HEX.to_uppercase()),
                "lowercase hex",
            ),
            (
                &format!("oci://registry.example/a@sha256:{}0", HEX),
                "64 hex digits",
            ),
            (
                &format!("oci://registry.example/a@sha256:{}", HEX.replace('0', "g")),
                "64 hex digits",
            ),
        ];
        for (text, want) in cases {
            let err = Reference::parse(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn repository_components_follow_the_distribution_grammar() {
        for ok in ["a", "a.b", "a_b", "a__b", "a---b", "a1-2.3_4"] {
            assert!(component_ok(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a.", "-a", "a___b", "a._b", "a-.b", "aB"] {
            assert!(!component_ok(bad), "{bad}");
        }
    }
}
