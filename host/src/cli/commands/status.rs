//! `pipeline status [NAME]`: the last runs of each pipeline (or of one), from the run
//! history in the state directory ([`crate::history`]), as a table or JSON.

use std::io::Write;

use anyhow::{Result, bail};

use crate::history::{self, Record};
use crate::progress::size;
use crate::schedule::Schedule;
use crate::{config, lock, logging};

/// The table of `records`, newest first, one line each.
pub fn table(records: &[&Record]) -> String {
    let rows: Vec<[String; 6]> = records
        .iter()
        .map(|r| {
            [
                r.pipeline.clone(),
                r.started.strftime("%Y-%m-%d %H:%M:%S UTC").to_string(),
                match r.outcome {
                    history::Outcome::Ok => "ok".to_string(),
                    o => format!("{} ({})", o.as_str(), r.exit_code),
                },
                r.artifact
                    .clone()
                    .or_else(|| r.snapshots.map(|n| format!("{n} snapshot(s)")))
                    .unwrap_or_else(|| "-".into()),
                r.size.map(size).unwrap_or_else(|| "-".into()),
                format!("{:.1}s", r.seconds),
            ]
        })
        .collect();
    let head = [
        "PIPELINE", "STARTED", "OUTCOME", "ARTIFACT", "SIZE", "DURATION",
    ];
    let mut width = head.map(str::len);
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(head.map(String::from)).chain(rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// One pipeline's shown runs (oldest first) and when its last success ended, if it is
/// in the kept history.
struct Shown {
    runs: Vec<Record>,
    last_success: Option<jiff::Timestamp>,
    /// The schedule of its file, if it has one.
    schedule: Option<Schedule>,
}

/// When a pipeline with `schedule` is behind it at `now`: its last success ended before
/// the previous-but-one time the schedule fired, so neither of the last two scheduled runs
/// succeeded (one failed or missed run, or a run still going, is not yet behind). Returns
/// that time, since when a success was expected.
pub fn overdue(
    schedule: &Schedule,
    last_success: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
) -> Option<jiff::Timestamp> {
    let since = *schedule.previous(now, 2).get(1)?;
    match last_success {
        Some(t) if t >= since => None,
        _ => Some(since),
    }
}

/// The schedule of the pipeline file a run recorded, if it still exists and has one (read
/// without the variables the rest of the file needs).
fn schedule_of(file: &std::path::Path) -> Option<Schedule> {
    if !file.is_file() {
        return None;
    }
    config::schedule_of(file).unwrap_or_else(|e| {
        logging::warn(None, &format!("the schedule was not checked: {e}"));
        None
    })
}

/// Warns about every shown pipeline that is behind its schedule; the JSON of each one's
/// schedule (`null` without one).
fn check_schedules(shown: &[Shown], now: jiff::Timestamp) -> Vec<serde_json::Value> {
    shown
        .iter()
        .map(|s| {
            let (Some(schedule), Some(last)) = (&s.schedule, s.runs.last()) else {
                return serde_json::Value::Null;
            };
            let behind = overdue(schedule, s.last_success, now);
            if let Some(since) = behind {
                let success = match s.last_success {
                    Some(t) => format!("its last success ended {}", schedule.local(t)),
                    None => "no success is recorded".into(),
                };
                logging::warn(
                    None,
                    &format!(
                        "`{}` is behind its schedule {}: a success was due since {}, the \
                         previous-but-one scheduled time, and {success}",
                        last.pipeline,
                        schedule.describe(),
                        schedule.local(since)
                    ),
                );
            }
            serde_json::json!({
                "expression": schedule.text(),
                "timezone": schedule.time_zone_name(),
                "next_run": schedule.next_after(now),
                "overdue": behind.is_some(),
                "success_due_since": behind,
            })
        })
        .collect()
}

pub fn status(
    pipeline: Option<&str>,
    json: bool,
    last: usize,
    max_age: Option<&str>,
) -> Result<()> {
    let max_age = match max_age {
        Some(s) => Some(config::parse_duration(s).ok_or_else(|| {
            crate::error::UsageError(format!(
                "--max-age `{s}` is not a duration: write e.g. \"26h\" or \"2d\""
            ))
        })?),
        None => None,
    };
    // A path names one file: its records only (matched by the file, so no variable the
    // file interpolates needs to be set). A name matches every file of that name.
    let wanted_file = match pipeline {
        Some(p) if p.contains('/') || p.ends_with(".toml") => {
            let file = config::find(p).map_err(crate::error::UsageError)?;
            Some(std::fs::canonicalize(&file).unwrap_or(file))
        }
        _ => None,
    };
    let mut shown: Vec<Shown> = Vec::new();
    for (path, read) in history::read_all()? {
        let read = match read {
            Ok(r) => r,
            Err(e) => {
                logging::warn(None, &format!("skipped a history file: {e:#}"));
                continue;
            }
        };
        if !read.bad_lines.is_empty() {
            logging::warn(
                None,
                &format!(
                    "the history file {} has {} unreadable line(s), skipped: {}",
                    path.display(),
                    read.bad_lines.len(),
                    read.bad_lines.join("; ")
                ),
            );
        }
        let mut records: Vec<Record> = read
            .records
            .into_iter()
            .filter(|r| match (&wanted_file, pipeline) {
                (Some(file), _) => &r.file == file,
                (None, Some(name)) => r.pipeline == name,
                (None, None) => true,
            })
            .collect();
        let last_success = records
            .iter()
            .rev()
            .find(|r| r.outcome == history::Outcome::Ok)
            .map(|r| r.ended);
        let start = records.len().saturating_sub(last);
        records.drain(..start);
        if let Some(newest) = records.last() {
            let schedule = schedule_of(&newest.file);
            shown.push(Shown {
                runs: records,
                last_success,
                schedule,
            });
        }
    }
    if let Some(p) = pipeline
        && shown.is_empty()
    {
        bail!(
            "no run of pipeline `{p}` is recorded in {}",
            lock::state_dir()?.display()
        );
    }
    let schedules = check_schedules(&shown, crate::clock::now());
    let mut out = logging::stdout();
    if json {
        let all: Vec<serde_json::Value> = shown
            .iter()
            .zip(schedules)
            .map(|(s, schedule)| {
                let last = s.runs.last();
                serde_json::json!({
                    "pipeline": last.map(|r| r.pipeline.as_str()),
                    "file": last.map(|r| &r.file),
                    "last_success": s.last_success,
                    "schedule": schedule,
                    "runs": s.runs.iter().rev().collect::<Vec<_>>(),
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::Value::Array(all))?;
        out.flush()?;
        return check_age(&shown, max_age);
    }
    if shown.is_empty() {
        writeln!(
            out,
            "no runs recorded yet in {}",
            lock::state_dir()?.display()
        )?;
        return Ok(());
    }
    let rows: Vec<&Record> = shown.iter().flat_map(|s| s.runs.iter().rev()).collect();
    write!(out, "{}", table(&rows))?;
    // A failed last run's reason, so the table alone tells what to look at.
    for s in &shown {
        if let Some(r) = s.runs.last()
            && let Some(e) = &r.error
        {
            writeln!(out, "{}: last run {}: {e}", r.pipeline, r.outcome.as_str())?;
        }
    }
    out.flush()?;
    check_age(&shown, max_age)
}

/// With `--max-age`: an error naming every pipeline whose last success is older than that
/// (or not in its history), so a monitoring check can run `pipeline status --max-age 26h`.
fn check_age(shown: &[Shown], max_age: Option<std::time::Duration>) -> Result<()> {
    let Some(max) = max_age else {
        return Ok(());
    };
    let now = crate::clock::now();
    let stale: Vec<String> = shown
        .iter()
        .filter_map(|s| {
            let name = &s.runs.last()?.pipeline;
            match s.last_success {
                None => Some(format!("`{name}` has no recorded success")),
                Some(t) => {
                    let age = now.duration_since(t);
                    (age.unsigned_abs() > max && age.is_positive()).then(|| {
                        format!(
                            "`{name}` last succeeded {} ago ({t})",
                            humanize(age.unsigned_abs())
                        )
                    })
                }
            }
        })
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    Err(crate::error::RunFailed(format!(
        "older than --max-age {}: {}",
        humanize(max),
        stale.join("; ")
    ))
    .into())
}

/// A duration in the largest unit that keeps it readable.
fn humanize(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behind_schedule_only_when_the_last_two_scheduled_runs_did_not_succeed() {
        let daily = Schedule::parse("0 2 * * *", jiff::tz::TimeZone::UTC).unwrap();
        let t = |s: &str| s.parse::<jiff::Timestamp>().unwrap();
        let now = t("2026-12-03T10:00:00Z");
        // Today's 02:00 run succeeded, or only today's failed: not behind.
        assert_eq!(overdue(&daily, Some(t("2026-12-03T02:05:00Z")), now), None);
        assert_eq!(overdue(&daily, Some(t("2026-12-02T02:05:00Z")), now), None);
        // Yesterday's and today's both failed: behind since yesterday's 02:00.
        assert_eq!(
            overdue(&daily, Some(t("2026-12-01T02:05:00Z")), now),
            Some(t("2026-12-02T02:00:00Z"))
        );
        assert_eq!(overdue(&daily, None, now), Some(t("2026-12-02T02:00:00Z")));
        // A run going at 02:00:30 while yesterday's succeeded: not behind.
        assert_eq!(
            overdue(
                &daily,
                Some(t("2026-12-02T02:05:00Z")),
                t("2026-12-03T02:00:30Z")
            ),
            None
        );
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(size(12), "12 B");
        assert_eq!(size(1536), "1.5 KiB");
        assert_eq!(size(3 << 30), "3.0 GiB");
    }
}
