//! Connection URLs of the form `scheme://[user[:password]@][host][:port][/path][?key=value&…]`
//! (`mysql://`, `redis://`, …), split into their parts with percent-decoding, so that a
//! plugin can hand the password to its program some other way than the command line.
//!
//! The user info ends at the last `@` before the first `/`, so an `@` in a password that was
//! not percent-encoded still works; a `/` in it must be encoded (`%2F`), and an `@` after
//! the first `/` (a sign that one was not) is refused with that advice. No error message
//! quotes any part of the URL: it may hold the password.

use crate::PluginError;

/// A URL split into its parts, each percent-decoded.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Url {
    /// Lower-cased, without `://`.
    pub scheme: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// The host name or address (IPv6 without its brackets); empty when none is written.
    pub host: String,
    pub port: Option<u16>,
    /// The path without its leading `/` (a database name or number); empty when none.
    pub path: String,
    /// Query parameters in order, names and values decoded.
    pub query: Vec<(String, String)>,
}

// Never print the password, even in a test failure.
impl std::fmt::Debug for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Url")
            .field("scheme", &self.scheme)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("host", &self.host)
            .field("port", &self.port)
            .field("path", &self.path)
            .field("query", &self.query)
            .finish()
    }
}

/// Parses `text` as a URL of one of `schemes` (`["mysql", "mariadb"]`). `key` names the
/// configuration key (or `the restore target`) in error messages.
pub fn parse(text: &str, schemes: &[&str], key: &str) -> Result<Url, PluginError> {
    let invalid = |message: &str| PluginError::Config(format!("{key}: {message}"));
    let text = text.trim();
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(invalid(&format!(
            "not a URL: write {}://user:password@host:port/…",
            schemes.first().copied().unwrap_or("scheme")
        )));
    };
    let scheme = scheme.to_ascii_lowercase();
    if !schemes.contains(&scheme.as_str()) {
        return Err(invalid(&format!(
            "the URL scheme must be {}",
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or ")
        )));
    }
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let slash = before_query.find('/').unwrap_or(before_query.len());
    let (authority, path) = before_query.split_at(slash);
    if path.contains('@') {
        return Err(invalid(
            "the user info (before `@`) seems to contain a `/`; percent-encode it as %2F \
             (and `@` as %40, `:` as %3A, `%` as %25)",
        ));
    }
    let mut url = Url {
        scheme,
        ..Url::default()
    };
    let hostport = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            url.user = Some(decode(user, "the user name", &invalid)?).filter(|u| !u.is_empty());
            url.password = password
                .map(|p| decode(p, "the password", &invalid))
                .transpose()?
                .filter(|p| !p.is_empty());
            &authority[at + 1..]
        }
        None => authority,
    };
    let (host, port) = if let Some(inner) = hostport.strip_prefix('[') {
        let Some((host, after)) = inner.split_once(']') else {
            return Err(invalid("an IPv6 address lacks its closing `]`"));
        };
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None => return Err(invalid("text after an IPv6 address must be `:port`")),
            },
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    url.host = decode(host, "the host name", &invalid)?;
    if let Some(port) = port.filter(|p| !p.is_empty()) {
        url.port = Some(
            port.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| invalid("the port is not a number from 1 to 65535"))?,
        );
    }
    url.path = decode(path.strip_prefix('/').unwrap_or(path), "the path", &invalid)?;
    for param in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        let name = decode(name, "a query parameter's name", &invalid)?;
        let value = decode(value, &format!("the value of `{name}`"), &invalid)?;
        url.query.push((name, value));
    }
    Ok(url)
}

fn decode(
    text: &str,
    what: &str,
    invalid: &dyn Fn(&str) -> PluginError,
) -> Result<String, PluginError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match byte {
                Some(0) => return Err(invalid(&format!("{what} contains %00"))),
                Some(b) => out.push(b),
                None => {
                    return Err(invalid(&format!(
                        "{what} contains a `%` not followed by two hex digits; write a literal \
                         `%` as %25"
                    )));
                }
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| invalid(&format!("{what} is not UTF-8 once percent-decoded")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Url {
        parse(text, &["mysql", "mariadb"], "key `url`").unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn err(text: &str) -> String {
        match parse(text, &["mysql"], "key `url`") {
            Err(PluginError::Config(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_part_is_decoded() {
        let u = p(
            "mysql://app:p%40ss%3Aw%2Frd%25%3F%26%3D%23x@db.example:3307/my%20db?socket=%2Frun%2Fm.sock&ssl",
        );
        assert_eq!(u.scheme, "mysql");
        assert_eq!(u.user.as_deref(), Some("app"));
        assert_eq!(u.password.as_deref(), Some("p@ss:w/rd%?&=#x"));
        assert_eq!(u.host, "db.example");
        assert_eq!(u.port, Some(3307));
        assert_eq!(u.path, "my db");
        assert_eq!(
            u.query,
            [
                ("socket".to_string(), "/run/m.sock".to_string()),
                ("ssl".to_string(), String::new())
            ]
        );
        assert!(!format!("{u:?}").contains("p@ss"));
    }

    #[test]
    fn optional_parts() {
        let u = p("MariaDB://db/app");
        assert_eq!(
            (u.scheme.as_str(), u.user, u.password),
            ("mariadb", None, None)
        );
        let u = p("mysql://app@/app?socket=/s");
        assert_eq!((u.host.as_str(), u.port), ("", None));
        let u = p("mysql://:secret@[::1]:3306");
        assert_eq!(u.user, None);
        assert_eq!(u.password.as_deref(), Some("secret"));
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", Some(3306), "")
        );
        // An unencoded `@` in the password: the last one ends the user info.
        let u = p("mysql://app:a@b@db/app");
        assert_eq!(u.password.as_deref(), Some("a@b"));
        assert_eq!(u.host, "db");
    }

    #[test]
    fn errors_never_quote_the_url() {
        for (text, needle) in [
            ("db/app", "not a URL"),
            ("postgres://secret@db/app", "scheme must be mysql://"),
            ("mysql://app:se/cret@db/app", "%2F"),
            ("mysql://app:50%secret@db/app", "%25"),
            ("mysql://app:secret@db:99999/app", "port"),
            ("mysql://app:secret@[::1/app", "`]`"),
        ] {
            let m = err(text);
            assert!(m.contains(needle), "{text}: {m}");
            assert!(m.starts_with("key `url`: "), "{m}");
            assert!(!m.contains("secret") && !m.contains("cret"), "{m}");
        }
    }
}
