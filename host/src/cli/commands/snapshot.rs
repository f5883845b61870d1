//! `pipeline snapshot record | history | show | diff`: a change an application reports, and
//! an entity's history read back.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use crate::cli::Context;
use crate::cli::args::EntityArgs;
use crate::engine::Engine;
use crate::error::UsageError;
use crate::snapshot::{document, history};
use crate::stages::{Mode, Prepared};
use crate::{logging, snapshot, stages};

use super::run::report_recorded;

/// Records one change: the entity's JSON from `data` (or stdin) in every sink.
pub fn record(
    cx: &Context,
    pipeline: &str,
    entity: &EntityArgs,
    name: &str,
    action: &str,
    user: Option<&String>,
    data: Option<&Path>,
) -> Result<()> {
    let engine = cx.engine()?;
    let mut out = logging::stdout();
    let p = snapshot_pipeline(engine, pipeline)?;
    let action = document::Action::parse(action).ok_or_else(|| {
        UsageError(format!(
            "--action {action:?}: must be create, update or delete"
        ))
    })?;
    let text = match data {
        None => read_stdin()?,
        Some(f) if f == Path::new("-") => read_stdin()?,
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| UsageError(format!("--data {}: {e}", f.display())))?,
    };
    let data = if text.trim().is_empty() && action == document::Action::Delete {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text)
            .map_err(|e| UsageError(format!("the entity's data is not JSON: {e}")))?
    };
    let snap = document::Snapshot {
        entity_type: entity.entity_type.clone(),
        entity_id: entity.id.clone(),
        entity_name: name.to_string(),
        action,
        user: user.cloned(),
        time: jiff::Timestamp::now(),
        data,
    };
    let r = snapshot::run::record_one(engine, &p, &snap)?;
    report_recorded(&p, &r);
    for f in &r.files {
        writeln!(out, "{f}")?;
    }
    Ok(())
}

/// The snapshots of one entity, newest first.
pub fn history(cx: &Context, pipeline: &str, entity: &EntityArgs) -> Result<()> {
    let engine = cx.engine()?;
    let mut out = logging::stdout();
    let p = snapshot_pipeline(engine, pipeline)?;
    history::history(engine, &p, &entity.entity_type, &entity.id, &mut out)?;
    Ok(())
}

/// One snapshot document as stored.
pub fn show(cx: &Context, pipeline: &str, file: &str) -> Result<()> {
    let engine = cx.engine()?;
    let mut out = logging::stdout();
    let p = snapshot_pipeline(engine, pipeline)?;
    history::show(engine, &p, file, &mut out)
}

/// A unified diff of an entity's name and data between two snapshots.
pub fn diff(
    cx: &Context,
    pipeline: &str,
    entity: &EntityArgs,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<()> {
    let engine = cx.engine()?;
    let mut out = logging::stdout();
    let p = snapshot_pipeline(engine, pipeline)?;
    history::diff(
        engine,
        &p,
        &entity.entity_type,
        &entity.id,
        from,
        to,
        &mut out,
    )
}

fn snapshot_pipeline(engine: &Engine, pipeline: &str) -> Result<Prepared> {
    let p = stages::load(engine, pipeline)?;
    if p.mode != Mode::Snapshot {
        anyhow::bail!(UsageError(format!(
            "pipeline `{}` is not a snapshot pipeline (its source `{}` reports no entities)",
            p.pipeline.name, p.pipeline.source.plugin
        )));
    }
    Ok(p)
}

fn read_stdin() -> Result<String> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
        .map_err(|e| UsageError(format!("cannot read the entity's data from stdin: {e}")))?;
    Ok(text)
}
