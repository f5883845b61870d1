//! `getlastmodified` values: RFC 1123 dates (`Sun, 06 Nov 1994 08:49:37 GMT`).

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
    if hms.next().is_some()
        || hour > 23
        || minute > 59
        || second > 60
        || !(1..=days_in_month(year, month)).contains(&day)
    {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let seconds =
        days * 86_400 + i64::from(hour) * 3_600 + i64::from(minute) * 60 + i64::from(second);
    u64::try_from(seconds).ok()?.checked_mul(1_000)
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

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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
