//! The collection URL, artifact URLs in it, and the `href`s a server answers with.
//!
//! Only what a WebDAV collection URL needs: `http(s)://host[:port]/path/`, no user
//! information (credentials go in `username`/`password`, which are kept out of logs), no
//! query, no fragment.

/// A WebDAV collection: where the artifacts are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collection {
    /// `http` or `https`.
    pub scheme: String,
    /// The authority as written in the URL (`host` or `host:port`): sent as the request's
    /// authority and used in `Destination:` headers so both name the same server.
    pub host: String,
    /// `host:port` with the port always given: what the stage needs to be granted.
    pub authority: String,
    /// The collection's path as written (percent-encoded), ending with `/`.
    pub path: String,
    /// The same path percent-decoded, for comparing with the `href`s of a listing.
    pub decoded_path: String,
}

/// Parse a collection URL; the error says what is wrong with it.
pub fn parse_collection(url: &str) -> Result<Collection, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| format!("{url:?} needs a scheme: http:// or https://"))?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port: u16 = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return Err(format!("scheme {scheme:?} is not http or https")),
    };
    if rest.contains(['?', '#']) {
        return Err(format!(
            "{url:?} must not have a query or fragment (only scheme://host[:port]/path/)"
        ));
    }
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if host.contains('@') {
        return Err(
            "the URL must not contain credentials (they would show in logs); set `username` \
             and `password` instead"
                .into(),
        );
    }
    let (name, port) = split_host_port(host).ok_or_else(|| {
        format!("{url:?} has no valid host[:port] (e.g. dav.example.com or 127.0.0.1:8080)")
    })?;
    if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "the path of {url:?} contains spaces or control characters; percent-encode them"
        ));
    }
    let mut path = path.to_owned();
    if !path.ends_with('/') {
        path.push('/');
    }
    if path.contains("//") || path.split('/').any(|s| s == "." || s == "..") {
        return Err(format!(
            "the path of {url:?} has empty, `.` or `..` segments"
        ));
    }
    let decoded_path = percent_decode(&path)
        .ok_or_else(|| format!("the path of {url:?} has an invalid percent-encoding"))?;
    Ok(Collection {
        authority: format!("{name}:{}", port.unwrap_or(default_port)),
        host: host.to_owned(),
        scheme,
        path,
        decoded_path,
    })
}

/// `host`, `host:port`, `[v6]`, `[v6]:port` → (host as written, port). `None` when the
/// host is empty, has characters a host name cannot have, or the port is not 1–65535.
fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (host, rest) = authority.split_at(end + 1);
        let inner = &host[1..host.len() - 1];
        if inner.is_empty()
            || !inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return None;
        }
        match rest {
            "" => (host, None),
            _ => (host, Some(rest.strip_prefix(':')?)),
        }
    } else {
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        let valid = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
        if !valid {
            return None;
        }
        (host, port)
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return None,
        },
    };
    Some((host, port))
}

impl Collection {
    /// `scheme://host[:port]` as written.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }

    /// The path of the member `name` (percent-encoded).
    pub fn member_path(&self, name: &str) -> String {
        format!("{}{}", self.path, encode_segment(name))
    }

    /// The URL of the member `name`.
    pub fn member_url(&self, name: &str) -> String {
        format!("{}{}", self.origin(), self.member_path(name))
    }

    /// The collection `dir` below this one; `dir` is made of plain segments each ending
    /// with `/` (`2026/12/`), which need no percent-encoding.
    pub fn sub(&self, dir: &str) -> Collection {
        Collection {
            path: format!("{}{dir}", self.path),
            decoded_path: format!("{}{dir}", self.decoded_path),
            ..self.clone()
        }
    }

    /// The paths of the collection and every collection above it except the root, outermost
    /// first: `/a/b/` → `["/a/", "/a/b/"]`.
    pub fn ancestry(&self) -> Vec<String> {
        let mut paths = Vec::new();
        let mut at = 0;
        while let Some(i) = self.path[at + 1..].find('/') {
            at += i + 1;
            paths.push(self.path[..=at].to_owned());
        }
        paths
    }

    /// What the listing entry `href` is, seen from this collection: the decoded member name
    /// for a direct member, `None` for the collection itself, anything deeper, or an href
    /// outside the collection.
    pub fn member_name(&self, href: &str) -> Option<String> {
        let path = percent_decode(href_path(href.trim()))?;
        let name = path.strip_prefix(&self.decoded_path).or_else(|| {
            // Some servers answer the collection's own href without its final `/`.
            path.strip_prefix(self.decoded_path.trim_end_matches('/'))
                .filter(|rest| rest.is_empty())
        })?;
        if name.is_empty() || name.trim_end_matches('/').contains('/') {
            return None;
        }
        Some(name.to_owned())
    }
}

/// The path of an `href`: either already a path, or an absolute URL whose
/// `scheme://authority` is removed.
fn href_path(href: &str) -> &str {
    match href.split_once("://") {
        Some((scheme, rest)) if !scheme.contains('/') => match rest.find('/') {
            Some(i) => &rest[i..],
            None => "/",
        },
        _ => href,
    }
}

/// Percent-encode everything in a path segment but RFC 3986's unreserved characters.
pub fn encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode `%XX` escapes; `None` for a malformed escape or bytes that are not UTF-8.
pub fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collection(url: &str) -> Collection {
        parse_collection(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    #[test]
    fn parses_collection_urls() {
        let c = collection("http://127.0.0.1:8080/backups");
        assert_eq!(c.scheme, "http");
        assert_eq!(c.host, "127.0.0.1:8080");
        assert_eq!(c.authority, "127.0.0.1:8080");
        assert_eq!(c.path, "/backups/");
        assert_eq!(c.member_url(""), "http://127.0.0.1:8080/backups/");

        let c = collection("HTTPS://dav.example.com");
        assert_eq!(c.authority, "dav.example.com:443");
        assert_eq!(c.host, "dav.example.com");
        assert_eq!(c.member_url("x"), "https://dav.example.com/x");

        let c = collection("http://dav.example.com/remote.php/dav/files/me/My%20Backups/");
        assert_eq!(c.authority, "dav.example.com:80");
        assert_eq!(c.decoded_path, "/remote.php/dav/files/me/My Backups/");

        let c = collection("http://[::1]:9000/x/");
        assert_eq!(c.authority, "[::1]:9000");
        assert_eq!(collection("https://[::1]/").authority, "[::1]:443");
    }

    #[test]
    fn rejects_what_is_not_a_collection_url() {
        for (url, says) in [
            ("dav.example.com/backups", "needs a scheme"),
            ("ftp://h/", "is not http or https"),
            ("http:///backups/", "no valid host"),
            ("http://h:0/", "no valid host"),
            ("http://h:99999/", "no valid host"),
            ("http://h:80x/", "no valid host"),
            ("http://bad host/", "no valid host"),
            ("http://[::1/", "no valid host"),
            ("http://u:secret@h/", "must not contain credentials"),
            ("http://h/b?x=1", "query or fragment"),
            ("http://h/a//b/", "empty, `.` or `..`"),
            ("http://h/a/../b/", "empty, `.` or `..`"),
            ("http://h/a b/", "percent-encode"),
            ("http://h/a%zz/", "invalid percent-encoding"),
        ] {
            let err = parse_collection(url).expect_err(url);
            assert!(err.contains(says), "{url}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn members_and_ancestry() {
        let c = collection("http://h:81/a/b%20c/");
        assert_eq!(c.member_path("x y#1.sql"), "/a/b%20c/x%20y%231.sql");
        assert_eq!(c.member_url("n.sql.zst"), "http://h:81/a/b%20c/n.sql.zst");
        assert_eq!(c.ancestry(), vec!["/a/", "/a/b%20c/"]);
        assert!(collection("http://h/").ancestry().is_empty());
    }

    #[test]
    fn member_names_from_hrefs() {
        let c = collection("http://h:81/a/b%20c/");
        assert_eq!(c.member_name("/a/b%20c/"), None, "the collection itself");
        assert_eq!(c.member_name("/a/b c"), None, "itself, without the slash");
        assert_eq!(c.member_name("http://h:81/a/b%20c/"), None);
        assert_eq!(
            c.member_name("/a/b%20c/backup-1.sql.zst").as_deref(),
            Some("backup-1.sql.zst")
        );
        assert_eq!(
            c.member_name("http://h:81/a/b%20c/x%23y").as_deref(),
            Some("x#y")
        );
        assert_eq!(c.member_name(" /a/b%20c/sub/ ").as_deref(), Some("sub/"));
        assert_eq!(c.member_name("/a/b%20c/sub/deeper"), None);
        assert_eq!(c.member_name("/elsewhere/x"), None);
        assert_eq!(c.member_name("/a/b%20c/%ff"), None, "not UTF-8");
    }

    #[test]
    fn percent_coding() {
        assert_eq!(encode_segment("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(encode_segment("ü /?"), "%C3%BC%20%2F%3F");
        assert_eq!(percent_decode("%C3%BC%20x").as_deref(), Some("ü x"));
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%g0"), None);
    }
}
