//! Keeps secrets out of every line the host prints (logs, errors, reports, command output).
//!
//! Secrets are masked where they stand, not wherever their letters happen to occur:
//!
//! - in any line, whether or not anybody registered them: the password of every
//!   `scheme://user:password@` (plain or percent-encoded), a long token used alone as a URL's
//!   user (`https://TOKEN@host`), and the value of every `…password=`, `…secret=`,
//!   `…secret_access_key=`, `…token=` & co. (conninfo `password=…`, `PGPASSWORD=…`,
//!   `?password=` in a URL) and every such key's string value in JSON (`"token": "…"`);
//! - registered secrets (the configuration's URL passwords, the values of keys a plugin
//!   declares secret) also wherever they appear, in their plain, percent-encoded and
//!   JSON-escaped forms, but only when at least [`RAW_MIN_CHARS`] characters long.
//!
//! The threshold is the trade-off: masking every occurrence of a short secret mangles
//! unrelated text and reveals the secret by where the mask lands (a password `backup` turned
//! `writing backup-2026…` into `writing ***-2026…`). A short secret is therefore masked only
//! in the places above; one that a program prints bare, out of any such context, would show.
//! Use long passwords.

use std::borrow::Cow;

const MASK: &str = "***";

/// Registered secrets at least this many characters long are masked wherever they appear;
/// a coincidental match of 8 characters of a password in a log line is implausible.
pub const RAW_MIN_CHARS: usize = 8;

/// A URL user name without a password this long is taken for a token (`https://TOKEN@host`).
const TOKEN_USER_MIN_CHARS: usize = 20;

/// The keys (compared case-insensitively, as suffixes: `PGPASSWORD`, `sslpassword`,
/// `aws_secret_access_key`) whose `key=value` value is a secret.
const SECRET_KEYS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "secret_key",
    "secret_access_key",
    "token",
    "api_key",
    "private_key",
];

#[derive(Debug, Default, Clone)]
pub struct Redactor {
    /// Secrets long enough to mask wherever they appear; longest first, so that a secret
    /// containing another is replaced whole.
    secrets: Vec<String>,
}

impl Redactor {
    /// Registers a secret value. Of a URL or conninfo string with a password only the
    /// password is secret, so an error naming the host it could not reach stays useful;
    /// any other value (a key, a token, a URL whose path is the secret) is secret whole.
    pub fn add(&mut self, secret: &str) {
        if let Some(pw) = url_password(secret) {
            self.insert(&pw);
            self.insert(&percent_decode(&pw));
        } else if let Some(pw) = conninfo_password(secret) {
            self.insert(&pw);
        } else {
            self.insert(secret);
        }
    }

    /// Registers an opaque secret (a password, a token) whole, in every form a line may
    /// quote it in, without taking it for a URL or a conninfo string: a password that
    /// happens to read `a://b:c@d` is secret entire, not just its `c`.
    pub fn add_opaque(&mut self, secret: &str) {
        self.insert(secret);
    }

    /// Registers only the password of a URL found in a non-secret value.
    pub fn add_url_password(&mut self, value: &str) {
        if let Some(pw) = url_password(value) {
            self.insert(&pw);
            self.insert(&percent_decode(&pw));
        }
    }

    pub fn extend(&mut self, other: &Redactor) {
        for s in &other.secrets {
            self.insert_one(s);
        }
    }

    /// Registers `s` in every form a line may quote it in, each if long enough.
    fn insert(&mut self, s: &str) {
        self.insert_one(s);
        self.insert_one(&percent_encode(s));
        let json = serde_json::to_string(s).unwrap_or_default();
        if let Some(inner) = json.strip_prefix('"').and_then(|j| j.strip_suffix('"')) {
            self.insert_one(inner);
        }
    }

    fn insert_one(&mut self, s: &str) {
        if s.chars().count() < RAW_MIN_CHARS || self.secrets.iter().any(|x| x == s) {
            return;
        }
        self.secrets.push(s.to_string());
        self.secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }

    pub fn redact<'a>(&self, line: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(line);
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = Cow::Owned(out.replace(s.as_str(), MASK));
            }
        }
        if let Some(masked) = mask_url_passwords(&out) {
            out = Cow::Owned(masked);
        }
        if let Some(masked) = mask_keyed_secrets(&out) {
            out = Cow::Owned(masked);
        }
        if let Some(masked) = mask_json_secrets(&out) {
            out = Cow::Owned(masked);
        }
        out
    }
}

/// The raw (still percent-encoded) password of `scheme://user:password@host…`.
fn url_password(s: &str) -> Option<String> {
    let (_, rest) = s.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (userinfo, _) = authority.rsplit_once('@')?;
    let (_, pw) = userinfo.split_once(':')?;
    (!pw.is_empty()).then(|| pw.to_string())
}

/// The password of a `key=value` conninfo string (`password=secret` or `password='a b'`).
fn conninfo_password(s: &str) -> Option<String> {
    if s.contains("://") {
        return None;
    }
    let (_, after) = s.split_once("password")?;
    let rest = after.trim_start().strip_prefix('=')?.trim_start();
    let (pw, _) = conninfo_value(rest);
    (!pw.is_empty()).then_some(pw)
}

/// A conninfo value at the start of `rest`: `'quoted \' value'` or up to whitespace.
/// Returns the value and how many bytes of `rest` it took.
fn conninfo_value(rest: &str) -> (String, usize) {
    if let Some(quoted) = rest.strip_prefix('\'') {
        let mut pw = String::new();
        let mut chars = quoted.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => pw.extend(chars.next().map(|(_, c)| c)),
                '\'' => return (pw, i + 2),
                c => pw.push(c),
            }
        }
        (pw, rest.len())
    } else {
        let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        (rest[..end].to_string(), end)
    }
}

/// Replaces the password of every `scheme://user:password@` in `line` (and a long token
/// standing alone as the user); None if there was none.
fn mask_url_passwords(line: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = line;
    let mut changed = false;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '`' | '<' | '>') || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let masked = match userinfo.split_once(':') {
                    Some((user, pw)) if pw != MASK => Some(format!("{user}:{MASK}")),
                    None if userinfo.chars().count() >= TOKEN_USER_MIN_CHARS => {
                        Some(MASK.to_string())
                    }
                    _ => None,
                };
                match masked {
                    Some(m) => {
                        out.push_str(&m);
                        changed = true;
                    }
                    None => out.push_str(userinfo),
                }
                out.push('@');
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

/// Replaces the value of every `…password=value` (and the other [`SECRET_KEYS`]) in
/// `line`; None if there was none.
fn mask_keyed_secrets(line: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = line;
    let mut changed = false;
    while let Some(eq) = rest.find('=') {
        let (before, after) = rest.split_at(eq);
        let key_start = before
            .trim_end()
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(0, |i| i + 1);
        let key = &before.trim_end()[key_start..];
        let after = &after[1..];
        out.push_str(before);
        out.push('=');
        if !is_secret_key(key) {
            rest = after;
            continue;
        }
        let value_start = after.len() - after.trim_start().len();
        out.push_str(&after[..value_start]);
        let value = &after[value_start..];
        // In a URL query (`?password=…&…`) a value ends at `&` or `#`; in conninfo or an
        // environment listing, at whitespace (or a closing quote).
        let prefix = &before.trim_end()[..key_start];
        let in_query = prefix.ends_with(['?', '&']);
        let (taken, len) = if value.starts_with('\'') {
            let (_, len) = conninfo_value(value);
            (format!("'{MASK}'"), len)
        } else {
            let end = value
                .find(|c: char| {
                    c.is_whitespace()
                        || matches!(c, '"' | '\'' | '`' | ',' | ';' | ')')
                        || (in_query && matches!(c, '&' | '#'))
                })
                .unwrap_or(value.len());
            (MASK.to_string(), end)
        };
        let already = matches!(&value[..len], "***" | "'***'");
        if len > 0 && !already {
            out.push_str(&taken);
            changed = true;
        } else {
            out.push_str(&value[..len]);
        }
        rest = &value[len..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    !key.is_empty() && SECRET_KEYS.iter().any(|k| key.ends_with(k))
}

/// Replaces the string value of every `"…password": "value"` (and the other
/// [`SECRET_KEYS`]) in `line`, as a configuration echoed in JSON shows it; None if none.
fn mask_json_secrets(line: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = line;
    let mut changed = false;
    while let Some(colon) = rest.find("\":") {
        let (before, after) = rest.split_at(colon + 1);
        let key = before[..before.len() - 1]
            .rsplit_once('"')
            .map_or("", |(_, k)| k);
        out.push_str(before);
        let after = &after[1..];
        out.push(':');
        let value_start = after.len() - after.trim_start().len();
        let value = &after[value_start..];
        let Some(body) = value.strip_prefix('"').filter(|_| is_secret_key(key)) else {
            rest = after;
            continue;
        };
        // The closing quote: the first one not escaped by a backslash.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in body.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.unwrap_or(body.len());
        out.push_str(&after[..value_start]);
        out.push('"');
        if &body[..end] != MASK {
            changed = true;
        }
        out.push_str(MASK);
        rest = &body[end..];
    }
    out.push_str(rest);
    changed.then_some(out)
}

pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_opaque_secret_that_looks_like_a_url_is_masked_whole() {
        let pw = "s3cret://user:partof@the-password";
        let mut url = Redactor::default();
        url.add(pw);
        assert_ne!(url.redact(pw), MASK, "add() keeps only the URL's password");
        let mut opaque = Redactor::default();
        opaque.add_opaque(pw);
        assert_eq!(opaque.redact(&format!("pw {pw} here")), "pw *** here");
        assert_eq!(
            opaque.redact(&format!("pw {} here", percent_encode(pw))),
            "pw *** here"
        );
    }

    #[test]
    fn url_password_is_masked_in_every_form() {
        let mut r = Redactor::default();
        r.add_url_password("postgresql://app:p%40ss%3Aw%2Frd@db:5432/app?sslmode=require");
        assert_eq!(r.redact("pw p@ss:w/rd here"), "pw *** here");
        assert_eq!(r.redact("pw p%40ss%3Aw%2Frd here"), "pw *** here");
        assert_eq!(r.redact(r#"{"e":"p@ss:w/rd"}"#), r#"{"e":"***"}"#);
    }

    #[test]
    fn a_short_password_is_masked_where_it_stands_not_everywhere() {
        let mut r = Redactor::default();
        r.add("postgresql://app:backup@db:5432/app");
        r.add("host=db password=backup");
        assert_eq!(
            r.redact("writing backup-2026-01-01T00-00-00-000Z.sql.zst"),
            "writing backup-2026-01-01T00-00-00-000Z.sql.zst"
        );
        assert_eq!(
            r.redact("cannot reach postgresql://app:backup@db:5432/app"),
            "cannot reach postgresql://app:***@db:5432/app"
        );
        assert_eq!(
            r.redact("dsn host=db password=backup user=app"),
            "dsn host=db password=*** user=app"
        );
        assert_eq!(
            r.redact("env PGPASSWORD=backup pg_dump"),
            "env PGPASSWORD=*** pg_dump"
        );
        assert_eq!(
            r.redact("postgresql://db/app?user=app&password=backup&sslmode=disable"),
            "postgresql://db/app?user=app&password=***&sslmode=disable"
        );
        assert_eq!(r.redact("password = 'a b\\' c' x"), "password = '***' x");
        assert_eq!(
            r.redact(r#"{"bucket":"b","secret_access_key": "ab\"c","session_token":"t"}"#),
            r#"{"bucket":"b","secret_access_key": "***","session_token":"***"}"#
        );
    }

    #[test]
    fn unregistered_url_passwords_and_tokens_are_masked() {
        let r = Redactor::default();
        assert_eq!(
            r.redact("connecting to postgres://u:hunter2@h/db failed; see https://x.org/a"),
            "connecting to postgres://u:***@h/db failed; see https://x.org/a"
        );
        assert_eq!(
            r.redact("push to 'https://ghp_abcdefghijklmnopqrstuvwxyz@github.com/a/b' failed"),
            "push to 'https://***@github.com/a/b' failed"
        );
        assert_eq!(
            r.redact("postgresql://app@db/x"),
            "postgresql://app@db/x",
            "a user name alone is not a secret"
        );
        assert_eq!(r.redact("no url here"), "no url here");
    }

    #[test]
    fn secrets_and_conninfo() {
        let mut r = Redactor::default();
        r.add("host=db password='s3 cr\\'et' user=x");
        assert_eq!(r.redact("error: s3 cr'et"), "error: ***");
        r.add("AKIAXYZSECRET/+");
        assert_eq!(r.redact("key AKIAXYZSECRET%2F%2B"), "key ***");
        assert_eq!(r.redact("key AKIAXYZSECRET/+"), "key ***");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("p%40ss%25%zz%4"), "p@ss%%zz%4");
    }

    /// Odd input never panics (byte-indexing a string off a char boundary would).
    #[test]
    fn odd_lines_never_panic() {
        let mut r = Redactor::default();
        let long = "é".repeat(5000);
        let odd = [
            "",
            "=",
            "==",
            "password=",
            "password='",
            "password='\\",
            "://",
            "://@",
            "x://:@",
            "é://é:é@é",
            "😀password=😀 token=é&x",
            "\":",
            "\"password\":",
            "\"password\": \"",
            "\"password\": \"\\",
            "é\"tokén\":\"é",
            "?password=&",
            "%",
            "%é%",
            long.as_str(),
        ];
        for s in odd {
            r.add(s);
            r.add_url_password(s);
            let _ = r.redact(s);
            let _ = percent_decode(s);
            let _ = conninfo_password(s);
        }
    }
}
