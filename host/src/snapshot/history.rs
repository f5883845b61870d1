//! `pipeline snapshot history | show | diff`: reading an entity's snapshots back from the
//! pipeline's first sink.

use std::io::Write;

use anyhow::{Result, anyhow};

use crate::engine::Engine;
use crate::error::UsageError;
use crate::stages::Prepared;

use super::document::{Snapshot, iso_time};
use super::store::SnapshotStore;

fn store<'a>(engine: &Engine, p: &'a Prepared) -> Result<SnapshotStore<'a>> {
    let sink = p.sinks.first().ok_or_else(|| {
        anyhow!(UsageError(format!(
            "pipeline `{}` has no sink",
            p.pipeline.name
        )))
    })?;
    SnapshotStore::open(engine, sink)
}

/// One line per snapshot of the entity, newest first.
pub fn history(
    engine: &Engine,
    p: &Prepared,
    entity_type: &str,
    id: &str,
    out: &mut impl Write,
) -> Result<usize> {
    let mut s = store(engine, p)?;
    let files = s.entity_files(entity_type, id)?;
    for name in files.iter().rev() {
        let snap = s.read(name)?;
        writeln!(
            out,
            "{}  {:<6}  {}{}  {name}",
            iso_time(snap.time),
            snap.action,
            snap.entity_name,
            snap.user.map(|u| format!(" (by {u})")).unwrap_or_default()
        )?;
    }
    if files.is_empty() {
        return Err(anyhow!(UsageError(format!(
            "no snapshot of {entity_type} {id} in sink `{}`",
            s.label()
        ))));
    }
    Ok(files.len())
}

/// The document of one snapshot file, as stored.
pub fn show(engine: &Engine, p: &Prepared, file: &str, out: &mut impl Write) -> Result<()> {
    let mut s = store(engine, p)?;
    let bytes = s.get(file)?;
    out.write_all(&bytes)?;
    if !bytes.ends_with(b"\n") {
        writeln!(out)?;
    }
    Ok(())
}

/// A unified diff of the data (and name) of two snapshots of an entity: `to` defaults to
/// the newest, `from` to the one before `to`.
pub fn diff(
    engine: &Engine,
    p: &Prepared,
    entity_type: &str,
    id: &str,
    from: Option<&str>,
    to: Option<&str>,
    out: &mut impl Write,
) -> Result<()> {
    let mut s = store(engine, p)?;
    let files = s.entity_files(entity_type, id)?;
    let pick = |name: &str| -> Result<usize> {
        files.iter().position(|f| f == name).ok_or_else(|| {
            anyhow!(UsageError(format!(
                "{name} is not a snapshot of {entity_type} {id}"
            )))
        })
    };
    let to_i = match to {
        Some(n) => pick(n)?,
        None => files.len().checked_sub(1).ok_or_else(|| {
            anyhow!(UsageError(format!(
                "no snapshot of {entity_type} {id} in sink `{}`",
                s.label()
            )))
        })?,
    };
    let from_i = match from {
        Some(n) => pick(n)?,
        None => to_i.checked_sub(1).ok_or_else(|| {
            anyhow!(UsageError(format!(
                "{} is the first snapshot of {entity_type} {id}: nothing to compare it with",
                files[to_i]
            )))
        })?,
    };
    let a = s.read(&files[from_i])?;
    let b = s.read(&files[to_i])?;
    write!(out, "{}", render(&a, &files[from_i], &b, &files[to_i]))?;
    Ok(())
}

fn text(s: &Snapshot) -> String {
    let mut t = format!("name: {}\n", s.entity_name);
    t.push_str(&serde_json::to_string_pretty(&s.data).unwrap_or_default());
    t.push('\n');
    t
}

/// The unified diff of two snapshots (`name:` line and the pretty-printed data).
pub fn render(a: &Snapshot, a_name: &str, b: &Snapshot, b_name: &str) -> String {
    let (ta, tb) = (text(a), text(b));
    let diff = similar::TextDiff::from_lines(&ta, &tb);
    let body = diff
        .unified_diff()
        .context_radius(3)
        .header(a_name, b_name)
        .to_string();
    if body.is_empty() {
        format!("{a_name} and {b_name}: same name and data\n")
    } else {
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::document::Action;

    #[test]
    fn a_diff_shows_the_changed_lines() {
        let a = Snapshot {
            entity_type: "role".into(),
            entity_id: "1".into(),
            entity_name: "Admin".into(),
            action: Action::Create,
            user: None,
            time: "2025-01-01T00:00:00Z".parse().expect("t"),
            data: serde_json::json!({"perms": ["read"], "level": 1}),
        };
        let b = Snapshot {
            entity_name: "Administrators".into(),
            action: Action::Update,
            data: serde_json::json!({"perms": ["read", "write"], "level": 1}),
            ..a.clone()
        };
        let d = render(&a, "a.json", &b, "b.json");
        assert!(d.starts_with("--- a.json\n+++ b.json\n"), "{d}");
        assert!(d.contains("-name: Admin\n+name: Administrators\n"), "{d}");
        assert!(d.contains("+    \"write\"\n"), "{d}");
        assert!(
            d.contains(" \"level\": 1") || d.contains("   \"level\": 1"),
            "{d}"
        );
        assert_eq!(
            render(&a, "a.json", &a, "a.json"),
            "a.json and a.json: same name and data\n"
        );
    }
}
