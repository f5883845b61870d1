//! Backup file names: a template such as `backup-{time}` plus the extensions the stages add.
//!
//! The time is UTC ISO-8601 with millisecond precision, `:` and `.` replaced by `-` so the name
//! is valid on every filesystem and sorts chronologically: `2025-12-10T12-00-00-000Z`.
//! Retention relies on [`NameTemplate::matches`] to recognise its own files, so the format is
//! parsed strictly: anything not produced by [`NameTemplate::render`] is left alone.

use jiff::Timestamp;
use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;

/// Length of a formatted time, `YYYY-MM-DDTHH-MM-SS-mmmZ`.
const TIME_LEN: usize = 24;

/// The placeholder a template must contain exactly once.
const TIME_PLACEHOLDER: &str = "{time}";

/// Longest file name most filesystems accept (NAME_MAX); a longer template could never be written.
const MAX_NAME_LEN: usize = 255;

/// Formats `t` as `YYYY-MM-DDTHH-MM-SS-mmmZ` in UTC, truncating to milliseconds.
///
/// Years before 0000 have no 24-character form; they format with a sign that [`parse_time`]
/// rejects, so such names are never mistaken for (and deleted as) backups.
pub fn format_time(t: Timestamp) -> String {
    let dt = TimeZone::UTC.to_datetime(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}-{:02}-{:02}-{:03}Z",
        dt.year(),
        dt.month(),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.millisecond()
    )
}

/// Inverse of [`format_time`]; `None` unless `s` is exactly in that form and a real UTC time.
pub fn parse_time(s: &str) -> Option<Timestamp> {
    let b = s.as_bytes();
    if b.len() != TIME_LEN {
        return None;
    }
    // Separators at fixed positions; every other byte must be an ASCII digit.
    const SEPARATORS: [(usize, u8); 7] = [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b'-'),
        (16, b'-'),
        (19, b'-'),
        (23, b'Z'),
    ];
    if SEPARATORS.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let date = Date::new(digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?).ok()?;
    let millis: i32 = digits(&b[20..23])?;
    let time = Time::new(
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
        millis * 1_000_000,
    )
    .ok()?;
    TimeZone::UTC
        .to_timestamp(DateTime::from_parts(date, time))
        .ok()
}

/// Parses a fixed-width run of ASCII digits (no sign, unlike `str::parse`).
fn digits<T: TryFrom<u32>>(b: &[u8]) -> Option<T> {
    let mut n: u32 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u32::from(c - b'0');
    }
    T::try_from(n).ok()
}

/// A parsed name template: the literal text around `{time}`, extensions folded into the suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameTemplate {
    prefix: String,
    suffix: String,
}

/// Why a template or extension was rejected, worded for the person editing the config.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct TemplateError(pub String);

impl NameTemplate {
    /// `template` must contain `{time}` exactly once; `extensions` are appended in order, each
    /// after a '.'. Only `[A-Za-z0-9._-]` is allowed so names are portable and contain no path
    /// separators, and a leading '.' is refused because hidden names mark partial files.
    pub fn parse(template: &str, extensions: &[&str]) -> Result<Self, TemplateError> {
        let count = template.matches(TIME_PLACEHOLDER).count();
        if count != 1 {
            let has = if count == 0 {
                "none".to_string()
            } else {
                count.to_string()
            };
            return Err(TemplateError(format!(
                "name template {template:?} must contain {TIME_PLACEHOLDER} exactly once \
                 (it has {has}), e.g. \"backup-{TIME_PLACEHOLDER}\""
            )));
        }
        if template.starts_with('.') {
            return Err(TemplateError(format!(
                "name template {template:?} must not start with '.': \
                 hidden names are reserved for partial files"
            )));
        }
        let Some((prefix, rest)) = template.split_once(TIME_PLACEHOLDER) else {
            // Unreachable after the count check, but an error beats a panic.
            return Err(TemplateError(format!(
                "name template {template:?} must contain {TIME_PLACEHOLDER}"
            )));
        };
        if let Some(c) = prefix
            .chars()
            .chain(rest.chars())
            .find(|&c| !is_name_char(c))
        {
            return Err(TemplateError(format!(
                "name template {template:?} contains {c:?}; besides {TIME_PLACEHOLDER} only \
                 letters, digits, '.', '_' and '-' are allowed"
            )));
        }
        let mut suffix = rest.to_string();
        for ext in extensions {
            if ext.is_empty() {
                return Err(TemplateError(
                    "empty file extension; extensions must be non-empty and use only \
                     letters, digits, '_' and '-'"
                        .to_string(),
                ));
            }
            if let Some(c) = ext.chars().find(|&c| c == '.' || !is_name_char(c)) {
                return Err(TemplateError(format!(
                    "file extension {ext:?} contains {c:?}; extensions use only \
                     letters, digits, '_' and '-'"
                )));
            }
            suffix.push('.');
            suffix.push_str(ext);
        }
        let len = prefix.len() + TIME_LEN + suffix.len();
        if len > MAX_NAME_LEN {
            return Err(TemplateError(format!(
                "name template {template:?} with its extensions gives {len}-byte file names; \
                 at most {MAX_NAME_LEN} are allowed"
            )));
        }
        Ok(Self {
            prefix: prefix.to_string(),
            suffix,
        })
    }

    /// The file name for a backup made at `t`.
    pub fn render(&self, t: Timestamp) -> String {
        format!("{}{}{}", self.prefix, format_time(t), self.suffix)
    }

    /// `Some(time)` only if `name` is exactly prefix + a valid time + suffix, so retention never
    /// touches files this pipeline did not make (other names, `.sha256` manifests, partial files).
    pub fn matches(&self, name: &str) -> Option<Timestamp> {
        let time = name
            .strip_prefix(self.prefix.as_str())?
            .strip_suffix(self.suffix.as_str())?;
        parse_time(time)
    }

    /// The literal part before `{time}`, to narrow a directory or bucket listing.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Everything after the time, extensions included.
    pub fn suffix(&self) -> &str {
        &self.suffix
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "backup-2025-12-10T12-00-00-000Z.sql.zst";

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn template() -> NameTemplate {
        NameTemplate::parse("backup-{time}", &["sql", "zst"]).unwrap()
    }

    #[test]
    fn format_is_utc_24_chars_and_truncates_to_millis() {
        let t = ts("2025-12-10T13:04:05.678999999+01:00");
        let s = format_time(t);
        assert_eq!(s, "2025-12-10T12-04-05-678Z");
        assert_eq!(s.len(), TIME_LEN);
    }

    #[test]
    fn format_parse_round_trip() {
        for s in [
            "2025-12-10T12:00:00Z",
            "1970-01-01T00:00:00Z",
            "2024-02-29T23:59:59.999Z",
            "0000-01-01T00:00:00Z",
            "9999-12-30T21:59:59.999Z",
            "1969-12-31T23:59:59.5Z",
        ] {
            let t = ts(s);
            let f = format_time(t);
            assert_eq!(parse_time(&f), Some(t), "{s} -> {f}");
            assert_eq!(format_time(parse_time(&f).unwrap()), f);
        }
    }

    #[test]
    fn parse_rejects_near_misses() {
        for s in [
            "2025-12-10T12-00-00-000",   // missing Z
            "2025-12-10T12-00-00-000z",  // lower-case z
            "2025-13-10T12-00-00-000Z",  // bad month
            "2025-00-10T12-00-00-000Z",  // month zero
            "2025-02-30T12-00-00-000Z",  // no such day
            "2025-12-10T24-00-00-000Z",  // hour 24
            "2025-12-10T12-00-60-000Z",  // leap second
            "2025-12-10T12:00:00.000Z",  // unescaped separators
            "2025-12-10T12-00-00-00Z",   // two-digit millis
            "2025-12-10T12-00-00-0000Z", // four-digit millis
            "+025-12-10T12-00-00-000Z",  // sign where a digit belongs
            "2025-1a-10T12-00-00-000Z",
            "2025-12-10 12-00-00-000Z",
            "9999-12-31T23-59-59-999Z", // beyond jiff's Timestamp range
            "",
        ] {
            assert_eq!(parse_time(s), None, "{s:?}");
        }
    }

    #[test]
    fn negative_year_is_not_parsed_back() {
        let t = ts("-000001-06-01T00:00:00Z");
        assert_eq!(parse_time(&format_time(t)), None);
    }

    #[test]
    fn renders_and_matches_the_example() {
        let tpl = template();
        let t = ts("2025-12-10T12:00:00Z");
        assert_eq!(tpl.render(t), EXAMPLE);
        assert_eq!(tpl.matches(EXAMPLE), Some(t));
        assert_eq!(tpl.prefix(), "backup-");
        assert_eq!(tpl.suffix(), ".sql.zst");
    }

    #[test]
    fn matches_rejects_near_misses() {
        let tpl = template();
        for name in [
            "backup-2025-12-10T12-00-00-000Z.sql.zst.sha256",
            ".backup-2025-12-10T12-00-00-000Z.sql.zst.partial",
            ".backup-2025-12-10T12-00-00-000Z.sql.zst",
            "other-2025-12-10T12-00-00-000Z.sql.zst",
            "backup-2025-13-10T12-00-00-000Z.sql.zst",
            "backup-2025-12-10T12-00-00-000.sql.zst",
            "backup-2025-12-10T12-00-00-000Z.sql",
            "backup-2025-12-10T12-00-00-000Z.sql.gz",
            "backup-x2025-12-10T12-00-00-000Z.sql.zst",
            "backup-.sql.zst",
            "backup-",
            "",
        ] {
            assert_eq!(tpl.matches(name), None, "{name:?}");
        }
    }

    #[test]
    fn template_text_after_time_and_no_extensions() {
        let t = ts("2025-12-10T12:00:00Z");
        let tpl = NameTemplate::parse("{time}_db.dump", &[]).unwrap();
        assert_eq!(tpl.prefix(), "");
        assert_eq!(tpl.suffix(), "_db.dump");
        assert_eq!(tpl.render(t), "2025-12-10T12-00-00-000Z_db.dump");
        assert_eq!(tpl.matches(&tpl.render(t)), Some(t));
    }

    #[test]
    fn template_errors() {
        let err = |tpl: &str, exts: &[&str]| NameTemplate::parse(tpl, exts).unwrap_err().0;
        assert!(err("backup", &[]).contains("exactly once (it has none)"));
        assert!(err("{time}-{time}", &[]).contains("exactly once (it has 2)"));
        assert!(err(".backup-{time}", &[]).contains("must not start with '.'"));
        assert!(err("backup/{time}", &[]).contains("'/'"));
        assert!(err("backup {time}", &[]).contains("' '"));
        assert!(err("backup-{tim}{time}", &[]).contains("'{'"));
        assert!(err("bäckup-{time}", &[]).contains("'ä'"));
        assert!(err("backup-{time}", &["sql", ""]).contains("empty file extension"));
        assert!(err("backup-{time}", &["tar.gz"]).contains("\"tar.gz\" contains '.'"));
        assert!(err("backup-{time}", &["s/l"]).contains("'/'"));
        assert!(err(&format!("{}{{time}}", "a".repeat(232)), &[]).contains("at most 255"));
        // Every message says what is allowed, not only what is wrong.
        assert!(err("backup/{time}", &[]).contains("only letters, digits"));
        // The longest allowed name is fine.
        assert!(NameTemplate::parse(&format!("{}{{time}}", "a".repeat(231)), &[]).is_ok());
    }
}
