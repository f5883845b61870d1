//! `pipeline list`: this pipeline's backups in each sink, newest first, with what retention
//! does with each (or, for a snapshot pipeline, its snapshots and entities per sink).

use std::io::Write;

use anyhow::Result;

use crate::cli::Context;
use crate::stages::Mode;
use crate::{catalog, clock, logging, naming, snapshot, stages};

pub fn list(cx: &Context, pipeline: &str) -> Result<()> {
    let engine = cx.engine()?;
    let p = stages::load(engine, pipeline)?;
    let now = clock::now();
    let mut out = logging::stdout();
    if p.mode == Mode::Snapshot {
        for sink in &p.sinks {
            let names = snapshot::store::SnapshotStore::open(engine, sink)?.names()?;
            let entities: std::collections::BTreeSet<(&str, &str)> = names
                .iter()
                .map(|(_, n)| (n.entity_type.as_str(), n.encoded_id.as_str()))
                .collect();
            writeln!(
                out,
                "sink {}: {} snapshots of {} entities{}",
                sink.stage.name,
                names.len(),
                entities.len(),
                names
                    .last()
                    .map(|(n, _)| format!(", newest {n}"))
                    .unwrap_or_default()
            )?;
        }
        return Ok(());
    }
    for sink in &p.sinks {
        let listed = catalog::list(engine, &p, sink)?;
        let own = listed
            .iter()
            .filter(|l| l.owner == catalog::Owner::This)
            .count();
        let mut extra = Vec::new();
        let theirs = listed
            .iter()
            .filter(|l| matches!(l.owner, catalog::Owner::Other(_)))
            .count();
        if theirs > 0 {
            extra.push(format!("{theirs} of other pipelines"));
        }
        let unowned = listed.len() - own - theirs;
        if unowned > 0 {
            extra.push(format!("{unowned} without a recorded owner"));
        }
        let extra = if extra.is_empty() {
            String::new()
        } else {
            format!("; also {}", extra.join(", "))
        };
        writeln!(out, "sink {} ({own} backups{extra})", sink.stage.name)?;
        let decisions = p
            .pipeline
            .retention
            .as_ref()
            .map(|pol| catalog::decide(&listed, pol, now, None));
        for l in &listed {
            let decision = decisions
                .as_ref()
                .and_then(|d| d.iter().find(|d| d.name == l.name));
            let verdict = match (&l.owner, decision) {
                (catalog::Owner::Other(o), _) => {
                    format!("kept: not this pipeline's (made by pipeline `{o}`)")
                }
                (catalog::Owner::Unrecorded, _) => {
                    "kept: made before owners were recorded: delete by hand".to_string()
                }
                (catalog::Owner::Unfinished, _) => {
                    "kept: unfinished, owner unknown: delete by hand".to_string()
                }
                (_, None) if l.future => "keep (dated in the future: check the clock \
                                          of the run that made it)"
                    .to_string(),
                (_, None) => "keep (no retention)".to_string(),
                (_, Some(d)) if d.delete() => "prune next run".to_string(),
                (_, Some(d)) => format!(
                    "keep ({})",
                    d.keep
                        .iter()
                        .map(|r| r.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            writeln!(
                out,
                "  {}  {:>12}  {}  {}  {}",
                l.name,
                l.size,
                naming::format_time(l.created),
                if l.has_manifest() {
                    "sha256 recorded"
                } else {
                    "NO MANIFEST (incomplete?)"
                },
                verdict
            )?;
        }
        // A sink that cannot list leftovers (a third-party one may refuse a `.`
        // prefix) only loses this part of the listing.
        let leftovers = catalog::leftovers(engine, &p, sink).unwrap_or_else(|e| {
            logging::debug(
                Some(&sink.label()),
                &format!("cannot list unfinished writes: {e:#}"),
            );
            Vec::new()
        });
        for left in leftovers {
            let why = if left.ours {
                format!(
                    "left by a run of this pipeline that did not finish: its next run \
                     removes it (or `pipeline run {}` now)",
                    p.pipeline.name
                )
            } else {
                "left by another pipeline's or an older version's run: delete it by \
                 hand once no run is going"
                    .to_string()
            };
            writeln!(out, "  {}  {:>12}  {why}", left.name, left.size)?;
        }
    }
    Ok(())
}
