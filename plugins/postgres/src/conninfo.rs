//! Taking the password out of a libpq connection string.
//!
//! `pg_dump --dbname=postgres://user:secret@host/db` would show the password to every
//! user of the machine (`/proc/<pid>/cmdline`). [`split_password`] removes it from the
//! string pg_dump gets and returns it separately, to be passed as `PGPASSWORD`. Everything
//! else (user, hosts, ports, database, every query parameter such as `sslmode`) reaches
//! pg_dump byte for byte as written.
//!
//! Both libpq forms are handled:
//! * URIs, `postgres[ql]://[user[:password]@][host][:port][,…][/dbname][?param=value&…]`:
//!   the password in the user info is percent-decoded (`p%40ss` → `p@ss`); a `password`
//!   query parameter is taken out too (libpq accepts one, and lets it win).
//! * `key=value` strings (`host=db password='it''s' dbname=app`), single-quoted values
//!   with `\'` and `\\` escapes included.
//!
//! No error message quotes any part of the string: it may hold the password.

use pipeline_plugin_sdk::PluginError;

/// A connection string split into what pg_dump may see and the password.
#[derive(PartialEq, Eq)]
pub struct Connection {
    /// The connection string without the password, for `--dbname=`.
    pub dbname: String,
    /// The password, decoded, for `PGPASSWORD`.
    pub password: Option<String>,
}

// Never print the password, even in a test failure.
impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("dbname", &self.dbname)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

fn invalid(message: &str) -> PluginError {
    PluginError::Config(format!("key `url`: {message}"))
}

/// Split `url` (a libpq URI, a `key=value` string, or a bare database name) into the
/// string pg_dump gets and the password.
pub fn split_password(url: &str) -> Result<Connection, PluginError> {
    for scheme in ["postgresql://", "postgres://"] {
        if let Some(rest) = url.strip_prefix(scheme) {
            return split_uri(scheme, rest);
        }
    }
    if url.contains('=') {
        return split_key_values(url);
    }
    // A bare database name: nothing to take out.
    Ok(Connection {
        dbname: url.to_owned(),
        password: None,
    })
}

fn split_uri(scheme: &str, rest: &str) -> Result<Connection, PluginError> {
    // libpq looks for the user info up to the first `/`.
    let span = &rest[..rest.find('/').unwrap_or(rest.len())];
    let Some(first_at) = span.find('@') else {
        // No user info. An `@` further on, before the query, most likely means a `/`
        // in the password that was not percent-encoded: libpq would take the text before
        // it as a host name and the password would end up on pg_dump's command line.
        let path = &rest[span.len()..];
        let path = &path[..path.find('?').unwrap_or(path.len())];
        if path.contains('@') {
            return Err(invalid(
                "the user info (before `@`) seems to contain a `/`; percent-encode it as %2F \
                 (and `@` as %40, `:` as %3A, `%` as %25)",
            ));
        }
        return split_query_password(scheme, rest, None);
    };

    // An `@` inside the password that was not percent-encoded: host names cannot hold an
    // `@`, so the last one before the host (and before any `?`) ends the user info.
    let mut at = first_at;
    for (i, c) in span.char_indices().skip_while(|&(i, _)| i <= first_at) {
        if c == '?' {
            break;
        }
        if c == '@' {
            at = i;
        }
    }
    let userinfo = &span[..at];
    let after = &rest[at + 1..];

    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, Some(password)),
        None => (userinfo, None),
    };
    let Some(password) = password else {
        // No password in the user info: leave that part exactly as written.
        return split_query_password(scheme, rest, None);
    };
    if user.contains('@') {
        return Err(invalid(
            "the user name contains an `@`; percent-encode it as %40",
        ));
    }
    let password = percent_decode(password, "the password")?;
    let without = if user.is_empty() {
        after.to_owned()
    } else {
        format!("{user}@{after}")
    };
    // libpq reads an empty password in the user info as no password.
    let password = (!password.is_empty()).then_some(password);
    split_query_password(scheme, &without, password)
}

/// Take a `password=` parameter out of the query of `rest` (the URI after its scheme);
/// it wins over `from_userinfo`, as in libpq.
fn split_query_password(
    scheme: &str,
    rest: &str,
    from_userinfo: Option<String>,
) -> Result<Connection, PluginError> {
    let Some((before, query)) = rest.split_once('?') else {
        return Ok(Connection {
            dbname: format!("{scheme}{rest}"),
            password: from_userinfo,
        });
    };
    let mut password = from_userinfo;
    let mut kept = Vec::new();
    for param in query.split('&') {
        let key = param.split_once('=').map_or(param, |(key, _)| key);
        if percent_decode(key, "a query parameter name")? == "password" {
            let value = param.split_once('=').map_or("", |(_, value)| value);
            password = Some(percent_decode(value, "the password parameter")?);
        } else {
            kept.push(param);
        }
    }
    let dbname = if kept.is_empty() {
        format!("{scheme}{before}")
    } else {
        format!("{scheme}{before}?{}", kept.join("&"))
    };
    Ok(Connection { dbname, password })
}

/// Decode `%XX` escapes as libpq does (no `+` for space; `%00` refused).
fn percent_decode(text: &str, what: &str) -> Result<String, PluginError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|pair| {
                std::str::from_utf8(pair)
                    .ok()
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
            });
            match hex {
                Some(0) => {
                    return Err(invalid(&format!(
                        "{what} contains %00, which libpq refuses"
                    )));
                }
                Some(byte) => {
                    out.push(byte);
                    i += 3;
                }
                None => {
                    return Err(invalid(&format!(
                        "{what} contains a `%` not followed by two hex digits; write a \
                         literal `%` as %25"
                    )));
                }
            }
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| invalid(&format!("{what} is not valid UTF-8 once percent-decoded")))
}

/// A `key=value` connection string: drop every `password` entry, keep the rest as
/// written (separated by single spaces).
fn split_key_values(text: &str) -> Result<Connection, PluginError> {
    let mut kept: Vec<&str> = Vec::new();
    let mut password = None;
    let mut chars = text.char_indices().peekable();
    loop {
        while chars.next_if(|&(_, c)| c.is_ascii_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key_end = text.len();
        while let Some(&(i, c)) = chars.peek() {
            if c == '=' || c.is_ascii_whitespace() {
                key_end = i;
                break;
            }
            chars.next();
        }
        let key = &text[start..key_end];
        while chars.next_if(|&(_, c)| c.is_ascii_whitespace()).is_some() {}
        if chars.next_if(|&(_, c)| c == '=').is_none() {
            return Err(invalid(&format!(
                "missing `=` after `{key}` in the connection string"
            )));
        }
        while chars.next_if(|&(_, c)| c.is_ascii_whitespace()).is_some() {}

        let mut value = String::new();
        let mut end = text.len();
        if chars.next_if(|&(_, c)| c == '\'').is_some() {
            let mut closed = false;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '\'' => {
                        end = i + 1;
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return Err(invalid(&format!(
                    "unterminated quoted value for `{key}` in the connection string"
                )));
            }
        } else {
            while let Some(&(i, c)) = chars.peek() {
                if c.is_ascii_whitespace() {
                    end = i;
                    break;
                }
                chars.next();
                if c == '\\' {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                } else {
                    value.push(c);
                }
            }
        }
        if key == "password" {
            password = Some(value);
        } else {
            kept.push(&text[start..end]);
        }
    }
    Ok(Connection {
        dbname: kept.join(" "),
        password: password.filter(|p| !p.is_empty()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, Option<String>) {
        let c = split_password(url).expect("valid");
        (c.dbname, c.password)
    }

    fn err(url: &str) -> String {
        match split_password(url) {
            Err(PluginError::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    fn pair(dbname: &str, password: Option<&str>) -> (String, Option<String>) {
        (dbname.to_owned(), password.map(str::to_owned))
    }

    #[test]
    fn uri_without_password_is_unchanged() {
        for url in [
            "postgres://localhost/app",
            "postgresql://app@db.example.com:5433/app?sslmode=require",
            "postgres://",
            "postgres://@localhost",
            "postgres://[::1]:5432/app",
            "postgres:///app?host=/var/run/postgresql",
        ] {
            assert_eq!(split(url), pair(url, None), "{url}");
        }
    }

    #[test]
    fn uri_with_password() {
        assert_eq!(
            split("postgres://app:secret@localhost:5432/app"),
            pair("postgres://app@localhost:5432/app", Some("secret"))
        );
        assert_eq!(
            split("postgresql://app:secret@db"),
            pair("postgresql://app@db", Some("secret"))
        );
    }

    #[test]
    fn reserved_characters_are_percent_decoded() {
        assert_eq!(
            split("postgres://app:p%40ss%3Aw%2Frd%25@db/app"),
            pair("postgres://app@db/app", Some("p@ss:w/rd%"))
        );
        // Unicode, and no `+`-for-space.
        assert_eq!(
            split("postgres://app:gr%C3%BC+n@db/app"),
            pair("postgres://app@db/app", Some("grü+n"))
        );
    }

    #[test]
    fn ipv6_host() {
        assert_eq!(
            split("postgres://app:pw@[::1]:5432/app"),
            pair("postgres://app@[::1]:5432/app", Some("pw"))
        );
        assert_eq!(
            split("postgres://app:pw@[2001:db8::1]/app?sslmode=verify-full"),
            pair(
                "postgres://app@[2001:db8::1]/app?sslmode=verify-full",
                Some("pw")
            )
        );
    }

    #[test]
    fn query_parameters_are_kept() {
        assert_eq!(
            split(
                "postgres://app:pw@db:5432/app?sslmode=require&application_name=pipe%20line&connect_timeout=10"
            ),
            pair(
                "postgres://app@db:5432/app?sslmode=require&application_name=pipe%20line&connect_timeout=10",
                Some("pw")
            )
        );
        // Several hosts.
        assert_eq!(
            split("postgres://app:pw@db1:5432,db2:5433/app?target_session_attrs=read-write"),
            pair(
                "postgres://app@db1:5432,db2:5433/app?target_session_attrs=read-write",
                Some("pw")
            )
        );
    }

    #[test]
    fn password_query_parameter_is_taken_out() {
        assert_eq!(
            split("postgres://app@db/app?sslmode=require&password=s%26cret&connect_timeout=5"),
            pair(
                "postgres://app@db/app?sslmode=require&connect_timeout=5",
                Some("s&cret")
            )
        );
        assert_eq!(
            split("postgres://db/app?password=x"),
            pair("postgres://db/app", Some("x"))
        );
        // As in libpq, the parameter wins over the user info.
        assert_eq!(
            split("postgres://app:one@db/app?password=two"),
            pair("postgres://app@db/app", Some("two"))
        );
    }

    #[test]
    fn encoded_at_in_user_name() {
        assert_eq!(
            split("postgres://me%40corp.com:pw@db/app"),
            pair("postgres://me%40corp.com@db/app", Some("pw"))
        );
        assert_eq!(
            split("postgres://me%40corp.com@db/app"),
            pair("postgres://me%40corp.com@db/app", None)
        );
    }

    #[test]
    fn unencoded_at_in_password_is_tolerated() {
        assert_eq!(
            split("postgres://app:p@ss@db/app"),
            pair("postgres://app@db/app", Some("p@ss"))
        );
        // An `@` in the query is not part of the user info.
        assert_eq!(
            split("postgres://app:pw@db?application_name=a@b"),
            pair("postgres://app@db?application_name=a@b", Some("pw"))
        );
    }

    #[test]
    fn empty_user_or_password() {
        assert_eq!(
            split("postgres://:pw@db/app"),
            pair("postgres://db/app", Some("pw"))
        );
        assert_eq!(
            split("postgres://app:@db/app"),
            pair("postgres://app@db/app", None)
        );
    }

    #[test]
    fn bad_uris_are_refused_without_quoting_them() {
        let m = err("postgres://app:pa/ss@db/app");
        assert!(m.contains("%2F"), "{m}");
        assert!(!m.contains("pa/ss"), "{m}");
        let m = err("postgres://app:50%off@db/app");
        assert!(m.contains("%25"), "{m}");
        assert!(!m.contains("50%off"), "{m}");
        assert!(err("postgres://app:a%00b@db").contains("%00"));
        assert!(err("postgres://app:%FF@db").contains("UTF-8"));
        assert!(err("postgres://a@b:pw@db/app").contains("user name"));
    }

    #[test]
    fn key_value_strings() {
        assert_eq!(
            split("host=db port=5432 dbname=app user=app password=secret sslmode=require"),
            pair(
                "host=db port=5432 dbname=app user=app sslmode=require",
                Some("secret")
            )
        );
        assert_eq!(
            split("host=db password = 'it\\'s a \\\\ secret'   dbname = 'my app'"),
            pair("host=db dbname = 'my app'", Some("it's a \\ secret"))
        );
        assert_eq!(
            split("password=p\\ w host=db"),
            pair("host=db", Some("p w"))
        );
        assert_eq!(
            split("host=db dbname=app"),
            pair("host=db dbname=app", None)
        );
        assert_eq!(split("  password=''  "), pair("", None));
        assert!(err("host=db password='open").contains("unterminated"));
        assert!(err("host db=x").contains("missing `=`"));
    }

    #[test]
    fn bare_database_name() {
        assert_eq!(split("app"), pair("app", None));
    }
}
