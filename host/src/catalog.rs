//! What a sink holds for a pipeline: its backups, each with its checksum manifest, the
//! manifest's signature and the pipeline that made it (`list`), the files a killed run left
//! (`leftovers`), the names of the files beside a backup, and retention over them
//! (`decide`, `prune`). The backup run (`runner`), `restore`/`verify` and `list` all read a
//! sink through here.

use anyhow::{Result, anyhow};

use crate::bindings::{PluginError, Stored};
use crate::clock::now;
use crate::engine::Engine;
use crate::lock;
use crate::logging;
use crate::naming;
use crate::retention::{self, Backup};
use crate::signing;
use crate::stages::component::{self, StageError};
use crate::stages::{Prepared, Ready};

/// Suffix of the checksum manifest written beside each backup, in `sha256sum` format so
/// that `sha256sum -c backup-….sql.zst.sha256` checks it without this tool.
pub const MANIFEST_SUFFIX: &str = ".sha256";

/// The line after the checksum in a manifest that names the pipeline that made the backup.
/// `sha256sum -c` (even with `--strict`) skips lines starting with `#`, so the manifest still
/// checks with the standard tool; the first line stays exactly `<sha256>  <name>`.
pub const OWNER_PREFIX: &str = "# pipeline: ";

/// The name of a backup's manifest signature: `NAME.sha256.sig`.
pub fn signature_name(backup: &str) -> String {
    format!("{backup}{MANIFEST_SUFFIX}{}", signing::SIGNATURE_SUFFIX)
}

/// Logs `message` as a warning once per process (one run), however often it comes up.
fn warn_once(stage: Option<&str>, message: String) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !seen.contains(&message) {
        logging::warn(stage, &message);
        seen.push(message);
    }
}

/// Who made a backup, as its manifest says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// This pipeline: retention may delete it.
    This,
    /// Another pipeline (named) writing the same names to the same place: never touched.
    Other(String),
    /// A manifest without an owner line: made before owners were recorded, or by another
    /// tool. Never deleted; restored and verified by default, as before.
    Unrecorded,
    /// No manifest at all: the run that wrote it did not finish. Never deleted.
    Unfinished,
}

/// A backup as listed from a sink.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub size: u64,
    pub created: jiff::Timestamp,
    /// The backup as the sink listed it: what its `get` and `delete` are handed.
    pub stored: Stored,
    /// Its checksum manifest as the sink listed it, if there is one.
    pub manifest: Option<Stored>,
    /// The manifest's signature as the sink listed it, if there is one.
    pub signature: Option<Stored>,
    pub owner: Owner,
    /// Dated more than [`retention::FUTURE_TOLERANCE`] after now: never chosen by default.
    pub future: bool,
}

impl Listed {
    pub fn has_manifest(&self) -> bool {
        self.manifest.is_some()
    }

    /// Whether `restore`/`verify` may choose it without being given its name: not another
    /// pipeline's and not dated in the future.
    pub fn chosen_by_default(&self) -> bool {
        !self.future && !matches!(self.owner, Owner::Other(_))
    }
}

/// The owner a manifest names: the first `# pipeline: NAME` line after the checksum line.
pub fn manifest_owner(text: &str) -> Option<&str> {
    text.lines()
        .skip(1)
        .find_map(|l| l.strip_prefix(OWNER_PREFIX))
        .map(str::trim)
        .filter(|n| !n.is_empty())
}

/// Every backup in one sink named like this pipeline's (other files are never returned),
/// newest first, with who made it. Warns about backups dated in the future and, once per
/// run, about other pipelines' backups under the same names.
pub fn list(engine: &Engine, p: &Prepared, sink: &Ready) -> Result<Vec<Listed>> {
    let c = &sink.run;
    let now = now();
    let mut inst = component::sink(engine, sink)?;
    let stored = inst
        .list(&c.config, p.names.prefix())
        .map_err(|e| anyhow!("{}", stage_err(e)))?;
    let manifests: std::collections::HashMap<&str, &Stored> = stored
        .iter()
        .filter_map(|s| s.name.strip_suffix(MANIFEST_SUFFIX).map(|b| (b, s)))
        .collect();
    let signatures: std::collections::HashMap<&str, &Stored> = stored
        .iter()
        .filter_map(|s| {
            s.name
                .strip_suffix(signing::SIGNATURE_SUFFIX)
                .and_then(|m| m.strip_suffix(MANIFEST_SUFFIX))
                .map(|b| (b, s))
        })
        .collect();
    let mut out = Vec::new();
    for s in &stored {
        let Some(created) = p.names.matches(&s.name) else {
            continue;
        };
        let manifest = manifests.get(s.name.as_str()).map(|m| (*m).clone());
        let owner = match &manifest {
            Some(m) => read_owner(&mut inst, &c.config, m, &p.pipeline.name)
                .map_err(|e| anyhow!("sink `{}`: {e}", sink.stage.name))?,
            None => Owner::Unfinished,
        };
        out.push(Listed {
            name: s.name.clone(),
            size: s.size,
            created,
            stored: s.clone(),
            manifest,
            signature: signatures.get(s.name.as_str()).map(|m| (*m).clone()),
            owner,
            future: retention::is_future(created, now),
        });
    }
    out.sort_by(|a, b| b.created.cmp(&a.created).then(b.name.cmp(&a.name)));

    let future: Vec<&str> = out
        .iter()
        .filter(|l| l.future && !matches!(l.owner, Owner::Other(_)))
        .map(|l| l.name.as_str())
        .collect();
    if !future.is_empty() {
        warn_once(
            Some(&sink.label()),
            format!(
                "{} dated more than {} minutes after now ({}): a run with a wrong clock made it, \
                 or it was copied here; it is never restored or verified unless named with \
                 --backup, and retention keeps it; check the clock, then delete it by hand",
                future.join(", "),
                retention::FUTURE_TOLERANCE.as_mins(),
                naming::format_time(now)
            ),
        );
    }
    let mut others: Vec<&str> = out
        .iter()
        .filter_map(|l| match &l.owner {
            Owner::Other(n) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    others.sort_unstable();
    others.dedup();
    if !others.is_empty() {
        let count = out
            .iter()
            .filter(|l| matches!(l.owner, Owner::Other(_)))
            .count();
        warn_once(
            Some(&sink.label()),
            format!(
                "this sink also holds {count} backup(s) named like pipeline `{}`'s ({}) that \
                 pipeline(s) {} made; they are never pruned, restored or verified by this \
                 pipeline, but sharing names is fragile: give each pipeline its own directory, \
                 prefix or `artifact` template",
                p.pipeline.name,
                p.names.render(now),
                others
                    .iter()
                    .map(|o| format!("`{o}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
    }
    Ok(out)
}

/// Reads a backup's `manifest` for its owner.
fn read_owner(
    inst: &mut component::Instance<crate::contract::Sink>,
    config: &str,
    manifest: &Stored,
    this: &str,
) -> Result<Owner> {
    let manifest_name = &manifest.name;
    match inst.get_bytes(config, manifest, 4096) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            Ok(match manifest_owner(&text) {
                Some(o) if o == this => Owner::This,
                Some(o) => Owner::Other(o.to_string()),
                None => Owner::Unrecorded,
            })
        }
        // Deleted since the listing.
        Err(StageError::Plugin(PluginError::NotFound(_))) => Ok(Owner::Unfinished),
        Err(e) => Err(anyhow!("reading {manifest_name}: {}", stage_err(e))),
    }
}

/// What an unfinished write left in a sink: a partial file or an upload marker.
#[derive(Debug, Clone)]
pub struct Leftover {
    pub name: String,
    pub size: u64,
    /// This pipeline's (its hash is in the name): its next run removes it.
    pub ours: bool,
}

/// The short hash of a pipeline's [lock key](lock::key) that sinks put in partial files and
/// upload markers (FNV-1a, 32 bits). The guest SDK's `artifact::owner_hash` computes the
/// same from the `pipeline-id` label; both test the same vectors, so they cannot drift.
pub fn owner_tag(id: &str) -> String {
    let h = id.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("{h:08x}")
}

/// Partial files and upload markers of names like this pipeline's backups, as the sink lists
/// them for a prefix starting with `.` (sinks that keep none list nothing).
pub fn leftovers(engine: &Engine, p: &Prepared, sink: &Ready) -> Result<Vec<Leftover>> {
    let c = &sink.run;
    let tag = owner_tag(&lock::key(&p.pipeline.name, &p.pipeline.file));
    let mut inst = component::sink(engine, sink)?;
    let stored = inst
        .list(&c.config, &format!(".{}", p.names.prefix()))
        .map_err(|e| anyhow!("{}", stage_err(e)))?;
    let mut out: Vec<Leftover> = stored
        .into_iter()
        .filter(|s| s.name.contains(".partial-") || s.name.contains(".upload-"))
        .map(|s| Leftover {
            ours: s.name.contains(&format!(".partial-{tag}-"))
                || s.name.ends_with(&format!(".upload-{tag}")),
            name: s.name,
            size: s.size,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What retention decides for this pipeline's own backups in `listed`: ages are measured from
/// [`retention::age_reference`], so a clock that ran ahead cannot make real backups old.
pub fn decide(
    listed: &[Listed],
    policy: &retention::Policy,
    now: jiff::Timestamp,
    just_written: Option<&str>,
) -> Vec<retention::Decision> {
    let own: Vec<Backup> = listed
        .iter()
        .filter(|l| l.owner == Owner::This)
        .map(|l| Backup {
            name: l.name.clone(),
            created: l.created,
        })
        .collect();
    let from = retention::age_reference(&own, now, just_written);
    retention::decide_at(&own, policy, now, from, just_written)
}

pub fn prune(
    engine: &Engine,
    p: &Prepared,
    sink: &Ready,
    policy: &retention::Policy,
    now: jiff::Timestamp,
    just_written: &str,
) -> Result<usize> {
    let listed = list(engine, p, sink)?;
    let unowned = listed
        .iter()
        .filter(|l| matches!(l.owner, Owner::Unrecorded | Owner::Unfinished))
        .count();
    if unowned > 0 && !policy.keeps_everything() {
        warn_once(
            Some(&sink.label()),
            format!(
                "{unowned} backup(s) here have no recorded owner (made before owners were \
                 recorded, by another tool, or by a run that did not finish); retention never \
                 deletes them: see `pipeline list {}` and delete them by hand",
                p.pipeline.name
            ),
        );
    }
    let decisions = decide(&listed, policy, now, Some(just_written));
    let by_name: std::collections::HashMap<&str, &Listed> =
        listed.iter().map(|l| (l.name.as_str(), l)).collect();
    let c = &sink.run;
    let mut inst = component::sink(engine, sink)?;
    let mut deleted = 0;
    let mut refused: Vec<(&retention::Decision, String)> = Vec::new();
    for d in decisions.iter().filter(|d| d.delete()) {
        // Never the backup just written, whatever the policy computed.
        if d.name == just_written {
            continue;
        }
        // Decisions are made over `listed`: each names one of its entries.
        let Some(l) = by_name.get(d.name.as_str()) else {
            continue;
        };
        match inst.delete(&c.config, &l.stored) {
            Ok(()) => {}
            // The store holds it under a lock (an Object Lock until a date): it stays, and the
            // run goes on; the lock is doing its job, not failing the run. Any other refusal
            // (a permission) fails the prune: retention that silently stops is a full disk.
            Err(StageError::Plugin(PluginError::Locked(why))) => {
                refused.push((d, why));
                continue;
            }
            Err(e) => return Err(anyhow!("deleting {}: {}", d.name, stage_err(e))),
        }
        // Then its manifest and the manifest's signature (absent when unsigned).
        for (what, file) in [
            ("manifest", &l.manifest),
            ("manifest signature", &l.signature),
        ] {
            let Some(file) = file else {
                continue;
            };
            match inst.delete(&c.config, file) {
                Ok(()) | Err(StageError::Plugin(PluginError::NotFound(_))) => {}
                Err(StageError::Plugin(PluginError::Locked(why))) => {
                    logging::info(
                        Some(&sink.label()),
                        &format!(
                            "pruned {}, but its {what} stays: it is locked: {why}",
                            d.name
                        ),
                    );
                }
                Err(e) => {
                    return Err(anyhow!(
                        "deleting the {what} of {}: {}",
                        d.name,
                        stage_err(e)
                    ));
                }
            }
        }
        logging::info(
            Some(&sink.label()),
            &format!(
                "pruned {} (created {}, no retention rule keeps it)",
                d.name,
                naming::format_time(d.created)
            ),
        );
        deleted += 1;
    }
    report_kept(sink, &refused);
    Ok(deleted)
}

/// Reports the backups retention would delete but the store holds under a lock (`locked`,
/// e.g. an Object Lock that has not ended): they are kept. Each is a line; when several are, they
/// go to the debug log and one line sums them up (a lock longer than retention may hold
/// back many at every run).
fn report_kept(sink: &Ready, refused: &[(&retention::Decision, String)]) {
    let line = |d: &retention::Decision, why: &str| {
        format!(
            "kept {} (created {}; no retention rule keeps it): it is locked: {why}; retention \
             tries again on later runs",
            d.name,
            naming::format_time(d.created)
        )
    };
    match refused {
        [] => {}
        [(d, why)] => logging::info(Some(&sink.label()), &line(d, why)),
        [.., (oldest, why)] => {
            for (d, why) in refused {
                logging::debug(Some(&sink.label()), &line(d, why));
            }
            logging::info(
                Some(&sink.label()),
                &format!(
                    "kept {} backups that no retention rule keeps: they are locked; retention \
                     tries again on later runs (-v lists each); the oldest: {}: {why}",
                    refused.len(),
                    oldest.name
                ),
            );
        }
    }
}

fn stage_err(e: StageError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn owner_tag_matches_the_sdks_owner_hash() {
        // The vectors of plugins/sdk/src/artifact.rs (FNV-1a of "" and "a").
        assert_eq!(super::owner_tag(""), "811c9dc5");
        assert_eq!(super::owner_tag("a"), "e40c292c");
    }

    #[test]
    fn a_manifest_signature_is_never_taken_for_a_backup() {
        let t = crate::naming::NameTemplate::parse("backup-{time}", &["sql", "zst"]).unwrap();
        let name = "backup-2025-12-10T02-00-00-000Z.sql.zst";
        assert!(t.matches(name).is_some());
        let sig = super::signature_name(name);
        assert_eq!(sig, format!("{name}.sha256.sig"));
        assert!(t.matches(&sig).is_none());
        assert!(sig.strip_suffix(super::MANIFEST_SUFFIX).is_none());
    }
}
