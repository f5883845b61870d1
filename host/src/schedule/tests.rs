use super::*;

fn utc(text: &str) -> Schedule {
    Schedule::parse(text, TimeZone::UTC).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn ts(text: &str) -> Timestamp {
    text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// The next `n` times after `from`, as RFC 3339 UTC text.
fn times(s: &Schedule, from: &str, n: usize) -> Vec<String> {
    let mut at = ts(from);
    (0..n)
        .map(|_| {
            at = s.next_after(at).expect("a next time");
            at.to_string()
        })
        .collect()
}

fn error(text: &str) -> String {
    Schedule::parse(text, TimeZone::UTC)
        .expect_err(text)
        .to_string()
}

/// Central European time by its POSIX rule (no time zone database needed): clocks go
/// forward 02:00 → 03:00 on the last Sunday of March, back 03:00 → 02:00 on the last
/// Sunday of October.
fn berlin() -> TimeZone {
    TimeZone::posix("CET-1CEST,M3.5.0,M10.5.0/3").unwrap()
}

#[test]
fn five_fields_fire_at_second_zero() {
    assert_eq!(
        times(&utc("0 2 * * *"), "2026-12-01T19:33:21Z", 2),
        ["2026-12-02T02:00:00Z", "2026-12-03T02:00:00Z"]
    );
    assert_eq!(
        times(&utc("*/15 * * * *"), "2026-12-01T10:07:30.5Z", 3),
        [
            "2026-12-01T10:15:00Z",
            "2026-12-01T10:30:00Z",
            "2026-12-01T10:45:00Z"
        ]
    );
    // Strictly after: a time that is itself a firing time gives the next one.
    assert_eq!(
        times(&utc("0 * * * *"), "2026-12-01T10:00:00Z", 1),
        ["2026-12-01T11:00:00Z"]
    );
}

#[test]
fn a_sixth_leading_field_is_seconds() {
    let s = utc("*/2 * * * * *");
    assert_eq!(
        times(&s, "2026-12-01T10:00:00.5Z", 3),
        [
            "2026-12-01T10:00:02Z",
            "2026-12-01T10:00:04Z",
            "2026-12-01T10:00:06Z"
        ]
    );
    assert_eq!(
        times(&utc("30 0 12 * * *"), "2026-12-01T12:00:30Z", 1),
        ["2026-12-02T12:00:30Z"]
    );
}

#[test]
fn lists_ranges_steps_and_names() {
    // 2026-12-04 is a Friday.
    assert_eq!(
        times(&utc("0 9-17/4 * * mon-fri"), "2026-12-04T10:00:00Z", 4),
        [
            "2026-12-04T13:00:00Z",
            "2026-12-04T17:00:00Z",
            "2026-12-07T09:00:00Z",
            "2026-12-07T13:00:00Z"
        ]
    );
    assert_eq!(
        times(&utc("5,10-11 0 1 JAN,jul *"), "2026-12-01T00:00:00Z", 4),
        [
            "2027-01-01T00:05:00Z",
            "2027-01-01T00:10:00Z",
            "2027-01-01T00:11:00Z",
            "2027-07-01T00:05:00Z"
        ]
    );
    // `a/n` runs from a to the field's end.
    assert_eq!(
        times(&utc("50/5 3 * * *"), "2026-12-01T00:00:00Z", 3),
        [
            "2026-12-01T03:50:00Z",
            "2026-12-01T03:55:00Z",
            "2026-12-02T03:50:00Z"
        ]
    );
}

#[test]
fn sunday_is_0_and_7() {
    // 2026-12-06 is a Sunday.
    for s in ["0 0 * * 0", "0 0 * * 7", "0 0 * * sun", "0 0 * * 6-7"] {
        let next = times(&utc(s), "2026-12-05T12:00:00Z", 1);
        assert_eq!(next, ["2026-12-06T00:00:00Z"], "{s}");
    }
}

#[test]
fn day_of_month_and_day_of_week_combine_like_cron() {
    // Both restricted: either matches (the 13th, and every Friday).
    assert_eq!(
        times(&utc("0 0 13 * fri"), "2026-12-01T00:00:00Z", 4),
        [
            "2026-12-04T00:00:00Z",
            "2026-12-11T00:00:00Z",
            "2026-12-13T00:00:00Z",
            "2026-12-18T00:00:00Z"
        ]
    );
    // A field starting with `*` is unrestricted for this rule: both must match (odd days
    // that are Fridays).
    assert_eq!(
        times(&utc("0 0 */2 * fri"), "2026-12-01T00:00:00Z", 2),
        ["2026-12-11T00:00:00Z", "2026-12-25T00:00:00Z"]
    );
    // The 29th of February waits for a leap year.
    assert_eq!(
        times(&utc("0 0 29 2 *"), "2026-12-01T00:00:00Z", 1),
        ["2028-02-29T00:00:00Z"]
    );
}

#[test]
fn shorthands_are_their_expressions() {
    for (short, long) in [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
    ] {
        let from = "2026-12-01T10:30:00Z";
        assert_eq!(
            times(&utc(short), from, 3),
            times(&utc(long), from, 3),
            "{short}"
        );
    }
}

#[test]
fn errors_name_the_field_and_the_value() {
    let e = error("0 25 * * *");
    assert!(
        e.contains("hour field `25`") && e.contains("out of range"),
        "{e}"
    );
    let e = error("*/0 * * * *");
    assert!(
        e.contains("minute field `*/0`") && e.contains("step"),
        "{e}"
    );
    let e = error("0 0 * * fri-mon");
    assert!(
        e.contains("day of week field `fri-mon`") && e.contains("backwards"),
        "{e}"
    );
    let e = error("0 0 * foo *");
    assert!(
        e.contains("month field `foo`") && e.contains("not a number"),
        "{e}"
    );
    let e = error("0 0 1,,2 * *");
    assert!(
        e.contains("day of month field `1,,2`") && e.contains("empty"),
        "{e}"
    );
    let e = error("0 0 * * * * *");
    assert!(e.contains("7 field(s)") && e.contains("write 5"), "{e}");
    let e = error("60 * * * * *");
    assert!(e.contains("second field `60`"), "{e}");
    let e = error("@reboot");
    assert!(e.contains("@reboot") && e.contains("@daily"), "{e}");
    let e = error("0 0 30 2 *");
    assert!(e.contains("never fires"), "{e}");
    let e = time_zone("Mars/Olympus_Mons").unwrap_err().to_string();
    assert!(
        e.contains("unknown time zone `Mars/Olympus_Mons`") && e.contains("tzdata"),
        "{e}"
    );
}

#[test]
fn a_local_time_skipped_by_dst_runs_once_at_the_end_of_the_gap() {
    let s = Schedule::parse("30 2 * * *", berlin()).unwrap();
    // 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC); 02:30 does not exist.
    assert_eq!(
        times(&s, "2026-03-28T12:00:00Z", 2),
        ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"]
    );
    // Every quarter hour of the skipped hour: one run, at 03:00 CEST, then 03:15 CEST.
    let s = Schedule::parse("*/15 2,3 * * *", berlin()).unwrap();
    assert_eq!(
        times(&s, "2026-03-29T00:50:00Z", 3),
        [
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:15:00Z",
            "2026-03-29T01:30:00Z"
        ]
    );
}

#[test]
fn a_local_time_repeated_by_dst_runs_once() {
    // 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00 UTC); 02:30 happens twice.
    let s = Schedule::parse("30 2 * * *", berlin()).unwrap();
    assert_eq!(
        times(&s, "2026-10-24T12:00:00Z", 2),
        ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]
    );
    let s = Schedule::parse("*/30 * * * *", berlin()).unwrap();
    assert_eq!(
        times(&s, "2026-10-25T00:00:00Z", 3),
        [
            "2026-10-25T00:30:00Z",
            "2026-10-25T02:00:00Z",
            "2026-10-25T02:30:00Z"
        ]
    );
    // Asked from inside the second pass of the hour: the repeated times are past.
    assert_eq!(
        times(&s, "2026-10-25T01:10:00Z", 1),
        ["2026-10-25T02:00:00Z"]
    );
}

#[test]
fn times_are_read_in_the_schedule_time_zone() {
    let s = Schedule::parse("0 2 * * *", berlin()).unwrap();
    assert_eq!(
        times(&s, "2026-12-01T12:00:00Z", 1),
        ["2026-12-02T01:00:00Z"]
    );
    assert_eq!(
        s.local(ts("2026-12-02T01:00:00Z")),
        "2026-12-02 02:00:00 CET"
    );
}

#[test]
fn iana_names_come_from_the_system_database() {
    let tz = time_zone("Europe/Berlin").unwrap_or_else(|e| {
        panic!("{e}: install Debian's `tzdata` package (scripts/install-prerequisites.sh)")
    });
    let s = Schedule::parse("0 2 * * *", tz).unwrap();
    assert_eq!(s.time_zone_name(), "Europe/Berlin");
    assert_eq!(
        times(&s, "2026-07-01T12:00:00Z", 1),
        ["2026-07-02T00:00:00Z"],
        "02:00 CEST"
    );
    assert_eq!(utc("@daily").time_zone_name(), "UTC");
}

#[test]
fn previous_times_newest_first() {
    let s = utc("0 2 * * *");
    assert_eq!(
        s.previous(ts("2026-12-01T19:33:00Z"), 2),
        [ts("2026-12-01T02:00:00Z"), ts("2026-11-30T02:00:00Z")]
    );
    // A time that is itself a firing time counts.
    assert_eq!(
        s.previous(ts("2026-12-01T02:00:00Z"), 1),
        [ts("2026-12-01T02:00:00Z")]
    );
    let s = utc("*/2 * * * * *");
    assert_eq!(
        s.previous(ts("2026-12-01T10:00:05Z"), 2),
        [ts("2026-12-01T10:00:04Z"), ts("2026-12-01T10:00:02Z")]
    );
    let s = utc("@yearly");
    assert_eq!(
        s.previous(ts("2026-12-01T00:00:00Z"), 2),
        [ts("2026-01-01T00:00:00Z"), ts("2025-01-01T00:00:00Z")]
    );
}
