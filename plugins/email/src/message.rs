//! The message: a plain-text mail (RFC 5322) telling a run's news.
//!
//! Every value from the report that reaches a header is stripped of control characters
//! (CR and LF among them), so an error message cannot add a header or end the header
//! section; non-ASCII header text is encoded per RFC 2047; the body is quoted-printable,
//! so the message is 7-bit and its lines short whatever the report holds.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use pipeline_notify_http::{size, time};
use pipeline_plugin_sdk::date::Utc;
use pipeline_plugin_sdk::notify::{Event, RunReport};

/// The placeholders a subject template may use.
const PLACEHOLDERS: &[&str] = &["pipeline", "event", "host", "summary"];
/// The longest subject sent, in characters (a long error is cut; the body has it whole).
const MAX_SUBJECT: usize = 200;
/// Bytes of UTF-8 per RFC 2047 encoded word: `Subject: =?UTF-8?B?<52>?=` stays under 78.
const WORD_BYTES: usize = 39;
/// Quoted-printable lines are at most 76 characters (RFC 2045), soft break included.
const QP_LINE: usize = 76;

/// What the mail says, from a run's report.
pub struct News {
    pipeline: String,
    /// `started`, `succeeded`, `failed`.
    event: &'static str,
    /// `start`, `success`, `failure`: for the Message-ID.
    tag: &'static str,
    host: String,
    /// The error, or the backup and its size; empty for a start.
    summary: String,
    /// The body's lines after the headline: label and value.
    facts: Vec<(&'static str, String)>,
    mode: String,
    started_ms: u64,
    /// When it happened: the start, or the end of the run.
    at_ms: u64,
}

impl News {
    pub fn of(report: &RunReport) -> News {
        let (event, tag) = match report.event {
            Event::Start => ("started", "start"),
            Event::Success => ("succeeded", "success"),
            Event::Failure => ("failed", "failure"),
        };
        let mut facts = Vec::new();
        let mut summary = String::new();
        match report.event {
            Event::Start => {}
            Event::Success => {
                if let Some(artifact) = &report.artifact {
                    summary = match report.size {
                        Some(bytes) => format!("{artifact} ({})", size(bytes)),
                        None => artifact.clone(),
                    };
                    facts.push(("Backup", artifact.clone()));
                }
                if let Some(bytes) = report.size {
                    facts.push(("Size", format!("{} ({bytes} bytes)", size(bytes))));
                }
                if let Some(sha) = &report.sha256 {
                    facts.push(("SHA-256", sha.clone()));
                }
                if !report.sinks.is_empty() {
                    facts.push(("Stored in", report.sinks.join(", ")));
                }
                if report.artifact.is_some() {
                    facts.push(("Pruned", format!("{} earlier backup(s)", report.pruned)));
                }
                if let Some(n) = report.snapshots {
                    summary = format!("{n} snapshot(s) recorded");
                    facts.push(("Snapshots recorded", n.to_string()));
                }
            }
            Event::Failure => {
                summary = report
                    .error
                    .clone()
                    .unwrap_or_else(|| "no reason was given".into());
                facts.push(("Error", summary.clone()));
            }
        }
        if let Some(code) = report.exit_code {
            facts.push(("Exit code", code.to_string()));
        }
        facts.push(("Started", time(report.started_ms)));
        if let Some(ms) = report.duration_ms {
            facts.push(("Duration", format!("{:.1} s", ms as f64 / 1000.0)));
        }
        News {
            pipeline: report.pipeline.clone(),
            event,
            tag,
            host: report.hostname.clone(),
            summary,
            facts,
            mode: report.mode.clone(),
            started_ms: report.started_ms,
            at_ms: report
                .started_ms
                .saturating_add(report.duration_ms.unwrap_or(0)),
        }
    }

    /// The subject: `template` (or the default) with the placeholders replaced, on one
    /// line, cut to [`MAX_SUBJECT`] characters.
    fn subject(&self, template: Option<&str>) -> String {
        let default = if self.summary.is_empty() {
            "[pipeline] {pipeline} {event} on {host}"
        } else {
            "[pipeline] {pipeline} {event} on {host}: {summary}"
        };
        let mut out = String::new();
        let mut rest = template.unwrap_or(default);
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match after.find('}').map(|close| (&after[..close], close)) {
                Some((name, close)) if PLACEHOLDERS.contains(&name) => {
                    out.push_str(match name {
                        "pipeline" => &self.pipeline,
                        "event" => self.event,
                        "host" => &self.host,
                        _ => &self.summary,
                    });
                    rest = &after[close + 1..];
                }
                _ => {
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        clip(&one_line(&out), MAX_SUBJECT)
    }

    /// The body, plain text with LF line ends.
    fn body(&self) -> String {
        let mut body = format!(
            "The {} run of pipeline {} on {} {}.\n\n",
            one_line(&self.mode),
            one_line(&self.pipeline),
            one_line(&self.host),
            self.event
        );
        for (label, value) in &self.facts {
            let mut lines = value.lines();
            body.push_str(&format!("{label}: {}\n", lines.next().unwrap_or_default()));
            for more in lines {
                body.push_str(&format!("    {more}\n"));
            }
        }
        body
    }
}

/// The whole message, headers and body, lines ending in CRLF.
pub fn compose(from: &str, to: &[String], subject: Option<&str>, news: &News) -> String {
    let mut m = String::new();
    let mut header = |name: &str, value: &str| {
        m.push_str(&encode_header(name, value));
        m.push_str("\r\n");
    };
    header("Date", &rfc5322_date(news.at_ms));
    header("From", from);
    header("To", &to.join(", "));
    header("Subject", &news.subject(subject));
    header(
        "Message-ID",
        &format!(
            "<pipeline.{}.{}.{:016x}@{}>",
            news.started_ms,
            news.tag,
            fnv1a(news.pipeline.as_bytes()),
            id_domain(&news.host)
        ),
    );
    header("MIME-Version", "1.0");
    header("Content-Type", "text/plain; charset=utf-8");
    header("Content-Transfer-Encoding", "quoted-printable");
    // RFC 3834: automatic mail, which vacation responders must not answer.
    header("Auto-Submitted", "auto-generated");
    m.push_str("\r\n");
    m.push_str(&quoted_printable(&news.body()));
    m
}

/// An address fit for the envelope and a header: `local@domain`, ASCII, no space, no
/// control character, none of `<>,;"()`.
pub fn check_address(address: &str) -> Result<(), String> {
    let bad = address
        .chars()
        .find(|c| c.is_control() || c.is_whitespace() || "<>,;\"()".contains(*c));
    match address.split_once('@') {
        _ if !address.is_ascii() => Err(format!(
            "{address:?} is not ASCII (internationalised addresses are not supported)"
        )),
        _ if bad.is_some() => Err(format!(
            "{address:?} holds {:?}; write a bare address, local@domain",
            bad.unwrap_or(' ')
        )),
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Ok(()),
        _ => Err(format!("{address:?} is not an address, local@domain")),
    }
}

/// Every `{name}` in a subject template is a known placeholder.
pub fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else {
            break;
        };
        let name = &after[..close];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}} (known: {})",
                PLACEHOLDERS
                    .iter()
                    .map(|p| format!("{{{p}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        rest = &after[close + 1..];
    }
    Ok(())
}

/// Control characters (CR, LF, tabs) become spaces and runs of blanks one space.
fn one_line(text: &str) -> String {
    text.split(|c: char| c.is_control() || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// `Name: value`, folded: ASCII text at spaces under 78 characters a line, other text as
/// RFC 2047 encoded words, one per line. `value` must be one line.
fn encode_header(name: &str, value: &str) -> String {
    let value = one_line(value);
    let words: Vec<String> = if value.is_ascii() {
        value.split(' ').map(str::to_string).collect()
    } else {
        let mut words = Vec::new();
        let mut chunk = String::new();
        for c in value.chars() {
            if chunk.len() + c.len_utf8() > WORD_BYTES {
                words.push(format!("=?UTF-8?B?{}?=", BASE64.encode(&chunk)));
                chunk.clear();
            }
            chunk.push(c);
        }
        if !chunk.is_empty() {
            words.push(format!("=?UTF-8?B?{}?=", BASE64.encode(&chunk)));
        }
        words
    };
    let mut out = format!("{name}:");
    let mut line = out.len();
    for word in words {
        if line + 1 + word.len() > 78 && line > name.len() + 1 {
            out.push_str("\r\n");
            line = 0;
        }
        out.push(' ');
        out.push_str(&word);
        line += 1 + word.len();
    }
    out
}

/// Quoted-printable (RFC 2045): lines end in CRLF, none longer than 76 characters.
fn quoted_printable(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let bytes = line.as_bytes();
        let mut width = 0;
        for (i, &b) in bytes.iter().enumerate() {
            let last = i + 1 == bytes.len();
            let literal = match b {
                b'=' => false,
                b' ' | b'\t' => !last,
                33..=126 => true,
                _ => false,
            };
            let token = if literal {
                (b as char).to_string()
            } else {
                format!("={b:02X}")
            };
            // Room for the token and, unless it ends the line, a soft break `=`.
            let room = if last { QP_LINE } else { QP_LINE - 1 };
            if width + token.len() > room {
                out.push_str("=\r\n");
                width = 0;
            }
            out.push_str(&token);
            width += token.len();
        }
        out.push_str("\r\n");
    }
    out
}

/// `Tue, 01 Dec 2026 19:32:07 +0000`.
fn rfc5322_date(ms: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let t = Utc::from_ms(ms);
    // 1970-01-01 was a Thursday.
    let weekday = DAYS[((ms / 86_400_000) % 7) as usize];
    let month = MONTHS[(t.month.clamp(1, 12) - 1) as usize];
    format!(
        "{weekday}, {:02} {month} {:04} {:02}:{:02}:{:02} +0000",
        t.day, t.year, t.hour, t.minute, t.second
    )
}

/// The host name as a Message-ID domain: letters, digits, `-` and `.` only.
fn id_domain(host: &str) -> String {
    let clean: String = host
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .collect();
    let clean = clean.trim_matches('.');
    if clean.is_empty() {
        "localhost".into()
    } else {
        clean.to_string()
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(event: Event) -> RunReport {
        RunReport {
            pipeline: "nightly".into(),
            event,
            mode: "backup".into(),
            hostname: "db1.example.com".into(),
            started_ms: 1_764_603_544_007,
            duration_ms: Some(12_345),
            artifact: None,
            size: None,
            sha256: None,
            sinks: vec![],
            pruned: 0,
            snapshots: None,
            error: None,
            exit_code: None,
        }
    }

    #[test]
    fn a_failure_names_the_pipeline_host_and_error() {
        let mut r = report(Event::Failure);
        r.error =
            Some("source postgres: pg_dump: connection refused\nis the server running?".into());
        r.exit_code = Some(1);
        let m = compose(
            "backup@example.com",
            &["ops@example.com".into()],
            None,
            &News::of(&r),
        );
        let (head, body) = m.split_once("\r\n\r\n").expect("a header and a body");
        assert!(
            head.contains(
                "Subject: [pipeline] nightly failed on db1.example.com: source postgres:\r\n pg_dump:"
            ),
            "{head}"
        );
        assert!(
            head.contains("Date: Mon, 01 Dec 2025 15:39:16 +0000"),
            "{head}"
        );
        assert!(head.contains("Content-Transfer-Encoding: quoted-printable"));
        assert!(head.contains("Message-ID: <pipeline.1764603544007.failure."));
        assert!(
            body.contains(
                "Error: source postgres: pg_dump: connection refused\r\n    is the server running?"
            ),
            "{body}"
        );
        assert!(body.contains("Exit code: 1\r\n"), "{body}");
        assert!(m.lines().all(|l| l.len() <= 78), "{m}");
    }

    #[test]
    fn report_fields_cannot_add_headers() {
        let mut r = report(Event::Failure);
        r.error = Some("boom\r\nBcc: victim@example.com\r\n\r\nfake body".into());
        r.hostname = "evil\r\nX-Injected: 1".into();
        let m = compose(
            "a@b",
            &["c@d".into()],
            Some("{host} {summary}"),
            &News::of(&r),
        );
        let head = m.split("\r\n\r\n").next().expect("a header");
        for line in head.split("\r\n") {
            assert!(
                line.starts_with(' ')
                    || (!line.starts_with("Bcc") && !line.starts_with("X-Injected")),
                "{head}"
            );
        }
        assert!(head.contains("Subject: evil X-Injected: 1 boom Bcc: victim@example.com fake"));
    }

    #[test]
    fn a_success_tells_the_backup() {
        let mut r = report(Event::Success);
        r.artifact = Some("nightly-2025-12-01.sql.zst".into());
        r.size = Some(12_897_234);
        r.sha256 = Some("ab".repeat(32));
        r.sinks = vec!["local".into(), "s3".into()];
        r.pruned = 2;
        r.exit_code = Some(0);
        let m = compose("a@b", &["c@d".into()], None, &News::of(&r));
        assert!(m.contains("Subject: [pipeline] nightly succeeded on db1.example.com:\r\n nightly-2025-12-01.sql.zst (12.3 MiB)"), "{m}");
        assert!(m.contains("Stored in: local, s3"));
        assert!(m.contains("Pruned: 2 earlier backup(s)"));
        let start = compose(
            "a@b",
            &["c@d".into()],
            None,
            &News::of(&report(Event::Start)),
        );
        assert!(
            start.contains("Subject: [pipeline] nightly started on db1.example.com\r\n"),
            "{start}"
        );
    }

    #[test]
    fn non_ascii_headers_are_encoded_words_and_the_body_is_7_bit() {
        let mut r = report(Event::Failure);
        r.pipeline = "sauvegarde-été".into();
        r.error = Some("échec = très ".repeat(20));
        let m = compose("a@b", &["c@d".into()], None, &News::of(&r));
        assert!(m.is_ascii(), "{m}");
        assert!(m.contains("Subject: =?UTF-8?B?"), "{m}");
        assert!(m.lines().all(|l| l.len() <= 78), "{m}");
        let body = m.split_once("\r\n\r\n").expect("body").1;
        assert!(body.contains("=C3=A9chec =3D tr=C3=A8s"), "{body}");
        assert!(body.lines().all(|l| l.len() <= 76), "{body}");
    }

    #[test]
    fn quoted_printable_breaks_and_trailing_blanks() {
        assert_eq!(quoted_printable("a b \nc\t"), "a b=20\r\nc=09\r\n");
        let long = quoted_printable(&"x".repeat(100));
        assert_eq!(
            long,
            format!("{}=\r\n{}\r\n", "x".repeat(75), "x".repeat(25))
        );
        assert_eq!(quoted_printable(".dot"), ".dot\r\n");
    }

    #[test]
    fn addresses_and_templates_are_checked() {
        assert!(check_address("backup@example.com").is_ok());
        for bad in [
            "", "x", "@b", "a@", "a b@c", "a@b\r\n", "<a@b>", "a@b,c@d", "é@b",
        ] {
            assert!(check_address(bad).is_err(), "{bad:?}");
        }
        assert!(check_template("{pipeline}: {summary} {").is_ok());
        assert!(check_template("{pipline}").is_err());
    }

    #[test]
    fn dates_are_rfc_5322() {
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_796_153_527_000),
            "Tue, 01 Dec 2026 19:32:07 +0000"
        );
    }
}
