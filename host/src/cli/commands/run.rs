//! `pipeline run`: a backup pipeline's run, or a snapshot pipeline's pull. Whatever its end,
//! a run that started is recorded in the pipeline's history ([`crate::history`]) and, with a
//! `[metrics]` table, its metrics file ([`crate::metrics`]).

use anyhow::Result;

use crate::cli::Context;
use crate::error::{self, Reason};
use crate::history::{self, Outcome, Record};
use crate::logging::{self, Format};
use crate::stages::{Mode, Prepared};
use crate::{lock, notify, runner, snapshot, stages};

/// What a run did, for its history record.
enum Done {
    Backup(runner::Outcome),
    Snapshot(snapshot::run::Recorded),
}

pub fn run(cx: &Context, pipeline: &str) -> Result<()> {
    let engine = cx.engine()?;
    let p = stages::load(engine, pipeline)?;
    let started = crate::clock::now();
    let clock = std::time::Instant::now();
    let on_start = || notify::send(engine, &p, &notify::started(&p, started));
    let result = if p.mode == Mode::Snapshot {
        snapshot::run::run(engine, &p, &on_start).map(Done::Snapshot)
    } else {
        runner::run(engine, &p, &on_start).map(Done::Backup)
    };
    let seconds = clock.elapsed().as_secs_f64();
    let (done, result) = match result {
        Ok(d) => (Some(d), Ok(())),
        Err(e) => (None, Err(e)),
    };
    if let Some(r) = record(&p, started, seconds, done.as_ref(), &result) {
        notify::send(engine, &p, &notify::ended(&r));
    }
    match done {
        Some(Done::Snapshot(r)) => report_recorded(&p, &r),
        Some(Done::Backup(o)) => report_backup(&p, &o),
        None => {}
    }
    result
}

/// Appends the run to the pipeline's history and writes its metrics, and returns the
/// record (none for a run refused the lock). A failure here is a warning: it never changes
/// the run's outcome or exit code.
fn record(
    p: &Prepared,
    started: jiff::Timestamp,
    seconds: f64,
    done: Option<&Done>,
    result: &Result<()>,
) -> Option<Record> {
    // A run refused the lock never started: it is the running one's to record.
    if let Err(e) = result
        && e.is::<error::Locked>()
    {
        return None;
    }
    let stopped = crate::shutdown::reason();
    let exit = error::exit(result, stopped.as_ref());
    let outcome = match (&stopped, exit.code) {
        (Some(Reason::Signal(_)), _) => Outcome::Stopped,
        (_, 0) => Outcome::Ok,
        _ => Outcome::Failed,
    };
    let mut r = Record {
        pipeline: p.pipeline.name.clone(),
        file: std::fs::canonicalize(&p.pipeline.file).unwrap_or_else(|_| p.pipeline.file.clone()),
        started,
        ended: crate::clock::now(),
        outcome,
        exit_code: exit.code,
        mode: match p.mode {
            Mode::Snapshot => "snapshot".into(),
            _ => "backup".into(),
        },
        artifact: None,
        size: None,
        sha256: None,
        sinks: Vec::new(),
        pruned: 0,
        snapshots: None,
        seconds,
        error: result.as_ref().err().map(history::error_summary),
    };
    match done {
        Some(Done::Backup(o)) => {
            r.artifact = Some(o.artifact.clone());
            r.size = Some(o.size);
            r.sha256 = Some(o.sha256.clone());
            r.sinks = o.sinks.clone();
            r.pruned = o.pruned;
            r.seconds = o.seconds;
        }
        Some(Done::Snapshot(s)) => {
            r.snapshots = Some(s.files.len());
            r.sinks = s.commits.iter().map(|(sink, _)| sink.clone()).collect();
            r.seconds = s.seconds;
        }
        None => {}
    }
    let key = lock::key(&p.pipeline.name, &p.pipeline.file);
    crate::metrics::record_run(&key, r.clone(), p.pipeline.metrics.as_ref(), "the run's");
    Some(r)
}

fn report_backup(p: &Prepared, o: &runner::Outcome) {
    logging::info(
        None,
        &format!(
            "pipeline `{}` succeeded: {} ({} bytes, sha256 {}) in {}; pruned {}; {:.1}s",
            p.pipeline.name,
            o.artifact,
            o.size,
            o.sha256,
            o.sinks.join(", "),
            o.pruned,
            o.seconds
        ),
    );
    if logging::format() == Format::Json {
        let report = serde_json::json!({
            "pipeline": p.pipeline.name, "artifact": o.artifact, "size": o.size,
            "sha256": o.sha256, "sinks": o.sinks, "pruned": o.pruned, "seconds": o.seconds,
        });
        println!("{report}");
    }
}

/// The last line of a snapshot pull or record (and, with `--log-format json`, its report).
pub(super) fn report_recorded(p: &Prepared, r: &snapshot::run::Recorded) {
    let commits: usize = r.commits.iter().map(|(_, ids)| ids.len()).sum();
    logging::info(
        None,
        &format!(
            "pipeline `{}` succeeded: {} snapshot(s), {commits} commit(s); {:.1}s",
            p.pipeline.name,
            r.files.len(),
            r.seconds
        ),
    );
    if logging::format() == Format::Json {
        let report = serde_json::json!({
            "pipeline": p.pipeline.name, "snapshots": r.files,
            "commits": r.commits.iter().map(|(s, ids)| serde_json::json!({"sink": s, "ids": ids})).collect::<Vec<_>>(),
            "seconds": r.seconds,
        });
        println!("{report}");
    }
}
