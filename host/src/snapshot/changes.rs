//! What changed: entities as a source reports them now against the latest snapshot of
//! each. A pure function, so the rules are tested without a database or a repository.

use std::collections::{BTreeMap, HashSet};

use jiff::Timestamp;
use serde_json::Value as Json;

use super::document::{Action, Snapshot};

/// An entity as the source reports it now.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    pub entity_type: String,
    pub entity_id: String,
    pub entity_name: String,
    pub data: Json,
    pub user: Option<String>,
}

/// The snapshots to record at `time`: `create` for an entity never seen (or seen deleted),
/// `update` when its data or name differ from its latest snapshot, `delete` for an entity
/// of a `covered` type whose latest snapshot is not a deletion and that the source no
/// longer reports. `latest` holds the newest snapshot of each entity. Entities come out
/// in the source's order, deletions last, by type and id.
pub fn detect(
    latest: &[Snapshot],
    current: &[Current],
    covered: &[String],
    time: Timestamp,
) -> Vec<Snapshot> {
    let known: BTreeMap<(&str, &str), &Snapshot> = latest
        .iter()
        .map(|s| ((s.entity_type.as_str(), s.entity_id.as_str()), s))
        .collect();
    let mut seen: HashSet<(&str, &str)> = HashSet::new();
    let mut out = Vec::new();
    for c in current {
        let key = (c.entity_type.as_str(), c.entity_id.as_str());
        seen.insert(key);
        let action = match known.get(&key) {
            None => Action::Create,
            Some(s) if s.action == Action::Delete => Action::Create,
            Some(s) if s.data != c.data || s.entity_name != c.entity_name => Action::Update,
            Some(_) => continue,
        };
        out.push(Snapshot {
            entity_type: c.entity_type.clone(),
            entity_id: c.entity_id.clone(),
            entity_name: c.entity_name.clone(),
            action,
            user: c.user.clone(),
            time,
            data: c.data.clone(),
        });
    }
    for (key, s) in &known {
        if s.action != Action::Delete && covered.iter().any(|t| t == key.0) && !seen.contains(key) {
            out.push(Snapshot {
                action: Action::Delete,
                user: None,
                time,
                ..(*s).clone()
            });
        }
    }
    out
}

/// The newest snapshot of each entity among `all` (ties: the later in `all`).
pub fn latest(all: Vec<Snapshot>) -> Vec<Snapshot> {
    let mut by_entity: BTreeMap<(String, String), Snapshot> = BTreeMap::new();
    for s in all {
        let key = (s.entity_type.clone(), s.entity_id.clone());
        match by_entity.get(&key) {
            Some(old) if old.time > s.time => {}
            _ => {
                by_entity.insert(key, s);
            }
        }
    }
    by_entity.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    fn snap(id: &str, name: &str, action: Action, data: Json) -> Snapshot {
        Snapshot {
            entity_type: "role".into(),
            entity_id: id.into(),
            entity_name: name.into(),
            action,
            user: None,
            time: t("2025-01-01T00:00:00Z"),
            data,
        }
    }

    fn cur(id: &str, name: &str, data: Json) -> Current {
        Current {
            entity_type: "role".into(),
            entity_id: id.into(),
            entity_name: name.into(),
            data,
            user: None,
        }
    }

    #[test]
    fn create_update_delete_and_nothing_for_the_unchanged() {
        let latest = vec![
            snap("1", "same", Action::Update, json!({"a": 1, "b": 2})),
            snap("2", "renamed", Action::Create, json!({})),
            snap("3", "changed", Action::Create, json!({"v": 1})),
            snap("4", "gone", Action::Create, json!({"x": true})),
            snap("5", "was deleted", Action::Delete, json!({})),
        ];
        let current = vec![
            // Key order does not make a change.
            cur("1", "same", json!({"b": 2, "a": 1})),
            cur("2", "renamed twice", json!({})),
            cur("3", "changed", json!({"v": 2})),
            cur("5", "back", json!({})),
            cur("6", "new", json!([1])),
        ];
        let now = t("2025-02-01T00:00:00Z");
        let out = detect(&latest, &current, &["role".into()], now);
        let got: Vec<(&str, Action)> = out
            .iter()
            .map(|s| (s.entity_id.as_str(), s.action))
            .collect();
        assert_eq!(
            got,
            [
                ("2", Action::Update),
                ("3", Action::Update),
                ("5", Action::Create),
                ("6", Action::Create),
                ("4", Action::Delete),
            ]
        );
        let deleted = &out[4];
        assert_eq!(deleted.entity_name, "gone");
        assert_eq!(
            deleted.data,
            json!({"x": true}),
            "a deletion keeps the last data"
        );
        assert!(out.iter().all(|s| s.time == now));
    }

    #[test]
    fn types_the_source_does_not_cover_are_never_deleted() {
        let mut pushed = snap("9", "graph", Action::Create, json!({}));
        pushed.entity_type = "coorp-graph".into();
        let out = detect(&[pushed], &[], &["role".into()], t("2025-02-01T00:00:00Z"));
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_second_look_with_no_change_finds_nothing() {
        let current = vec![cur("1", "a", json!({"k": [1, 2]}))];
        let first = detect(&[], &current, &["role".into()], t("2025-01-01T00:00:00Z"));
        assert_eq!(first.len(), 1);
        let second = detect(
            &first,
            &current,
            &["role".into()],
            t("2025-01-02T00:00:00Z"),
        );
        assert!(second.is_empty(), "{second:?}");
    }

    #[test]
    fn latest_keeps_the_newest_of_each_entity() {
        let mut old = snap("1", "a", Action::Create, json!(1));
        old.time = t("2025-01-01T00:00:00Z");
        let mut new = snap("1", "a", Action::Update, json!(2));
        new.time = t("2025-01-02T00:00:00Z");
        let other = snap("2", "b", Action::Create, json!(3));
        let l = latest(vec![new.clone(), old, other.clone()]);
        assert_eq!(l, vec![new, other]);
    }
}
