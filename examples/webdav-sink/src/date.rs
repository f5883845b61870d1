//! `getlastmodified` values: RFC 1123 dates (`Sun, 06 Nov 1994 08:49:37 GMT`). The
//! calendar arithmetic is the SDK's `date::Utc`.

use pipeline_plugin_sdk::date::Utc;

/// Milliseconds since the Unix epoch, or `None` if `text` is not an RFC 1123 date in GMT
/// (or is before 1970).
pub fn parse_rfc1123_ms(text: &str) -> Option<u64> {
    // "Sun, 06 Nov 1994 08:49:37 GMT": the weekday is redundant and not checked.
    let rest = text.trim();
    let rest = match rest.split_once(',') {
        Some((_weekday, rest)) => rest,
        None => rest,
    };
    let mut parts = rest.split_whitespace();
    let day: u32 = parts.next()?.parse().ok()?;
    let month = month_number(parts.next()?)?;
    let year: i64 = parts.next()?.parse().ok()?;
    let time = parts.next()?;
    let zone = parts.next()?;
    if parts.next().is_some()
        || !(zone.eq_ignore_ascii_case("GMT") || zone == "UTC" || zone == "+0000")
    {
        return None;
    }
    let mut hms = time.split(':');
    let hour: u32 = hms.next()?.parse().ok()?;
    let minute: u32 = hms.next()?.parse().ok()?;
    let second: u32 = hms.next()?.parse().ok()?;
    if hms.next().is_some() || second > 60 {
        return None;
    }
    // A leap second (`:60`) is the next minute's first; the SDK's dates have none.
    let leap = u64::from(second == 60) * 1_000;
    let time = Utc::new(year, month, day, hour, minute, second.min(59), 0)?;
    time.to_ms()?.checked_add(leap)
}

fn month_number(name: &str) -> Option<u32> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    MONTHS
        .iter()
        .position(|m| m.eq_ignore_ascii_case(name))
        .and_then(|i| u32::try_from(i + 1).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc_1123_dates() {
        assert_eq!(
            parse_rfc1123_ms("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777_000)
        );
        assert_eq!(parse_rfc1123_ms("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_rfc1123_ms("Wed, 10 Dec 2025 12:00:00 GMT"),
            Some(1_765_368_000_000)
        );
        // A leap day, a lower-case month, one-digit day, surrounding whitespace.
        assert_eq!(
            parse_rfc1123_ms("  Thu, 29 feb 2024 23:59:59 GMT\n"),
            Some(1_709_251_199_000)
        );
        assert_eq!(
            parse_rfc1123_ms("Mon, 1 Jan 2024 00:00:00 GMT"),
            Some(1_704_067_200_000)
        );
        // A leap second is the next minute's first.
        assert_eq!(
            parse_rfc1123_ms("Sat, 31 Dec 2016 23:59:60 GMT"),
            Some(1_483_228_800_000)
        );
    }

    #[test]
    fn rejects_what_is_not_one() {
        for bad in [
            "",
            "yesterday",
            "2025-12-10T12:00:00Z",
            "Sun, 06 Nov 1994 08:49:37 CET",
            "Sun, 06 Nov 1994 08:49 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Thu, 29 Feb 2023 00:00:00 GMT",
            "Sun, 31 Apr 1994 00:00:00 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Wed, 31 Dec 1969 23:59:59 GMT",
            "Sun, 06 Nov 1994 08:49:37 GMT extra",
        ] {
            assert_eq!(parse_rfc1123_ms(bad), None, "{bad:?}");
        }
    }
}
