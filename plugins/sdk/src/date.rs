//! UTC dates from the host's millisecond times, without a dependency.
//!
//! A sink whose layout depends on when a backup was made (`root/2026/12/01/NAME`) takes
//! the time from `ArtifactMeta::created_ms`: the host gives a backup and its checksum
//! manifest the same `created_ms`, so both land in the same place.
//!
//! ```
//! use pipeline_plugin_sdk::date::Utc;
//!
//! let t = Utc::from_ms(1_764_603_544_007); // what `put` gets as `meta.created_ms`
//! assert_eq!(t.date_path(), "2025/12/01");
//! assert_eq!(t.date_parts(), ["2025", "12", "01"]);
//! assert_eq!(t.iso(), "2025-12-01T15:39:04.007Z");
//! assert_eq!((t.year, t.month, t.day, t.hour), (2025, 12, 1, 15));
//!
//! // And back, e.g. from a date a store reports: `None` for a date that does not exist.
//! assert_eq!(Utc::new(2025, 12, 1, 15, 39, 4, 7).and_then(|t| t.to_ms()), Some(1_764_603_544_007));
//! assert_eq!(Utc::new(2023, 2, 29, 0, 0, 0, 0), None);
//! ```

use std::fmt;

/// A UTC date and time of the proleptic Gregorian calendar, to the millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Utc {
    pub year: i64,
    /// 1 to 12.
    pub month: u32,
    /// 1 to 31.
    pub day: u32,
    /// 0 to 23.
    pub hour: u32,
    /// 0 to 59.
    pub minute: u32,
    /// 0 to 59.
    pub second: u32,
    /// 0 to 999.
    pub millisecond: u32,
}

impl Utc {
    /// The time `ms` milliseconds after 1970-01-01T00:00:00Z (what `created_ms` holds).
    pub fn from_ms(ms: u64) -> Utc {
        let days = i64::try_from(ms / 86_400_000).unwrap_or(i64::MAX);
        let in_day = ms % 86_400_000;
        let (year, month, day) = civil_from_days(days);
        // Each part is below its modulus, so the casts cannot truncate.
        let part =
            |divisor: u64, modulus: u64| u32::try_from(in_day / divisor % modulus).unwrap_or(0);
        Utc {
            year,
            month,
            day,
            hour: part(3_600_000, 24),
            minute: part(60_000, 60),
            second: part(1_000, 60),
            millisecond: part(1, 1_000),
        }
    }

    /// A checked date and time; `None` if any part is out of range (February 29 only in
    /// leap years; no leap seconds).
    pub fn new(
        year: i64,
        month: u32,
        day: u32,
        hour: u32,
        minute: u32,
        second: u32,
        millisecond: u32,
    ) -> Option<Utc> {
        let valid = (1..=12).contains(&month)
            && (1..=days_in_month(year, month)).contains(&day)
            && hour < 24
            && minute < 60
            && second < 60
            && millisecond < 1_000;
        valid.then_some(Utc {
            year,
            month,
            day,
            hour,
            minute,
            second,
            millisecond,
        })
    }

    /// Milliseconds since 1970-01-01T00:00:00Z; `None` before 1970 (or past `u64`).
    pub fn to_ms(&self) -> Option<u64> {
        let days = days_from_civil(self.year, self.month, self.day);
        let seconds = days
            .checked_mul(86_400)?
            .checked_add(i64::from(self.hour) * 3_600 + i64::from(self.minute) * 60)?
            .checked_add(i64::from(self.second))?;
        u64::try_from(seconds)
            .ok()?
            .checked_mul(1_000)?
            .checked_add(u64::from(self.millisecond))
    }

    /// `["YYYY", "MM", "DD"]`, zero-padded: one directory (or key segment) each.
    pub fn date_parts(&self) -> [String; 3] {
        [
            format!("{:04}", self.year),
            format!("{:02}", self.month),
            format!("{:02}", self.day),
        ]
    }

    /// `YYYY/MM/DD`.
    pub fn date_path(&self) -> String {
        self.date_parts().join("/")
    }

    /// ISO 8601 / RFC 3339 with milliseconds: `2025-12-01T15:39:04.007Z`.
    pub fn iso(&self) -> String {
        self.to_string()
    }
}

/// The ISO form, as [`Utc::iso`].
impl fmt::Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millisecond
        )
    }
}

/// Whether `year` has a February 29.
pub fn is_leap_year(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

/// The days of `month` (1 to 12) in `year`; 0 for a month out of range.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 of a date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // day is 1..=31 and month 1..=12.
    (
        year,
        u32::try_from(month).unwrap_or(1),
        u32::try_from(day).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iso(ms: u64) -> String {
        Utc::from_ms(ms).iso()
    }

    #[test]
    fn known_dates() {
        assert_eq!(iso(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso(784_111_777_000), "1994-11-06T08:49:37.000Z");
        assert_eq!(iso(951_782_400_000), "2000-02-29T00:00:00.000Z"); // 400-year leap
        assert_eq!(iso(951_868_799_999), "2000-02-29T23:59:59.999Z");
        assert_eq!(iso(951_868_800_000), "2000-03-01T00:00:00.000Z");
        assert_eq!(iso(1_709_251_199_000), "2024-02-29T23:59:59.000Z");
        assert_eq!(iso(1_735_689_599_999), "2024-12-31T23:59:59.999Z"); // day 366
        assert_eq!(iso(1_735_689_600_000), "2025-01-01T00:00:00.000Z");
        assert_eq!(iso(1_765_368_000_000), "2025-12-10T12:00:00.000Z");
        assert_eq!(iso(4_107_542_400_000), "2100-03-01T00:00:00.000Z"); // 2100: no Feb 29
        assert_eq!(iso(4_107_456_000_000), "2100-02-28T00:00:00.000Z");
    }

    #[test]
    fn date_parts_are_zero_padded() {
        let t = Utc::from_ms(1_704_067_200_000 + 5); // 2024-01-01T00:00:00.005Z
        assert_eq!(t.date_parts(), ["2024", "01", "01"]);
        assert_eq!(t.date_path(), "2024/01/01");
        assert_eq!(t.iso(), "2024-01-01T00:00:00.005Z");
        assert_eq!(Utc::from_ms(0).date_path(), "1970/01/01");
    }

    #[test]
    fn round_trips_every_day_of_four_centuries() {
        // Every day from 1970 to 2399 (leap years, century years, 2000), at a time
        // with every part set.
        let offset = 23 * 3_600_000 + 59 * 60_000 + 58_000 + 999;
        let mut previous: Option<Utc> = None;
        for day in 0..157_000u64 {
            let ms = day * 86_400_000 + offset;
            let t = Utc::from_ms(ms);
            assert_eq!(t.to_ms(), Some(ms), "{t}");
            assert_eq!(
                Utc::new(
                    t.year,
                    t.month,
                    t.day,
                    t.hour,
                    t.minute,
                    t.second,
                    t.millisecond
                ),
                Some(t)
            );
            if let Some(p) = previous {
                assert!(p < t, "{p} then {t}");
                if t.day != 1 {
                    assert_eq!((t.year, t.month, t.day), (p.year, p.month, p.day + 1));
                } else {
                    assert_eq!(p.day, days_in_month(p.year, p.month), "{p} then {t}");
                }
            }
            previous = Some(t);
        }
    }

    #[test]
    fn leap_years() {
        for (year, leap) in [
            (1970, false),
            (1972, true),
            (1900, false),
            (2000, true),
            (2023, false),
            (2024, true),
            (2100, false),
            (2400, true),
        ] {
            assert_eq!(is_leap_year(year), leap, "{year}");
            assert_eq!(days_in_month(year, 2), if leap { 29 } else { 28 }, "{year}");
        }
    }

    #[test]
    fn new_checks_every_part() {
        assert!(Utc::new(2024, 2, 29, 0, 0, 0, 0).is_some());
        for (y, mo, d, h, mi, s, ms) in [
            (2023, 2, 29, 0, 0, 0, 0),
            (2100, 2, 29, 0, 0, 0, 0),
            (2024, 4, 31, 0, 0, 0, 0),
            (2024, 0, 1, 0, 0, 0, 0),
            (2024, 13, 1, 0, 0, 0, 0),
            (2024, 1, 0, 0, 0, 0, 0),
            (2024, 1, 1, 24, 0, 0, 0),
            (2024, 1, 1, 0, 60, 0, 0),
            (2024, 1, 1, 0, 0, 60, 0),
            (2024, 1, 1, 0, 0, 0, 1_000),
        ] {
            assert_eq!(
                Utc::new(y, mo, d, h, mi, s, ms),
                None,
                "{y}-{mo}-{d} {h}:{mi}:{s}.{ms}"
            );
        }
        assert_eq!(
            Utc::new(1969, 12, 31, 23, 59, 59, 999).and_then(|t| t.to_ms()),
            None
        );
    }
}
