//! Snapshot files in a sink: listing them by entity, reading and writing them.

use anyhow::{Result, anyhow};
use bytes::Bytes;

use std::collections::HashMap;

use crate::bindings::{ArtifactMeta, Stored};
use crate::contract::Sink as SinkPlugin;
use crate::engine::Engine;
use crate::stages::Ready;
use crate::stages::component::{self, Instance};

use super::changes;
use super::document::{NameParts, Snapshot, file_id};

/// An open sink holding snapshot files.
pub struct SnapshotStore<'a> {
    sink: &'a Ready,
    config: String,
    inst: Instance<SinkPlugin>,
    /// Every file as the sink last listed or stored it, by name: `get` and `delete` are
    /// handed what `list` returned.
    known: HashMap<String, Stored>,
}

impl<'a> SnapshotStore<'a> {
    pub fn open(engine: &Engine, sink: &'a Ready) -> Result<SnapshotStore<'a>> {
        let c = &sink.run;
        let inst = component::sink(engine, sink).map_err(|e| self::err(sink, e))?;
        Ok(SnapshotStore {
            sink,
            config: c.config.clone(),
            inst,
            known: HashMap::new(),
        })
    }

    pub fn label(&self) -> String {
        self.sink.label()
    }

    /// Every snapshot file in the sink, with what its name says, oldest first.
    pub fn names(&mut self) -> Result<Vec<(String, NameParts)>> {
        let stored = self
            .inst
            .list(&self.config, "")
            .map_err(|e| err(self.sink, e))?;
        let mut out: Vec<(String, NameParts)> = stored
            .iter()
            .filter_map(|s| NameParts::parse(&s.name).map(|p| (s.name.clone(), p)))
            .collect();
        self.known = stored.into_iter().map(|s| (s.name.clone(), s)).collect();
        out.sort_by(|a, b| a.1.time.cmp(&b.1.time).then(a.0.cmp(&b.0)));
        Ok(out)
    }

    /// The files of one entity, oldest first.
    pub fn entity_files(&mut self, entity_type: &str, id: &str) -> Result<Vec<String>> {
        let encoded = file_id(id);
        Ok(self
            .names()?
            .into_iter()
            .filter(|(_, p)| p.entity_type == entity_type && p.encoded_id == encoded)
            .map(|(n, _)| n)
            .collect())
    }

    /// The latest snapshot of every entity whose type is in `types`.
    pub fn latest(&mut self, types: &[String]) -> Result<Vec<Snapshot>> {
        let mut newest: std::collections::BTreeMap<(String, String), String> =
            std::collections::BTreeMap::new();
        for (name, parts) in self.names()? {
            if types.contains(&parts.entity_type) {
                // Sorted oldest first: the last one seen is the newest.
                newest.insert((parts.entity_type, parts.encoded_id), name);
            }
        }
        let mut all = Vec::with_capacity(newest.len());
        for name in newest.into_values() {
            all.push(self.read(&name)?);
        }
        Ok(changes::latest(all))
    }

    pub fn read(&mut self, name: &str) -> Result<Snapshot> {
        let bytes = self.get(name)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow!("{name} in sink `{}` is not UTF-8", self.label()))?;
        Snapshot::parse(&text)
            .map_err(|e| anyhow!("{name} in sink `{}` is not a snapshot: {e}", self.label()))
    }

    /// The file `name` as the sink listed it, listing again if this store has not seen it.
    fn stored(&mut self, name: &str) -> Result<Stored> {
        if !self.known.contains_key(name) {
            self.names()?;
        }
        self.known
            .get(name)
            .cloned()
            .ok_or_else(|| anyhow!("sink `{}` holds no file {name}", self.label()))
    }

    /// The bytes of file `name`.
    pub fn get(&mut self, name: &str) -> Result<Vec<u8>> {
        let stored = self.stored(name)?;
        self.inst
            .get_bytes(&self.config, &stored, usize::MAX)
            .map_err(|e| err(self.sink, e))
    }

    /// Stores `snapshot` under its file name; returns that name.
    pub fn put(&mut self, snapshot: &Snapshot) -> Result<String> {
        let name = snapshot.file_name();
        let json = snapshot.to_json();
        let meta = ArtifactMeta {
            name: name.clone(),
            content_type: "application/json".into(),
            created_ms: u64::try_from(snapshot.time.as_millisecond()).unwrap_or(0),
            size: Some(json.len() as u64),
            labels: vec![],
        };
        let stored = self
            .inst
            .put_bytes(&self.config, &meta, Bytes::from(json))
            .map_err(|e| err(self.sink, e))?;
        self.known.insert(name.clone(), stored);
        Ok(name)
    }

    /// Removes a file this run stored and could not finish recording.
    pub fn remove(&mut self, name: &str) -> Result<()> {
        let stored = self.stored(name)?;
        self.inst
            .delete(&self.config, &stored)
            .map_err(|e| err(self.sink, e))?;
        self.known.remove(name);
        Ok(())
    }
}

fn err(sink: &Ready, e: component::StageError) -> anyhow::Error {
    anyhow!("stage `{}` failed: {e}", sink.label())
}
