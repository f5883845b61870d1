//! Schedules: cron expressions and the times they name in a time zone. Pure: parsing and
//! [`Schedule::next_after`] / [`Schedule::previous`] read no clock and no file (the time
//! zone database is read once, when a [`TimeZone`] is looked up by name).
//!
//! The syntax is cron's: five fields `minute hour day-of-month month day-of-week`, or six
//! with a leading `second` field; each field `*`, a value, a range `a-b`, a step `*/n`,
//! `a-b/n` or `a/n` (from `a` to the field's end), or a comma-separated list of those.
//! Months and days of the week may be written as names (`jan`, `mon-fri`); day of week 0
//! and 7 are both Sunday. `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily`
//! (`@midnight`) and `@hourly` stand for their usual expressions.
//!
//! Day of month and day of week combine as in cron: when both are restricted (neither
//! field starts with `*`), a day matches if either does; otherwise both must.
//!
//! Times are local times of the schedule's time zone. A local time that does not exist
//! (skipped when clocks go forward) fires once, at the first instant after the gap; a local
//! time that happens twice (when clocks go back) fires once, the first time.

use std::fmt;

use jiff::civil::{Date, DateTime};
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{Timestamp, ToSpan};

/// How far ahead a time is looked for before a schedule is declared never to fire: long
/// enough for `29 2` (the 29th of February) across a century year that is not a leap year.
const HORIZON_YEARS: i16 = 9;

/// A parsed schedule and the time zone its times are read in.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// The expression as written.
    text: String,
    tz: TimeZone,
    /// Whether the expression has a seconds field (otherwise it fires at second 0).
    has_seconds: bool,
    seconds: u64,
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Whether the day-of-month / day-of-week field starts with `*` (cron's rule).
    days_star: bool,
    weekdays_star: bool,
}

/// Why an expression is not a schedule; the message names the field and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleError(pub String);

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScheduleError {}

struct Field {
    name: &'static str,
    min: u8,
    max: u8,
    names: &'static [&'static str],
}

const fn field(name: &'static str, min: u8, max: u8, names: &'static [&'static str]) -> Field {
    Field {
        name,
        min,
        max,
        names,
    }
}

const SECOND: Field = field("second", 0, 59, &[]);
const MINUTE: Field = field("minute", 0, 59, &[]);
const HOUR: Field = field("hour", 0, 23, &[]);
const DAY: Field = field("day of month", 1, 31, &[]);
const MONTH: Field = field(
    "month",
    1,
    12,
    &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
);
/// 0-7, Sunday twice (7 is folded into 0 after parsing).
const WEEKDAY: Field = field(
    "day of week",
    0,
    7,
    &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
);

/// The time zone named `name` (IANA, e.g. `Europe/Berlin`, or `UTC`), from the system's
/// time zone database (`/usr/share/zoneinfo`, Debian's `tzdata` package).
pub fn time_zone(name: &str) -> Result<TimeZone, ScheduleError> {
    TimeZone::get(name).map_err(|e| {
        ScheduleError(format!(
            "unknown time zone `{name}`: write an IANA name such as \"Europe/Berlin\" or \
             \"UTC\" (read from the system's time zone database, /usr/share/zoneinfo: \
             Debian's `tzdata` package) ({e})"
        ))
    })
}

impl Schedule {
    /// Parses a cron expression whose times are read in `tz`.
    pub fn parse(text: &str, tz: TimeZone) -> Result<Schedule, ScheduleError> {
        let expr = text.trim();
        let expanded = match expr.to_ascii_lowercase().as_str() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(ScheduleError(format!(
                    "`{expr}` is not a schedule: the shorthands are @yearly, @annually, \
                     @monthly, @weekly, @daily, @midnight and @hourly"
                )));
            }
            _ => expr,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        let (has_seconds, rest) = match fields.len() {
            5 => (false, &fields[..]),
            6 => (true, &fields[1..]),
            n => {
                return Err(ScheduleError(format!(
                    "`{expr}` has {n} field(s): write 5 (minute hour day-of-month month \
                     day-of-week, e.g. \"0 2 * * *\") or 6 with a leading second field"
                )));
            }
        };
        let seconds = if has_seconds {
            set(&SECOND, fields[0])?
        } else {
            1
        };
        let mut weekdays = set(&WEEKDAY, rest[4])?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays & !(1 << 7)) | 1;
        }
        let schedule = Schedule {
            text: expr.to_string(),
            tz,
            has_seconds,
            seconds,
            minutes: set(&MINUTE, rest[0])?,
            hours: set(&HOUR, rest[1])?,
            days: set(&DAY, rest[2])?,
            months: set(&MONTH, rest[3])?,
            weekdays,
            days_star: rest[2].starts_with('*'),
            weekdays_star: rest[4].starts_with('*'),
        };
        // `30 2 31 2 *` parses but never fires: say so now rather than wait forever.
        let probe = jiff::civil::date(2000, 1, 1).at(0, 0, 0, 0);
        if schedule.next_civil(probe).is_none() {
            return Err(ScheduleError(format!(
                "`{expr}` never fires: no month has the days it names"
            )));
        }
        Ok(schedule)
    }

    /// The expression as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// The time zone's name (`UTC`, `Europe/Berlin`).
    pub fn time_zone_name(&self) -> &str {
        self.tz.iana_name().unwrap_or("an unnamed time zone")
    }

    /// `` `0 2 * * *` (UTC) `` — how logs name the schedule.
    pub fn describe(&self) -> String {
        format!("`{}` ({})", self.text, self.time_zone_name())
    }

    /// `t` as a local time of the schedule's zone, for logs: `2026-12-02 02:00:00 CET`.
    pub fn local(&self, t: Timestamp) -> String {
        t.to_zoned(self.tz.clone())
            .strftime("%Y-%m-%d %H:%M:%S %Z")
            .to_string()
    }

    /// The first time the schedule fires strictly after `t`; `None` only past the year
    /// 9990.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let mut civil = self.tz.to_datetime(t);
        // Each step moves to a later local time; only inside a repeated hour can the
        // instants found be at or before `t` (at most an hour of seconds).
        for _ in 0..10_000 {
            let c = self.next_civil(civil)?;
            let at = match self.tz.to_ambiguous_timestamp(c).offset() {
                AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(c).ok()?,
                // Skipped local time: the first instant after the gap, i.e. the transition.
                AmbiguousOffset::Gap { after, .. } => {
                    let inside = after.to_timestamp(c).ok()?;
                    self.tz.following(inside).next()?.timestamp()
                }
                // Repeated local time: the first of the two instants only.
                AmbiguousOffset::Fold { before, .. } => before.to_timestamp(c).ok()?,
            };
            if at > t {
                return Some(at);
            }
            civil = c;
        }
        None
    }

    /// The last `n` times the schedule fired at or before `t`, newest first (fewer if it
    /// did not fire that often in the last 9 years).
    pub fn previous(&self, t: Timestamp, n: usize) -> Vec<Timestamp> {
        // Look back over a window that doubles until it holds `n` times.
        let mut window = 60i64;
        let limit = i64::from(HORIZON_YEARS) * 366 * 86400;
        loop {
            let from = t
                .checked_sub(jiff::SignedDuration::from_secs(window))
                .unwrap_or(Timestamp::MIN);
            let mut found = Vec::new();
            let mut at = from;
            while let Some(next) = self.next_after(at) {
                if next > t {
                    break;
                }
                found.push(next);
                at = next;
            }
            if found.len() >= n || window >= limit {
                found.reverse();
                found.truncate(n);
                return found;
            }
            window *= 2;
        }
    }

    fn day_matches(&self, d: Date) -> bool {
        let dom = bit(self.days, d.day());
        let dow = bit(self.weekdays, d.weekday().to_sunday_zero_offset());
        if self.days_star || self.weekdays_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first local time strictly after `after` that the fields match.
    fn next_civil(&self, after: DateTime) -> Option<DateTime> {
        let start = if self.has_seconds {
            after.with().subsec_nanosecond(0).build().ok()?
        } else {
            after.with().second(0).subsec_nanosecond(0).build().ok()?
        };
        let step = if self.has_seconds {
            1.second()
        } else {
            1.minute()
        };
        let mut dt = start.checked_add(step).ok()?;
        let horizon = after.year().saturating_add(HORIZON_YEARS);
        loop {
            if dt.year() > horizon {
                return None;
            }
            if !bit(self.months, dt.month()) {
                dt = dt
                    .date()
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .into();
                continue;
            }
            if !self.day_matches(dt.date()) {
                dt = dt.date().tomorrow().ok()?.into();
                continue;
            }
            if !bit(self.hours, dt.hour()) {
                dt = dt
                    .with()
                    .minute(0)
                    .second(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if !bit(self.minutes, dt.minute()) {
                dt = dt
                    .with()
                    .second(0)
                    .build()
                    .ok()?
                    .checked_add(1.minute())
                    .ok()?;
                continue;
            }
            if !bit(self.seconds, dt.second()) {
                dt = dt.checked_add(1.second()).ok()?;
                continue;
            }
            return Some(dt);
        }
    }
}

fn bit(set: u64, value: i8) -> bool {
    u8::try_from(value).is_ok_and(|v| v < 64 && set & (1 << v) != 0)
}

/// The values one field's text names, as a bit set.
fn set(field: &Field, text: &str) -> Result<u64, ScheduleError> {
    let mut bits = 0u64;
    for part in text.split(',') {
        bits |= item(field, part)
            .map_err(|why| ScheduleError(format!("{} field `{text}`: {why}", field.name)))?;
    }
    Ok(bits)
}

/// One item of a list: `*`, `v`, `a-b`, each optionally `/step`.
fn item(field: &Field, part: &str) -> Result<u64, String> {
    if part.is_empty() {
        return Err("an empty list item".into());
    }
    let (range, step) = match part.split_once('/') {
        Some((r, s)) => {
            let step: u8 = s
                .parse()
                .map_err(|_| format!("`{s}` in `{part}` is not a step (a whole number ≥ 1)"))?;
            if step == 0 {
                return Err(format!("the step in `{part}` is 0: use 1 or more"));
            }
            (r, Some(step))
        }
        None => (part, None),
    };
    let (lo, hi) = if range == "*" {
        (field.min, field.max)
    } else if let Some((a, b)) = range.split_once('-') {
        let (a, b) = (value(field, a)?, value(field, b)?);
        if a > b {
            return Err(format!(
                "the range `{range}` runs backwards: write the smaller value first"
            ));
        }
        (a, b)
    } else {
        let v = value(field, range)?;
        // `a/n` counts from `a` to the field's end.
        (v, if step.is_some() { field.max } else { v })
    };
    let mut bits = 0u64;
    let mut v = lo;
    while v <= hi {
        bits |= 1 << v;
        match v.checked_add(step.unwrap_or(1)) {
            Some(next) => v = next,
            None => break,
        }
    }
    Ok(bits)
}

fn value(field: &Field, text: &str) -> Result<u8, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(i) = field.names.iter().position(|n| *n == lower) {
        let first = if field.min == 0 { 0 } else { 1 };
        return u8::try_from(i + first).map_err(|_| text.to_string());
    }
    let names = if field.names.is_empty() {
        String::new()
    } else {
        format!(" or a name ({}…)", field.names[..3].join(", "))
    };
    let v: u8 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number{names}"))?;
    if v < field.min || v > field.max {
        return Err(format!(
            "`{text}` is out of range: {} is {}-{}",
            field.name, field.min, field.max
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests;
