//! `pg-snapshot`: a snapshot source that reads entities from PostgreSQL.
//!
//! Each entity type is a query returning `id`, `name`, the entity as JSON, and optionally
//! who changed it last:
//!
//! ```toml
//! [[source.entities]]
//! type = "role"
//! query = "SELECT id::text, name, to_jsonb(r) - 'updated_at', updated_by FROM roles r"
//! ```
//!
//! Queries go through the host's `postgres` capability, read-only, on the one database the
//! stage is granted (its `url`). The host compares the entities with the latest snapshots
//! and records only what changed.

use std::collections::HashSet;

use pipeline_plugin_sdk::snapshot::{Entity, Inventory, Source, postgres};
use pipeline_plugin_sdk::{Grant, Plugin, PluginError, PluginInfo, PluginKind, StagePlan, config};
use serde::Deserialize;

pipeline_plugin_sdk::config_keys! {
    #[derive(Debug)]
    struct Config {
        #[key(Secret, required, "Database URL (postgres://user:password@host:port/db)")]
        url: String,
        #[key(
            Table,
            required,
            "Entity types: [[source.entities]] with `type` and `query` (id, name, JSON data [, user])",
        )]
        entities: Vec<EntityType>,
    }
}

/// One `[[source.entities]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntityType {
    #[serde(rename = "type")]
    entity_type: String,
    query: String,
}

impl Config {
    fn parse(json: &str) -> Result<Config, PluginError> {
        let config: Config = config::parse(json)?;
        if !(config.url.starts_with("postgres://") || config.url.starts_with("postgresql://")) {
            return Err(PluginError::Config(
                "key `url`: must be a postgres:// or postgresql:// URL".into(),
            ));
        }
        if config.entities.is_empty() {
            return Err(PluginError::Config(
                "key `entities`: declare at least one entity type ([[source.entities]] with `type` and `query`)".into(),
            ));
        }
        let mut seen = HashSet::new();
        for (i, e) in config.entities.iter().enumerate() {
            let at = format!("entities[{i}]");
            check_type(&e.entity_type)
                .map_err(|m| PluginError::Config(format!("{at}.type: {m}")))?;
            if !seen.insert(e.entity_type.as_str()) {
                return Err(PluginError::Config(format!(
                    "{at}.type: `{}` is declared twice",
                    e.entity_type
                )));
            }
            if e.query.trim().is_empty() {
                return Err(PluginError::Config(format!(
                    "{at}.query: must not be empty"
                )));
            }
        }
        Ok(config)
    }
}

fn check_type(t: &str) -> Result<(), String> {
    let ok = !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{t:?} must be lowercase letters, digits and `-` (it is part of file names)"
        ))
    }
}

/// Rows of one entity type: `id, name, data [, user]`, as text.
fn entities_of(
    entity_type: &str,
    rows: Vec<Vec<Option<String>>>,
) -> Result<Vec<Entity>, PluginError> {
    let mut out = Vec::with_capacity(rows.len());
    for (i, row) in rows.into_iter().enumerate() {
        if row.len() < 3 || row.len() > 4 {
            return Err(PluginError::Config(format!(
                "the query of `{entity_type}` returned {} columns; it must return id, name, data (JSON) and optionally user",
                row.len()
            )));
        }
        let mut cols = row.into_iter();
        let id = cols.next().flatten().ok_or_else(|| {
            PluginError::Other(format!("`{entity_type}` row {}: the id is NULL", i + 1))
        })?;
        let name = cols.next().flatten().unwrap_or_default();
        let data = cols
            .next()
            .flatten()
            .ok_or_else(|| PluginError::Other(format!("`{entity_type}` {id}: the data is NULL")))?;
        let user = cols.next().flatten();
        out.push(Entity {
            entity_type: entity_type.to_string(),
            entity_id: id,
            entity_name: name,
            data,
            user,
        });
    }
    Ok(out)
}

struct PgSnapshot;

impl Plugin for PgSnapshot {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: "pg-snapshot".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: PluginKind::Source,
            description: "Entities from PostgreSQL queries, for snapshot pipelines".into(),
            config_keys: Config::keys(),
        }
    }

    fn plan(config: String) -> Result<StagePlan, PluginError> {
        let config = Config::parse(&config)?;
        Ok(StagePlan {
            extension: None,
            content_type: Some("application/json".into()),
            grants: vec![Grant::Database(config.url)],
        })
    }
}

impl Source for PgSnapshot {
    fn entities(config: String) -> Result<Inventory, PluginError> {
        let config = Config::parse(&config)?;
        let mut entities = Vec::new();
        for e in &config.entities {
            let rows = postgres::query(&e.query)
                .map_err(|err| err.context(format!("entity type `{}`", e.entity_type)))?;
            entities.extend(entities_of(&e.entity_type, rows)?);
        }
        Ok(Inventory {
            types: config.entities.into_iter().map(|e| e.entity_type).collect(),
            entities,
        })
    }
}

pipeline_plugin_sdk::export_snapshot_source!(PgSnapshot);

#[cfg(test)]
mod tests {
    use super::*;

    /// `describe()` lists exactly the keys `Config` accepts: the same names in the same
    /// order, required exactly where a missing key is an error, typed as `Config` parses them.
    #[test]
    fn described_keys_are_the_accepted_keys() {
        pipeline_plugin_sdk::config::check_described_keys::<Config>(
            &PgSnapshot::describe().config_keys,
            &serde_json::json!({"url": "postgres://u@h/db", "entities": [{"type": "role", "query": "SELECT 1"}]}),
        );
    }

    #[test]
    fn config_is_checked() {
        let ok =
            r#"{"url": "postgres://u@h/db", "entities": [{"type": "role", "query": "SELECT 1"}]}"#;
        Config::parse(ok).expect("valid");
        for (bad, says) in [
            (
                r#"{"url": "mysql://x", "entities": [{"type": "role", "query": "q"}]}"#,
                "url",
            ),
            (r#"{"url": "postgres://x", "entities": []}"#, "at least one"),
            (
                r#"{"url": "postgres://x", "entities": [{"type": "Role", "query": "q"}]}"#,
                "entities[0].type",
            ),
            (
                r#"{"url": "postgres://x", "entities": [{"type": "a", "query": "q"}, {"type": "a", "query": "q"}]}"#,
                "twice",
            ),
            (
                r#"{"url": "postgres://x", "entities": [{"type": "a", "query": " "}]}"#,
                "query",
            ),
            (
                r#"{"url": "postgres://x", "entities": [{"type": "a", "query": "q", "x": 1}]}"#,
                "x",
            ),
        ] {
            let e = Config::parse(bad).expect_err(bad);
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
        let e = Config::parse(
            r#"{"url": "postgres://x", "entities": [{"type": "a", "query": "q", "x": 1}]}"#,
        )
        .expect_err("unknown key");
        assert_eq!(
            e.to_string(),
            "configuration error: unknown key `x` in `entities[0]` (accepts: type, query)"
        );
    }

    #[test]
    fn rows_become_entities() {
        let rows = vec![
            vec![Some("1".into()), Some("Admin".into()), Some("{}".into())],
            vec![
                Some("2".into()),
                None,
                Some("[]".into()),
                Some("bob".into()),
            ],
        ];
        let e = entities_of("role", rows).expect("ok");
        assert_eq!(e[0].entity_name, "Admin");
        assert_eq!(e[1].entity_name, "");
        assert_eq!(e[1].user.as_deref(), Some("bob"));
        let err =
            entities_of("role", vec![vec![None, None, Some("{}".into())]]).expect_err("null id");
        assert!(err.to_string().contains("id is NULL"), "{err}");
        let err = entities_of("role", vec![vec![Some("1".into())]]).expect_err("1 column");
        assert!(err.to_string().contains("returned 1 columns"), "{err}");
    }
}
