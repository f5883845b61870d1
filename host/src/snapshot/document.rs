//! Snapshot documents in the original `SnapshotService` format.
//!
//! File: `<UTC ISO time, ':' and '.' → '-'>_<type>_<action>_<name>_<id>.json`, the name with
//! every character outside `[A-Za-z0-9_-]` replaced by `_` (per UTF-16 unit, as the
//! original JavaScript did), the id percent-encoded outside `[A-Za-z0-9-]` so it is safe
//! in a file name and the last `_` always separates name and id. Every name is at most
//! [`MAX_FILE_NAME`] bytes (so that it and a sink's temporary name fit the 255 bytes file
//! systems allow): an encoded id over [`MAX_ID`] bytes
//! keeps its start and ends in `-h` and a hash of the whole id, and the name part is cut to
//! what is left. Content:
//! `{"metadata": {"id", "timestamp", "type", "entityId", "entityName", "action", "user"},
//! "data": …}` with a 2-space indent, `user` left out when unknown.

use std::fmt;

use jiff::Timestamp;
use serde_json::{Map, Value as Json};

use crate::naming;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Create,
    Update,
    Delete,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Update => "update",
            Action::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "create" => Some(Action::Create),
            "update" => Some(Action::Update),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One recorded change of one entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub entity_type: String,
    pub entity_id: String,
    pub entity_name: String,
    pub action: Action,
    pub user: Option<String>,
    pub time: Timestamp,
    pub data: Json,
}

/// The longest snapshot file name, in bytes: file systems accept 255, and a sink writes
/// under a temporary name first (`.NAME.partial-<16 hex>` for `local`, `.NAME.partial` for
/// `git`), which must fit too.
pub const MAX_FILE_NAME: usize = 200;
/// The longest encoded id kept whole in a file name.
pub const MAX_ID: usize = 96;
/// The longest entity type (so that a name keeps at least 33 readable characters).
pub const MAX_TYPE: usize = 32;

/// An entity type names files and commits: lowercase letters, digits and `-`.
pub fn check_type(t: &str) -> Result<(), String> {
    if t.len() > MAX_TYPE {
        return Err(format!(
            "entity type {:?}… is {} characters long: at most {MAX_TYPE} fit in a file name",
            t.chars().take(24).collect::<String>(),
            t.chars().count()
        ));
    }
    let ok = !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "entity type {t:?} must be lowercase letters, digits and `-` (e.g. `role`, `coorp-graph`)"
        ))
    }
}

/// `name.replace(/[^a-zA-Z0-9_-]/g, '_')` in JavaScript: one `_` per UTF-16 unit.
pub fn sanitize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
            out.push(c);
        } else {
            for _ in 0..c.len_utf16() {
                out.push('_');
            }
        }
    }
    out
}

/// Percent-encodes every byte outside `[A-Za-z0-9-]`, so an id can never add a path
/// separator, a `.` name or an `_` to a file name.
pub fn encode_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The id as it stands in a file name: [`encode_id`], or, when that is over [`MAX_ID`]
/// bytes, its first bytes (never half a `%XX`) then `-h` and 16 hex digits of the SHA-256
/// of the id, so that it stays unique and recognisable.
pub fn file_id(id: &str) -> String {
    use sha2::{Digest, Sha256};
    let encoded = encode_id(id);
    if encoded.len() <= MAX_ID {
        return encoded;
    }
    let hash = hex::encode(&Sha256::digest(id.as_bytes())[..8]);
    let mut keep = MAX_ID - 2 - hash.len();
    // Not inside a `%XX` escape: the cut would make it look like another byte.
    while let Some(pct) = encoded[..keep].rfind('%').filter(|&i| i + 3 > keep) {
        keep = pct;
    }
    format!("{}-h{hash}", &encoded[..keep])
}

/// `2025-12-10T12:00:00.000Z`, as JavaScript's `toISOString`.
pub fn iso_time(t: Timestamp) -> String {
    naming::format_time(t)
        .char_indices()
        .map(|(i, c)| match (i, c) {
            (13 | 16, '-') => ':',
            (19, '-') => '.',
            _ => c,
        })
        .collect()
}

impl Snapshot {
    /// The document's file name, at most [`MAX_FILE_NAME`] bytes (for a checked type).
    pub fn file_name(&self) -> String {
        let head = format!(
            "{}_{}_{}_",
            naming::format_time(self.time),
            self.entity_type,
            self.action
        );
        let tail = format!("_{}.json", file_id(&self.entity_id));
        let mut name = sanitize_name(&self.entity_name);
        // The sanitised name is ASCII, so any byte count is a character boundary.
        name.truncate(MAX_FILE_NAME.saturating_sub(head.len() + tail.len()));
        format!("{head}{name}{tail}")
    }

    /// `[SNAPSHOT] <action> <type>: <name> (<id>)`, with control characters escaped so
    /// that a name can never add lines to the message.
    pub fn summary(&self) -> String {
        format!(
            "[SNAPSHOT] {} {}: {} ({})",
            self.action,
            self.entity_type,
            one_line(&self.entity_name),
            one_line(&self.entity_id)
        )
    }

    pub fn to_json(&self) -> String {
        let mut meta = Map::new();
        let ms = self.time.as_millisecond();
        meta.insert("id".into(), format!("{}-{ms}", self.entity_id).into());
        meta.insert("timestamp".into(), iso_time(self.time).into());
        meta.insert("type".into(), self.entity_type.clone().into());
        meta.insert("entityId".into(), self.entity_id.clone().into());
        meta.insert("entityName".into(), self.entity_name.clone().into());
        meta.insert("action".into(), self.action.as_str().into());
        if let Some(user) = &self.user {
            meta.insert("user".into(), user.clone().into());
        }
        let mut doc = Map::new();
        doc.insert("metadata".into(), Json::Object(meta));
        doc.insert("data".into(), self.data.clone());
        // Serializing a `Value` cannot fail.
        serde_json::to_string_pretty(&Json::Object(doc)).unwrap_or_default()
    }

    /// Reads a document written by [`Snapshot::to_json`] (or by the original service).
    pub fn parse(text: &str) -> Result<Snapshot, String> {
        let doc: Json = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let meta = doc
            .get("metadata")
            .and_then(Json::as_object)
            .ok_or("no `metadata` object")?;
        let field = |k: &str| -> Result<String, String> {
            meta.get(k)
                .and_then(Json::as_str)
                .map(str::to_string)
                .ok_or(format!("metadata.{k} is missing or not a string"))
        };
        let action = field("action")?;
        let timestamp = field("timestamp")?;
        Ok(Snapshot {
            entity_type: field("type")?,
            entity_id: field("entityId")?,
            entity_name: field("entityName")?,
            action: Action::parse(&action).ok_or(format!("metadata.action {action:?}"))?,
            user: meta.get("user").and_then(Json::as_str).map(str::to_string),
            time: timestamp
                .parse()
                .map_err(|e| format!("metadata.timestamp {timestamp:?}: {e}"))?,
            data: doc.get("data").cloned().unwrap_or(Json::Null),
        })
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '\n' => "\\n".chars().collect::<Vec<_>>(),
            '\r' => "\\r".chars().collect(),
            c if c.is_control() => c.escape_unicode().collect(),
            c => vec![c],
        })
        .collect()
}

/// What a snapshot file's name says: enough to find the latest file of each entity
/// without reading them all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameParts {
    pub time: Timestamp,
    pub entity_type: String,
    pub action: Action,
    /// The id, percent-encoded as in the name.
    pub encoded_id: String,
}

impl NameParts {
    pub fn parse(name: &str) -> Option<NameParts> {
        let stem = name.strip_suffix(".json")?;
        let (time, rest) = stem.split_once('_')?;
        let (entity_type, rest) = rest.split_once('_')?;
        let (action, rest) = rest.split_once('_')?;
        let (_name, id) = rest.rsplit_once('_')?;
        Some(NameParts {
            time: naming::parse_time(time)?,
            entity_type: entity_type.to_string(),
            action: Action::parse(action)?,
            encoded_id: id.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Snapshot {
        Snapshot {
            entity_type: "role".into(),
            entity_id: "abc123".into(),
            entity_name: "MyRole".into(),
            action: Action::Create,
            user: Some("admin@example.com".into()),
            time: "2025-12-10T12:00:00Z".parse().expect("time"),
            data: serde_json::json!({"name": "MyRole", "permissions": ["read", "write"]}),
        }
    }

    #[test]
    fn the_original_file_name_and_document() {
        let s = sample();
        assert_eq!(
            s.file_name(),
            "2025-12-10T12-00-00-000Z_role_create_MyRole_abc123.json"
        );
        assert_eq!(
            s.to_json(),
            r#"{
  "metadata": {
    "id": "abc123-1765368000000",
    "timestamp": "2025-12-10T12:00:00.000Z",
    "type": "role",
    "entityId": "abc123",
    "entityName": "MyRole",
    "action": "create",
    "user": "admin@example.com"
  },
  "data": {
    "name": "MyRole",
    "permissions": [
      "read",
      "write"
    ]
  }
}"#
        );
        assert_eq!(s.summary(), "[SNAPSHOT] create role: MyRole (abc123)");
        assert_eq!(Snapshot::parse(&s.to_json()), Ok(s));
    }

    #[test]
    fn user_is_left_out_when_unknown() {
        let mut s = sample();
        s.user = None;
        assert!(!s.to_json().contains("\"user\""));
        assert_eq!(Snapshot::parse(&s.to_json()).expect("parse").user, None);
    }

    #[test]
    fn hostile_names_and_ids_stay_in_one_file_name_and_one_line() {
        let mut s = sample();
        s.entity_name = "it's \"x\" $(rm -rf /)\n; ✓ 🙂".into();
        s.entity_id = "../a_b/c.d".into();
        let name = s.file_name();
        assert_eq!(
            name,
            "2025-12-10T12-00-00-000Z_role_create_it_s__x____rm_-rf___________%2E%2E%2Fa%5Fb%2Fc%2Ed.json"
        );
        assert!(!name.contains('/') && !name.contains(".."), "{name}");
        assert!(name.ends_with("_%2E%2E%2Fa%5Fb%2Fc%2Ed.json"), "{name}");
        let parts = NameParts::parse(&name).expect("parses");
        assert_eq!(parts.encoded_id, encode_id("../a_b/c.d"));
        assert_eq!(parts.action, Action::Create);
        assert_eq!(parts.entity_type, "role");
        let summary = s.summary();
        assert!(!summary.contains('\n'), "{summary}");
        assert!(summary.contains("$(rm -rf /)\\n; ✓ 🙂"), "{summary}");
    }

    #[test]
    fn long_names_and_ids_are_bounded_unique_and_parse() {
        let mut s = sample();
        s.entity_type = "t".repeat(MAX_TYPE);
        s.entity_name = "N".repeat(240);
        s.entity_id = "i".repeat(300);
        let name = s.file_name();
        assert!(name.len() <= MAX_FILE_NAME, "{} bytes: {name}", name.len());
        let parts = NameParts::parse(&name).expect("parses");
        assert_eq!(parts.encoded_id, file_id(&s.entity_id));
        assert_eq!(parts.entity_type, s.entity_type);
        assert!(name.contains(&format!("_{}_", "N".repeat(33))), "{name}");
        let mut other = s.clone();
        other.entity_id.push('j');
        assert_ne!(file_id(&other.entity_id), file_id(&s.entity_id));
        // Escapes are never cut in half, and unicode ids are bounded too.
        for id in ["/".repeat(200), "é".repeat(200), "a/".repeat(100)] {
            let f = file_id(&id);
            assert!(f.len() <= MAX_ID, "{f}");
            let head = f.rsplit_once("-h").expect("hashed").0;
            assert!(head.len() >= 70, "{f}");
            assert!(
                head.rfind('%').is_none_or(|i| i + 3 <= head.len()),
                "a cut escape: {f}"
            );
        }
        // Short ids are unchanged.
        assert_eq!(file_id("g/1"), "g%2F1");
        assert!(check_type(&"t".repeat(MAX_TYPE + 1)).is_err());
    }

    #[test]
    fn sanitize_matches_javascript() {
        assert_eq!(sanitize_name("My Role/1.0"), "My_Role_1_0");
        assert_eq!(sanitize_name("é"), "_");
        assert_eq!(sanitize_name("🙂"), "__");
        assert_eq!(sanitize_name("ok_-9"), "ok_-9");
    }

    #[test]
    fn iso_time_is_javascripts() {
        let t: Timestamp = "2025-01-02T03:04:05.678Z".parse().expect("time");
        assert_eq!(iso_time(t), "2025-01-02T03:04:05.678Z");
    }

    #[test]
    fn types_are_checked() {
        check_type("coorp-graph").expect("ok");
        for bad in ["", "Role", "a_b", "a b", "a/b"] {
            assert!(check_type(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_that_are_not_snapshots_do_not_parse() {
        for bad in [
            "x.json",
            "2025-12-10T12-00-00-000Z_role_rename_a_b.json",
            "2025-12-10T12-00-00-000Z_role_create_a_b.txt",
            "backup-2025.sql",
        ] {
            assert_eq!(NameParts::parse(bad), None, "{bad}");
        }
    }
}
