//! `pipeline run`: a backup pipeline's run, or a snapshot pipeline's pull.

use anyhow::Result;

use crate::cli::Context;
use crate::logging::{self, Format};
use crate::stages::{Mode, Prepared};
use crate::{runner, snapshot, stages};

pub fn run(cx: &Context, pipeline: &str) -> Result<()> {
    let engine = cx.engine()?;
    let p = stages::load(engine, pipeline)?;
    if p.mode == Mode::Snapshot {
        let r = snapshot::run::run(engine, &p)?;
        report_recorded(&p, &r);
        return Ok(());
    }
    let o = runner::run(engine, &p)?;
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
    Ok(())
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
