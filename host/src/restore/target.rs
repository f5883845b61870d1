//! Which database a libpq connection string names, for the guard that keeps `restore` from
//! replacing the pipeline's own database by accident.
//!
//! Only the parts that identify a database are read (hosts, `hostaddr`, ports, `dbname`,
//! `user`, `service`), from a URI (`postgresql://user:pw@host:port/db?host=/run/pg`) or a
//! `key=value` string, the way libpq reads them; every other key is left to libpq. The
//! URI's user info is split at its last `@`, as the postgres plugin does before psql sees
//! it. No error quotes the string: it may hold a password.

use std::net::IpAddr;

/// The default port of libpq.
const DEFAULT_PORT: u16 = 5432;

/// What a connection string says about where it connects.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host names, addresses or socket directories as written (empty: libpq's default).
    hosts: Vec<String>,
    /// `hostaddr`, which libpq connects to instead of resolving `host`.
    hostaddrs: Vec<String>,
    ports: Vec<String>,
    dbname: Option<String>,
    user: Option<String>,
    /// A `service` entry: the real parameters live in a service file this code does not read.
    service: bool,
    /// A password was written in the string.
    pub has_password: bool,
}

/// Why a string is not a connection string (never quotes it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotConninfo(pub String);

/// The server and database a target reaches: one entry per host it may try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// (server, port): `None` for this machine (sockets, loopback, its own host name),
    /// else the host name in lower case or the address.
    servers: Vec<(Option<String>, u16)>,
    pub dbname: String,
}

impl Target {
    /// Parses a libpq URI or `key=value` string. Anything else (a bare word, which psql
    /// would take for a database on the default socket) is refused.
    pub fn parse(text: &str) -> Result<Target, NotConninfo> {
        let trimmed = text.trim();
        for scheme in ["postgresql://", "postgres://"] {
            if let Some(rest) = trimmed.strip_prefix(scheme) {
                return parse_uri(rest);
            }
        }
        if trimmed.contains('=') {
            let mut t = Target::default();
            parse_key_values(trimmed, &mut t)?;
            return Ok(t);
        }
        Err(NotConninfo(
            "not a PostgreSQL connection string: write a URI such as \
             postgresql://user@host:5432/dbname or key=value pairs such as \
             `host=db port=5432 dbname=app user=app`"
                .into(),
        ))
    }

    /// Like [`Target::parse`], for the source's `url`, which may also be a bare database
    /// name (the postgres plugin hands it to pg_dump, which connects to that database on
    /// the default socket).
    pub fn parse_source(text: &str) -> Result<Target, NotConninfo> {
        Target::parse(text).or_else(|e| {
            let word = text.trim();
            if word.is_empty() {
                return Err(e);
            }
            Ok(Target {
                dbname: Some(word.to_string()),
                ..Target::default()
            })
        })
    }

    /// The servers and database, with libpq's defaults filled in; `None` when a `service`
    /// entry hides them.
    pub fn identity(&self) -> Option<Identity> {
        if self.service {
            return None;
        }
        let user = self.user.clone().unwrap_or_else(os_user);
        let dbname = self.dbname.clone().unwrap_or(user);
        // libpq pairs hosts, hostaddrs and ports by position; one port serves every host.
        let n = self.hosts.len().max(self.hostaddrs.len()).max(1);
        let mut servers = Vec::with_capacity(n);
        for i in 0..n {
            let host = self
                .hostaddrs
                .get(i)
                .filter(|a| !a.is_empty())
                .or_else(|| self.hosts.get(i))
                .map(String::as_str)
                .unwrap_or("");
            let port = match self.ports.len() {
                0 => "",
                1 => self.ports[0].as_str(),
                _ => self.ports.get(i).map(String::as_str).unwrap_or(""),
            };
            let port = port.trim().parse().unwrap_or(DEFAULT_PORT);
            servers.push((server(host), port));
        }
        Some(Identity { servers, dbname })
    }
}

impl Identity {
    /// Whether both name the same database on a server they share.
    pub fn same_database(&self, other: &Identity) -> bool {
        self.dbname == other.dbname && self.servers.iter().any(|s| other.servers.contains(s))
    }

    /// `database app on this machine, port 5432` — no user, no password.
    pub fn describe(&self) -> String {
        let servers: Vec<String> = self
            .servers
            .iter()
            .map(|(host, port)| match host {
                None => format!("this machine, port {port}"),
                Some(h) => format!("{h}, port {port}"),
            })
            .collect();
        format!("database `{}` on {}", self.dbname, servers.join(" or "))
    }
}

/// `None` for this machine: a socket directory, the empty host (libpq's default socket),
/// `localhost`, a loopback address, or the machine's own name.
fn server(host: &str) -> Option<String> {
    let host = host.trim().trim_end_matches('.');
    if host.is_empty() || host.starts_with('/') || host.starts_with('@') {
        return None;
    }
    let lower = host.to_ascii_lowercase();
    let bare = lower.trim_start_matches('[').trim_end_matches(']');
    if bare == "localhost" || bare.ends_with(".localhost") {
        return None;
    }
    if let Ok(ip) = bare.parse::<IpAddr>() {
        let local = match ip {
            IpAddr::V4(v4) => v4.is_loopback() || v4.is_unspecified(),
            IpAddr::V6(v6) => {
                v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
            }
        };
        return if local { None } else { Some(ip.to_string()) };
    }
    if own_host_names().iter().any(|n| *n == bare) {
        return None;
    }
    Some(bare.to_string())
}

/// This machine's host name, and its short form.
fn own_host_names() -> Vec<String> {
    let Some(name) = crate::machine::host_name() else {
        return Vec::new();
    };
    let name = name.to_ascii_lowercase();
    let short = name.split('.').next().unwrap_or_default().to_string();
    vec![name, short]
}

/// The user libpq defaults to: the name of the effective user of this process (the
/// programs a plugin starts run as it, without PGUSER).
fn os_user() -> String {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid out-parameter for getpwuid_r.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r fills pwd with pointers into buf, which outlives their use here.
    let rc = unsafe {
        libc::getpwuid_r(
            libc::geteuid(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() || pwd.pw_name.is_null() {
        return String::new();
    }
    // SAFETY: pw_name is a NUL-terminated string inside buf.
    unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }
        .to_string_lossy()
        .into_owned()
}

fn set(t: &mut Target, key: &str, value: String) -> Result<(), NotConninfo> {
    let list = |v: &str| v.split(',').map(str::to_string).collect::<Vec<_>>();
    match key {
        "host" => t.hosts = list(&value),
        "hostaddr" => t.hostaddrs = list(&value),
        "port" => t.ports = list(&value),
        "user" => t.user = Some(value).filter(|v| !v.is_empty()),
        "password" => t.has_password |= !value.is_empty(),
        "service" => t.service = true,
        "dbname" => {
            // libpq expands a dbname that is itself a connection string.
            let trimmed = value.trim();
            if trimmed.starts_with("postgresql://") || trimmed.starts_with("postgres://") {
                let inner = Target::parse(trimmed)?;
                merge(t, inner);
            } else if trimmed.contains('=') {
                let mut inner = Target::default();
                parse_key_values(trimmed, &mut inner)?;
                merge(t, inner);
            } else {
                t.dbname = Some(value).filter(|v| !v.is_empty());
            }
        }
        _ => {}
    }
    Ok(())
}

/// What an expanded `dbname` sets overrides what came before it.
fn merge(t: &mut Target, inner: Target) {
    if !inner.hosts.is_empty() {
        t.hosts = inner.hosts;
    }
    if !inner.hostaddrs.is_empty() {
        t.hostaddrs = inner.hostaddrs;
    }
    if !inner.ports.is_empty() {
        t.ports = inner.ports;
    }
    t.dbname = inner.dbname.or(t.dbname.take());
    t.user = inner.user.or(t.user.take());
    t.service |= inner.service;
    t.has_password |= inner.has_password;
}

fn parse_uri(rest: &str) -> Result<Target, NotConninfo> {
    let mut t = Target::default();
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let slash = before_query.find('/').unwrap_or(before_query.len());
    let (authority, path) = before_query.split_at(slash);
    // The last `@` ends the user info (an unencoded `@` in a password is tolerated).
    let hostlist = match authority.rfind('@') {
        Some(at) => {
            let userinfo = &authority[..at];
            let (user, password) = match userinfo.split_once(':') {
                Some((u, p)) => (u, Some(p)),
                None => (userinfo, None),
            };
            let user = decode(user, "the user name")?;
            t.user = Some(user).filter(|u| !u.is_empty());
            if let Some(p) = password {
                t.has_password = !decode(p, "the password")?.is_empty();
            }
            &authority[at + 1..]
        }
        None => authority,
    };
    if !hostlist.is_empty() {
        for spec in hostlist.split(',') {
            let (host, port) = if let Some(inner) = spec.strip_prefix('[') {
                let Some((host, after)) = inner.split_once(']') else {
                    return Err(NotConninfo(
                        "an IPv6 address in the URI lacks its closing `]`".into(),
                    ));
                };
                (host, after.strip_prefix(':'))
            } else {
                match spec.split_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (spec, None),
                }
            };
            t.hosts.push(decode(host, "a host name")?);
            t.ports.push(decode(port.unwrap_or(""), "a port")?);
        }
        if t.ports.iter().all(String::is_empty) {
            t.ports.clear();
        }
    }
    if let Some(db) = path.strip_prefix('/') {
        t.dbname = Some(decode(db, "the database name")?).filter(|d| !d.is_empty());
    }
    if let Some(query) = query {
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            let key = decode(key, "a query parameter name")?;
            let value = decode(value, "a query parameter")?;
            if key == "dbname" {
                // In a URI's query, dbname is a name, not a connection string to expand.
                t.dbname = Some(value).filter(|v| !v.is_empty());
            } else {
                set(&mut t, &key, value)?;
            }
        }
    }
    Ok(t)
}

fn decode(text: &str, what: &str) -> Result<String, NotConninfo> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let byte = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    NotConninfo(format!(
                        "{what} contains a `%` not followed by two hex digits (write `%` as %25)"
                    ))
                })?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| NotConninfo(format!("{what} is not UTF-8 once percent-decoded")))
}

/// `key = value` pairs, values optionally single-quoted with `\'` and `\\` escapes.
fn parse_key_values(text: &str, t: &mut Target) -> Result<(), NotConninfo> {
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(());
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_ascii_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        if chars.next_if(|c| *c == '=').is_none() {
            return Err(NotConninfo(format!(
                "missing `=` after `{key}` in the connection string"
            )));
        }
        while chars.next_if(|c| c.is_ascii_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|c| *c == '\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.extend(chars.next()),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(NotConninfo(format!(
                            "unterminated quoted value for `{key}` in the connection string"
                        )));
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_ascii_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        set(t, &key, value)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> Identity {
        Target::parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .identity()
            .expect("no service")
    }

    fn same(a: &str, b: &str) -> bool {
        id(a).same_database(&id(b))
    }

    #[test]
    fn spellings_of_one_local_database_are_the_same() {
        let base = "postgresql://app:pw@127.0.0.1:5432/app?sslmode=disable";
        for other in [
            "postgresql://app:pw@127.0.0.1:5432/app",
            "postgres://localhost/app",
            "postgres://LOCALHOST:5432/app",
            "postgresql://other@[::1]/app",
            "postgresql:///app",
            "postgresql:///app?host=/var/run/postgresql",
            "postgresql://%2Frun%2Fpostgresql/app",
            "postgresql://db.example.com,localhost/app",
            "host=localhost dbname=app",
            "host=127.0.0.1 port=5432 dbname='app' user=x password=y",
            "dbname=app",
            "host=/tmp port=5432 dbname=app",
            "dbname=postgresql://localhost/app",
            "postgresql://remote/app?host=localhost",
            "postgresql://remote/app?hostaddr=127.0.0.1",
        ] {
            assert!(same(base, other), "{other}");
        }
    }

    #[test]
    fn other_databases_servers_or_ports_differ() {
        let base = "postgresql://app:pw@localhost:5432/app";
        for other in [
            "postgresql://localhost/restored",
            "postgresql://localhost:5433/app",
            "postgresql://db.example.com/app",
            "host=localhost port=6543 dbname=app",
            "postgresql://localhost/App",
            "postgresql:///app?port=5433",
        ] {
            assert!(!same(base, other), "{other}");
        }
        assert!(same(
            "postgresql://DB.example.com./app",
            "host=db.example.com dbname=app"
        ));
    }

    #[test]
    fn the_database_defaults_to_the_user() {
        assert!(same(
            "postgresql://app@localhost",
            "host=localhost dbname=app"
        ));
        assert!(same("postgresql://localhost", "postgresql://localhost"));
        let me = os_user();
        assert!(same(
            "postgresql://localhost",
            &format!("postgresql://localhost/{me}")
        ));
    }

    #[test]
    fn ports_pair_with_hosts() {
        let i = id("host=a,b port=1,2 dbname=x");
        assert_eq!(i.servers, [(Some("a".into()), 1), (Some("b".into()), 2)]);
        let i = id("postgresql://a:1,b/x");
        assert_eq!(i.servers, [(Some("a".into()), 1), (Some("b".into()), 5432)]);
    }

    #[test]
    fn passwords_are_noticed_and_never_quoted() {
        assert!(
            Target::parse("postgresql://a:secret@h/x")
                .unwrap()
                .has_password
        );
        assert!(
            Target::parse("postgresql://a:p@ss@h/x")
                .unwrap()
                .has_password
        );
        assert!(
            Target::parse("postgresql://a@h/x?password=s")
                .unwrap()
                .has_password
        );
        assert!(Target::parse("host=h password='s p'").unwrap().has_password);
        assert!(!Target::parse("postgresql://a@h/x").unwrap().has_password);
        assert!(!Target::parse("postgresql://a:@h/x").unwrap().has_password);
        let e = Target::parse("postgresql://a:50%zz@h/x").unwrap_err().0;
        assert!(!e.contains("50%zz"), "{e}");
        let e = Target::parse("host=h password='secret").unwrap_err().0;
        assert!(!e.contains("secret'"), "{e}");
    }

    #[test]
    fn bare_words_are_not_connection_strings() {
        for s in ["app", "", "  ", "localhost:5432", "/var/run/postgresql"] {
            let e = Target::parse(s).unwrap_err().0;
            assert!(e.contains("not a PostgreSQL connection string"), "{s}: {e}");
        }
    }

    #[test]
    fn a_bare_source_is_a_database_on_the_default_socket() {
        let source = Target::parse_source("app").unwrap().identity().unwrap();
        assert!(source.same_database(&id("postgresql:///app")));
        assert!(source.same_database(&id("host=localhost dbname=app")));
        assert!(!source.same_database(&id("host=localhost dbname=other")));
        assert!(Target::parse_source("  ").is_err());
    }

    #[test]
    fn a_service_hides_the_identity() {
        assert!(Target::parse("service=prod").unwrap().identity().is_none());
        assert!(
            Target::parse("postgresql:///?service=prod")
                .unwrap()
                .identity()
                .is_none()
        );
    }
}
