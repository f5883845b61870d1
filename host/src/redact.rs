//! Keeps secrets out of every line the host writes.
//!
//! Two layers: every value the configuration marks as secret (and the password inside any
//! URL of the configuration) is replaced wherever it appears, in its plain and
//! percent-encoded forms; and any `scheme://user:password@` in a line has its password
//! replaced even when nobody registered it (a plugin echoing a URL it built itself).

use std::borrow::Cow;

const MASK: &str = "***";

#[derive(Debug, Default, Clone)]
pub struct Redactor {
    /// Longest first, so that a secret containing another is replaced whole.
    secrets: Vec<String>,
}

impl Redactor {
    /// Registers a secret value, and the password of it if it is a URL or conninfo string.
    pub fn add(&mut self, secret: &str) {
        if let Some(pw) = url_password(secret) {
            self.insert(&pw);
            self.insert(&percent_decode(&pw));
        }
        if let Some(pw) = conninfo_password(secret) {
            self.insert(&pw);
        }
        self.insert(secret);
        self.insert(&percent_encode(secret));
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
            self.insert(s);
        }
    }

    fn insert(&mut self, s: &str) {
        if s.is_empty() || s == MASK || self.secrets.iter().any(|x| x == s) {
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
        match mask_url_passwords(&out) {
            Some(masked) => Cow::Owned(masked),
            None => out,
        }
    }
}

/// The raw (still percent-encoded) password of `scheme://user:password@host…`.
fn url_password(s: &str) -> Option<String> {
    let (_, rest) = s.split_once("://")?;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let at = authority.rfind('@')?;
    let (_, pw) = authority[..at].split_once(':')?;
    (!pw.is_empty()).then(|| pw.to_string())
}

/// The password of a `key=value` conninfo string (`password=secret` or `password='a b'`).
fn conninfo_password(s: &str) -> Option<String> {
    if s.contains("://") {
        return None;
    }
    let start = s.find("password")?;
    let rest = s[start + "password".len()..]
        .trim_start()
        .strip_prefix('=')?
        .trim_start();
    if let Some(quoted) = rest.strip_prefix('\'') {
        let mut pw = String::new();
        let mut chars = quoted.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => pw.extend(chars.next()),
                '\'' => break,
                c => pw.push(c),
            }
        }
        Some(pw)
    } else {
        let pw: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
        (!pw.is_empty()).then_some(pw)
    }
}

/// Replaces the password of every `scheme://user:password@` in `line`; None if there was none.
fn mask_url_passwords(line: &str) -> Option<String> {
    let mut out = String::new();
    let mut rest = line;
    let mut changed = false;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority
            .rfind('@')
            .and_then(|at| authority[..at].find(':').map(|colon| (colon, at)))
        {
            Some((colon, at)) if &authority[colon + 1..at] != MASK => {
                out.push_str(&authority[..=colon]);
                out.push_str(MASK);
                out.push_str(&authority[at..]);
                changed = true;
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
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

fn percent_encode(s: &str) -> String {
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
    fn url_password_is_masked_in_every_form() {
        let mut r = Redactor::default();
        r.add_url_password("postgresql://app:p%40ss%3Aw%2Frd@db:5432/app?sslmode=require");
        assert_eq!(r.redact("pw p@ss:w/rd here"), "pw *** here");
        assert_eq!(r.redact("pw p%40ss%3Aw%2Frd here"), "pw *** here");
    }

    #[test]
    fn unregistered_url_passwords_are_masked() {
        let r = Redactor::default();
        assert_eq!(
            r.redact("connecting to postgres://u:hunter2@h/db failed; see https://x.org/a"),
            "connecting to postgres://u:***@h/db failed; see https://x.org/a"
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
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("p%40ss%25%zz%4"), "p@ss%%zz%4");
    }
}
