//! Which stored backups to keep: a pure function of the backups, the policy and the time,
//! so every rule can be tested without a filesystem and a dry run shows exactly what would go.
//!
//! A backup is deleted only if no rule keeps it; each kept backup carries every reason that
//! applies so the user can see why it survived.

use std::fmt;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// Retention rules; all that are set apply together (a backup survives if any rule keeps it).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Policy {
    /// Keep backups younger than N days (24 h each); `Some(0)` keeps none by age.
    pub days: Option<u32>,
    /// A floor: the newest N are always kept, whatever the other rules say.
    pub keep_last: u32,
    /// Keep the newest backup of each of the N most recent UTC days that have backups.
    pub daily: Option<u32>,
    /// Same per ISO week (UTC).
    pub weekly: Option<u32>,
    /// Same per calendar month (UTC).
    pub monthly: Option<u32>,
}

impl Policy {
    /// True when no rule limits anything (no days, daily, weekly, monthly): then nothing is ever
    /// deleted. `keep_last` alone is only a floor, so it does not limit.
    pub fn keeps_everything(&self) -> bool {
        self.days.is_none()
            && self.daily.is_none()
            && self.weekly.is_none()
            && self.monthly.is_none()
    }
}

/// A stored backup as retention sees it.
#[derive(Debug, Clone)]
pub struct Backup {
    pub name: String,
    pub created: Timestamp,
}

/// Why a backup is kept; serialized in snake_case to match the config keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    JustWritten,
    KeepLast,
    Days,
    Daily,
    Weekly,
    Monthly,
    /// Dated more than [`FUTURE_TOLERANCE`] after the clock: kept and reported, never used by
    /// default, so a wrong clock can neither lose it nor make it the newest.
    Future,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Reason::JustWritten => "just written",
            Reason::KeepLast => "keep_last",
            Reason::Days => "days",
            Reason::Daily => "daily",
            Reason::Weekly => "weekly",
            Reason::Monthly => "monthly",
            Reason::Future => "dated in the future: check the clock of the run that made it",
        })
    }
}

/// The verdict for one backup; an empty `keep` means delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub name: String,
    pub created: Timestamp,
    /// Every reason that applies, in [`Reason`] declaration order.
    pub keep: Vec<Reason>,
}

impl Decision {
    pub fn delete(&self) -> bool {
        self.keep.is_empty()
    }
}

/// How far after the clock a backup's time may be before it counts as "from the future":
/// enough for clocks of different machines writing one sink to disagree a little.
pub const FUTURE_TOLERANCE: SignedDuration = SignedDuration::from_mins(5);

/// True if a backup made at `created` is dated implausibly far after `now` (a run with a
/// wrong clock, or a copied file): such a backup is never chosen by default and never pruned.
pub fn is_future(created: Timestamp, now: Timestamp) -> bool {
    created > now + FUTURE_TOLERANCE
}

/// The time retention measures ages from: the newest backup of this pipeline that is not
/// from the future and not `protect` (the one just written), or `now` if there is none.
///
/// A clock running far ahead during one run names that run's backup in the future, but it
/// cannot move this reference past the newest earlier backup, so that run prunes at most
/// what a run at the previous backup's time would have pruned. The price with a correct
/// clock is a lag of one run: a backup goes one run later than `now` alone would say.
pub fn age_reference(backups: &[Backup], now: Timestamp, protect: Option<&str>) -> Timestamp {
    backups
        .iter()
        .filter(|b| protect != Some(b.name.as_str()) && !is_future(b.created, now))
        .map(|b| b.created)
        .max()
        .map_or(now, |newest| newest.min(now))
}

/// Decisions for every backup, newest first, with ages measured from `now`; see [`decide_at`].
pub fn decide(
    backups: &[Backup],
    policy: &Policy,
    now: Timestamp,
    protect: Option<&str>,
) -> Vec<Decision> {
    decide_at(backups, policy, now, now, protect)
}

/// Decisions for every backup, newest first.
///
/// - Order: by `created` descending; equal times are ordered by name descending, i.e. the list is
///   `(created, name)` descending, so the result never depends on the input order.
/// - `protect` names the backup just written: it is always kept ([`Reason::JustWritten`]) whatever
///   its time says, because a clock that jumped must never delete it.
/// - `days`: kept while `age_from - created < N days`; a backup exactly N days old is deleted.
///   Callers pass [`age_reference`] so that a clock running ahead cannot age real backups.
/// - Backups dated more than [`FUTURE_TOLERANCE`] after `now` are always kept with
///   [`Reason::Future`]. They take no `keep_last` or daily/weekly/monthly slot, so a bad clock
///   cannot push real backups out.
/// - If [`Policy::keeps_everything`], the `keep_last` floor is unbounded: every backup without
///   another reason gets [`Reason::KeepLast`], so `delete()` is false for all.
pub fn decide_at(
    backups: &[Backup],
    policy: &Policy,
    now: Timestamp,
    age_from: Timestamp,
    protect: Option<&str>,
) -> Vec<Decision> {
    let mut sorted: Vec<&Backup> = backups.iter().collect();
    sorted.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| b.name.cmp(&a.name)));

    // Reasons are collected per rule, then merged in declaration order.
    let n = sorted.len();
    let mut just_written = vec![false; n];
    let mut keep_last = vec![false; n];
    let mut days = vec![false; n];
    let mut daily = vec![false; n];
    let mut weekly = vec![false; n];
    let mut monthly = vec![false; n];
    let mut future = vec![false; n];

    let max_age = policy
        .days
        .map(|d| SignedDuration::from_hours(i64::from(d) * 24));
    for (i, b) in sorted.iter().enumerate() {
        just_written[i] = protect == Some(b.name.as_str());
        future[i] = is_future(b.created, now);
        days[i] = match max_age {
            Some(max) => {
                !future[i] && (b.created > age_from || b.created.duration_until(age_from) < max)
            }
            None => false,
        };
    }

    // Slot-based rules see only backups not in the future; `sorted` is newest first, so the
    // first backup met in each bucket is that bucket's newest.
    let present: Vec<usize> = (0..n).filter(|&i| !future[i]).collect();
    for &i in present
        .iter()
        .take(usize::try_from(policy.keep_last).unwrap_or(usize::MAX))
    {
        keep_last[i] = true;
    }
    let utc = |i: usize| TimeZone::UTC.to_datetime(sorted[i].created).date();
    mark_buckets(&present, policy.daily, &mut daily, utc);
    mark_buckets(&present, policy.weekly, &mut weekly, |i| {
        let w = utc(i).iso_week_date();
        (w.year(), w.week())
    });
    mark_buckets(&present, policy.monthly, &mut monthly, |i| {
        let d = utc(i);
        (d.year(), d.month())
    });

    let everything = policy.keeps_everything();
    sorted
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut keep: Vec<Reason> = [
                (just_written[i], Reason::JustWritten),
                (keep_last[i], Reason::KeepLast),
                (days[i], Reason::Days),
                (daily[i], Reason::Daily),
                (weekly[i], Reason::Weekly),
                (monthly[i], Reason::Monthly),
                (future[i], Reason::Future),
            ]
            .into_iter()
            .filter_map(|(on, r)| on.then_some(r))
            .collect();
            if everything && keep.is_empty() {
                keep.push(Reason::KeepLast);
            }
            Decision {
                name: b.name.clone(),
                created: b.created,
                keep,
            }
        })
        .collect()
}

/// Until when `policy` means to keep a backup made at `created`, if a rule bounds it in time:
/// the latest of, for each time rule, the earliest moment that rule can drop it — `days`:
/// `created` + N days; `daily`/`weekly`/`monthly`: the start of its UTC day / ISO week / month
/// plus N of them (it leaves the tier when N later ones have backups). A rule keeps a backup
/// only while it is the newest of its day/week/month, so this assumes it stays so (a later
/// backup the same day takes its daily slot, and the date is then later than needed; never
/// earlier). Sinks lock backups until then (the `retain-until-ms` label), so a monthly copy
/// is locked longer than a daily one. `keep_last` counts backups, not time: it adds nothing.
/// `None` when no rule bounds time or every bound is at or before `created`. A date past
/// what a timestamp holds is [`Timestamp::MAX`] (kept for as long as anything can say).
pub fn retain_until(policy: &Policy, created: Timestamp) -> Option<Timestamp> {
    use jiff::Span;
    use jiff::civil::Date;

    let day = TimeZone::UTC.to_datetime(created).date();
    let start = |d: Date| {
        d.to_zoned(TimeZone::UTC)
            .map_or(Timestamp::MAX, |z| z.timestamp())
    };
    // Spans and dates past jiff's range (year 9999) saturate: kept as long as it can say.
    let plus = |from: Option<Date>, span: Result<Span, jiff::Error>| {
        from.zip(span.ok())
            .and_then(|(d, span)| d.checked_add(span).ok())
            .map_or(Timestamp::MAX, start)
    };
    let monday = day
        .checked_sub(Span::new().days(day.weekday().to_monday_zero_offset()))
        .ok();
    let bounds = [
        policy.days.map(|n| {
            created
                .checked_add(SignedDuration::from_hours(i64::from(n) * 24))
                .unwrap_or(Timestamp::MAX)
        }),
        policy
            .daily
            .map(|n| plus(Some(day), Span::new().try_days(i64::from(n)))),
        policy
            .weekly
            .map(|n| plus(monday, Span::new().try_weeks(i64::from(n)))),
        policy.monthly.map(|n| {
            plus(
                Some(day.first_of_month()),
                Span::new().try_months(i64::from(n)),
            )
        }),
    ];
    bounds.into_iter().flatten().max().filter(|&t| t > created)
}

/// Marks the first (newest) backup of each of the `limit` most recent buckets. Bucket keys never
/// increase along `order` (it is sorted by time), so a change of key starts a new bucket.
fn mark_buckets<K: PartialEq>(
    order: &[usize],
    limit: Option<u32>,
    marks: &mut [bool],
    key: impl Fn(usize) -> K,
) {
    let Some(limit) = limit else { return };
    let mut seen: u32 = 0;
    let mut last: Option<K> = None;
    for &i in order {
        if seen >= limit {
            break;
        }
        let k = key(i);
        if last.as_ref() != Some(&k) {
            marks[i] = true;
            seen += 1;
            last = Some(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn now() -> Timestamp {
        // A Wednesday.
        ts("2025-12-10T12:00:00Z")
    }

    fn days_ago(d: i64) -> Timestamp {
        now() - SignedDuration::from_hours(24 * d)
    }

    fn backup(name: &str, created: Timestamp) -> Backup {
        Backup {
            name: name.to_string(),
            created,
        }
    }

    /// One backup per day, `count` days ending now, named by day offset so names sort like times.
    fn daily_backups(count: i64) -> Vec<Backup> {
        (0..count)
            .map(|d| backup(&format!("b-{:04}", 9999 - d), days_ago(d)))
            .collect()
    }

    fn kept(ds: &[Decision]) -> Vec<&str> {
        ds.iter()
            .filter(|d| !d.delete())
            .map(|d| d.name.as_str())
            .collect()
    }

    fn count(ds: &[Decision], r: Reason) -> usize {
        ds.iter().filter(|d| d.keep.contains(&r)).count()
    }

    #[test]
    fn days_only_like_the_original_30_day_default() {
        let policy = Policy {
            days: Some(30),
            ..Policy::default()
        };
        let ds = decide(&daily_backups(60), &policy, now(), None);
        assert_eq!(ds.len(), 60);
        // Ages 0..=29 days kept, 30..=59 deleted.
        assert!(ds[..30].iter().all(|d| d.keep == [Reason::Days]));
        assert!(ds[30..].iter().all(Decision::delete));
    }

    #[test]
    fn boundary_exactly_n_days_old_is_deleted() {
        let policy = Policy {
            days: Some(30),
            ..Policy::default()
        };
        let just_under = days_ago(30) + SignedDuration::from_millis(1);
        let backups = [backup("exactly", days_ago(30)), backup("under", just_under)];
        let ds = decide(&backups, &policy, now(), None);
        assert_eq!(ds[0].name, "under");
        assert_eq!(ds[0].keep, [Reason::Days]);
        assert_eq!(ds[1].name, "exactly");
        assert!(ds[1].delete());
    }

    #[test]
    fn keep_last_floor_wins_over_days() {
        let policy = Policy {
            days: Some(1),
            keep_last: 3,
            ..Policy::default()
        };
        let backups: Vec<Backup> = (0..5)
            .map(|h| {
                let t = days_ago(10) + SignedDuration::from_hours(h);
                backup(&format!("b{h}"), t)
            })
            .collect();
        let ds = decide(&backups, &policy, now(), None);
        assert_eq!(kept(&ds), ["b4", "b3", "b2"]);
        assert!(ds[..3].iter().all(|d| d.keep == [Reason::KeepLast]));
    }

    #[test]
    fn days_zero_keeps_only_the_protected_backup() {
        let policy = Policy {
            days: Some(0),
            ..Policy::default()
        };
        let mut backups = daily_backups(5);
        // The one just written carries a time from a clock that jumped back a year.
        backups.push(backup("new", days_ago(365)));
        let ds = decide(&backups, &policy, now(), Some("new"));
        assert_eq!(kept(&ds), ["new"]);
        let new = ds.iter().find(|d| d.name == "new").unwrap();
        assert_eq!(new.keep, [Reason::JustWritten]);
        assert_eq!(ds.iter().filter(|d| d.delete()).count(), 5);
    }

    #[test]
    fn gfs_over_a_year_of_daily_backups() {
        let policy = Policy {
            daily: Some(7),
            weekly: Some(4),
            monthly: Some(6),
            ..Policy::default()
        };
        let backups = daily_backups(365);
        let ds = decide(&backups, &policy, now(), None);
        assert_eq!(count(&ds, Reason::Daily), 7);
        assert_eq!(count(&ds, Reason::Weekly), 4);
        assert_eq!(count(&ds, Reason::Monthly), 6);
        let kept_days: Vec<String> = ds
            .iter()
            .filter(|d| !d.delete())
            .map(|d| TimeZone::UTC.to_datetime(d.created).date().to_string())
            .collect();
        assert_eq!(
            kept_days,
            [
                "2025-12-10", // daily, weekly (ISO week from Mon 12-08), monthly
                "2025-12-09",
                "2025-12-08",
                "2025-12-07", // daily, weekly (Sunday ends the previous ISO week)
                "2025-12-06",
                "2025-12-05",
                "2025-12-04",
                "2025-11-30", // weekly, monthly
                "2025-11-23", // weekly
                "2025-10-31", // monthly
                "2025-09-30",
                "2025-08-31",
                "2025-07-31",
            ]
        );
        assert_eq!(ds[0].keep, [Reason::Daily, Reason::Weekly, Reason::Monthly]);
        assert_eq!(ds.iter().filter(|d| d.delete()).count(), 365 - 13);
    }

    #[test]
    fn weekly_uses_iso_week_year_across_new_year() {
        let policy = Policy {
            weekly: Some(10),
            ..Policy::default()
        };
        let backups = [
            backup("sun-w52", ts("2025-12-28T10:00:00Z")),
            backup("mon-w01", ts("2025-12-29T10:00:00Z")),
            backup("thu-w01", ts("2026-01-01T10:00:00Z")),
        ];
        let ds = decide(&backups, &policy, ts("2026-01-02T00:00:00Z"), None);
        assert_eq!(kept(&ds), ["thu-w01", "sun-w52"]);
    }

    #[test]
    fn empty_input() {
        let policy = Policy {
            days: Some(30),
            keep_last: 3,
            ..Policy::default()
        };
        assert!(decide(&[], &policy, now(), Some("x")).is_empty());
    }

    #[test]
    fn keeps_everything_deletes_nothing() {
        assert!(Policy::default().keeps_everything());
        let policy = Policy {
            keep_last: 2,
            ..Policy::default()
        };
        assert!(policy.keeps_everything());
        let ds = decide(&daily_backups(100), &policy, now(), Some("b-9999"));
        assert_eq!(ds.len(), 100);
        assert!(ds.iter().all(|d| !d.delete()));
        assert_eq!(ds[0].keep, [Reason::JustWritten, Reason::KeepLast]);
        assert_eq!(ds[99].keep, [Reason::KeepLast]);
        for limiting in [
            Policy {
                days: Some(30),
                ..Policy::default()
            },
            Policy {
                daily: Some(0),
                ..Policy::default()
            },
            Policy {
                weekly: Some(1),
                ..Policy::default()
            },
            Policy {
                monthly: Some(1),
                ..Policy::default()
            },
        ] {
            assert!(!limiting.keeps_everything(), "{limiting:?}");
        }
    }

    #[test]
    fn equal_timestamps_are_deterministic() {
        let t = days_ago(40);
        let names = ["c", "a", "d", "b"];
        let policy = Policy {
            days: Some(30),
            keep_last: 1,
            daily: Some(1),
            ..Policy::default()
        };
        let forward: Vec<Backup> = names.iter().map(|n| backup(n, t)).collect();
        let backward: Vec<Backup> = names.iter().rev().map(|n| backup(n, t)).collect();
        let a = decide(&forward, &policy, now(), None);
        let b = decide(&backward, &policy, now(), None);
        assert_eq!(a, b);
        let order: Vec<&str> = a.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(order, ["d", "c", "b", "a"]);
        assert_eq!(a[0].keep, [Reason::KeepLast, Reason::Daily]);
        assert!(a[1..].iter().all(Decision::delete));
    }

    #[test]
    fn future_backups_are_kept_and_take_no_slots() {
        let future1 = backup("f1", ts("2099-01-01T00:00:00Z"));
        let future2 = backup("f2", ts("2099-01-01T01:00:00Z"));
        let mut backups = daily_backups(10);
        backups.push(future1);
        backups.push(future2);

        // Without `days` they are kept as the newest; slots still go to real backups.
        let gfs = Policy {
            keep_last: 1,
            daily: Some(2),
            ..Policy::default()
        };
        let ds = decide(&backups, &gfs, now(), None);
        assert_eq!(kept(&ds), ["f2", "f1", "b-9999", "b-9998"]);
        assert_eq!(ds[0].keep, [Reason::Future]);
        assert_eq!(ds[2].keep, [Reason::KeepLast, Reason::Daily]);

        // With `days`, even `Some(0)`, they are kept as from the future.
        let days0 = Policy {
            days: Some(0),
            ..Policy::default()
        };
        let ds = decide(&backups, &days0, now(), None);
        assert_eq!(kept(&ds), ["f2", "f1"]);
        assert!(ds[..2].iter().all(|d| d.keep == [Reason::Future]));
    }

    #[test]
    fn a_few_minutes_ahead_is_not_the_future() {
        let soon = backup("soon", now() + SignedDuration::from_mins(4));
        let later = backup("later", now() + SignedDuration::from_mins(6));
        let policy = Policy {
            days: Some(1),
            ..Policy::default()
        };
        let ds = decide(&[soon, later], &policy, now(), None);
        assert_eq!(ds[0].keep, [Reason::Future]);
        assert_eq!(ds[1].keep, [Reason::Days]);
    }

    #[test]
    fn a_clock_far_ahead_prunes_no_more_than_the_previous_run_would() {
        let policy = Policy {
            days: Some(7),
            keep_last: 1,
            ..Policy::default()
        };
        // Ten daily backups up to now, then a run whose clock is two years ahead.
        let mut backups = daily_backups(10);
        let ahead = now() + SignedDuration::from_hours(2 * 365 * 24);
        backups.push(backup("ahead", ahead));
        let from = age_reference(&backups, ahead, Some("ahead"));
        assert_eq!(from, now(), "measured from the newest earlier backup");
        let wrong = decide_at(&backups, &policy, ahead, from, Some("ahead"));
        let right = decide(&daily_backups(10), &policy, now(), None);
        // Whatever a correct clock keeps, the wrong one keeps too.
        for d in right.iter().filter(|d| !d.delete()) {
            assert!(
                wrong.iter().any(|w| w.name == d.name && !w.delete()),
                "{} was kept by a correct clock",
                d.name
            );
        }
        // Back to the correct clock: the stray backup is from the future, kept, takes no slot,
        // and does not move the reference; pruning is as if it were not there.
        assert_eq!(age_reference(&backups, now(), None), now());
        let later = decide(&backups, &policy, now(), None);
        assert_eq!(later[0].name, "ahead");
        assert_eq!(later[0].keep, [Reason::Future]);
        assert_eq!(kept(&later[1..]), kept(&right));
    }

    #[test]
    fn retain_until_follows_the_longest_time_rule() {
        // Wednesday 2025-12-10 12:00 UTC: ISO week from Monday 12-08, month from 12-01.
        let made = now();
        let until = |p: Policy| retain_until(&p, made);
        assert_eq!(
            until(Policy {
                days: Some(30),
                ..Policy::default()
            }),
            Some(ts("2026-01-09T12:00:00Z"))
        );
        let daily = Policy {
            daily: Some(7),
            ..Policy::default()
        };
        assert_eq!(until(daily.clone()), Some(ts("2025-12-17T00:00:00Z")));
        let weekly = Policy {
            weekly: Some(4),
            ..Policy::default()
        };
        assert_eq!(until(weekly), Some(ts("2026-01-05T00:00:00Z")));
        let monthly = Policy {
            monthly: Some(6),
            ..Policy::default()
        };
        assert_eq!(until(monthly.clone()), Some(ts("2026-06-01T00:00:00Z")));
        // Grandfather-father-son: the longest tier wins, so a monthly copy outlives a daily one.
        let gfs = Policy {
            days: Some(3),
            keep_last: 10,
            daily: Some(7),
            weekly: Some(4),
            monthly: Some(6),
        };
        assert_eq!(until(gfs), until(monthly));
        assert!(
            until(daily)
                < retain_until(
                    &Policy {
                        monthly: Some(1),
                        ..Policy::default()
                    },
                    made
                )
        );
    }

    #[test]
    fn retain_until_covers_every_day_retention_keeps_a_backup() {
        // Daily backups at 02:00 for a year under a GFS policy. Every backup stays locked
        // at least until the day retention deletes it, and a month's last backup (the
        // monthly copy) is unlocked by then, so pruning it is not refused.
        let policy = Policy {
            days: Some(2),
            daily: Some(7),
            weekly: Some(4),
            monthly: Some(3),
            ..Policy::default()
        };
        let first = ts("2025-01-01T02:00:00Z");
        let utc_day = |t: Timestamp| TimeZone::UTC.to_datetime(t).date();
        let mut held: Vec<(Backup, Timestamp)> = Vec::new();
        let mut monthly_copies_deleted = 0;
        for d in 0..365 {
            let t = first + SignedDuration::from_hours(24 * d);
            let name = format!("b-{d:04}");
            held.push((
                backup(&name, t),
                retain_until(&policy, t).expect("time rules"),
            ));
            let all: Vec<Backup> = held.iter().map(|(b, _)| b.clone()).collect();
            let from = age_reference(&all, t, Some(&name));
            let ds = decide_at(&all, &policy, t, from, Some(&name));
            for gone in ds.iter().filter(|d| d.delete()) {
                let (b, until) = held.iter().find(|(b, _)| b.name == gone.name).unwrap();
                let day_start = utc_day(t).to_zoned(TimeZone::UTC).unwrap().timestamp();
                assert!(
                    *until >= day_start,
                    "{} deleted at {t}, locked until {until}",
                    b.name
                );
                let next_day = utc_day(b.created).tomorrow().unwrap();
                if next_day.day() == 1 {
                    assert!(*until <= t, "monthly copy {} still locked at {t}", b.name);
                    monthly_copies_deleted += 1;
                }
            }
            held.retain(|(b, _)| ds.iter().any(|d| d.name == b.name && !d.delete()));
        }
        assert!(monthly_copies_deleted >= 8, "{monthly_copies_deleted}");
    }

    #[test]
    fn retain_until_without_a_time_rule_is_none() {
        let made = now();
        assert_eq!(retain_until(&Policy::default(), made), None);
        let count_only = Policy {
            keep_last: 5,
            ..Policy::default()
        };
        assert_eq!(retain_until(&count_only, made), None);
        let zero = Policy {
            days: Some(0),
            daily: Some(0),
            ..Policy::default()
        };
        assert_eq!(retain_until(&zero, made), None);
        let forever = Policy {
            monthly: Some(u32::MAX),
            ..Policy::default()
        };
        assert_eq!(retain_until(&forever, made), Some(Timestamp::MAX));
    }

    #[test]
    fn reason_display_and_serialization() {
        let all = [
            Reason::JustWritten,
            Reason::KeepLast,
            Reason::Days,
            Reason::Daily,
            Reason::Weekly,
            Reason::Monthly,
            Reason::Future,
        ];
        let shown: Vec<String> = all.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "just written",
                "keep_last",
                "days",
                "daily",
                "weekly",
                "monthly",
                "dated in the future: check the clock of the run that made it"
            ]
        );
        assert_eq!(
            serde_json::to_string(&all).unwrap(),
            r#"["just_written","keep_last","days","daily","weekly","monthly","future"]"#
        );
    }
}
