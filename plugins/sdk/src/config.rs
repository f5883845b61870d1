//! Reading a stage's configuration.
//!
//! The host hands a plugin its stage's TOML table as JSON (after `${env:…}` interpolation
//! and after making `path` values absolute). [`parse`] reads it into the plugin's own
//! struct; mark that struct `#[serde(deny_unknown_fields)]` so unknown keys are rejected:
//!
//! ```
//! #[derive(serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct Config {
//!     path: String,
//!     #[serde(default)]
//!     verbose: bool,
//! }
//!
//! let err = pipeline_plugin_sdk::config::parse::<Config>(r#"{"path": "/b", "verbos": true}"#)
//!     .err()
//!     .map(|e| e.to_string());
//! assert_eq!(
//!     err.as_deref(),
//!     Some("configuration error: unknown key `verbos` (this plugin accepts: path, verbose)")
//! );
//! ```

use serde::de::DeserializeOwned;

use crate::PluginError;

/// Parse the configuration JSON into `T`, with [`PluginError::Config`] messages that name
/// the key at fault: `unknown key `x` (this plugin accepts: a, b)`, `missing required key
/// `url``, `key `level`: invalid type: string "x", expected i64`.
pub fn parse<T: DeserializeOwned>(json: &str) -> Result<T, PluginError> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|err| {
        PluginError::Config(format!("the configuration is not valid JSON: {err}"))
    })?;
    if !value.is_object() {
        return Err(PluginError::Config(format!(
            "the configuration must be a table, not {}",
            json_kind(&value)
        )));
    }
    serde_path_to_error::deserialize(value).map_err(|err| {
        let segments: Vec<String> = err.path().iter().map(segment).collect();
        describe(&segments, &err.inner().to_string())
    })
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "a table",
    }
}

fn segment(segment: &serde_path_to_error::Segment) -> String {
    use serde_path_to_error::Segment;
    match segment {
        Segment::Seq { index } => format!("[{index}]"),
        Segment::Map { key } => key.clone(),
        Segment::Enum { variant } => variant.clone(),
        Segment::Unknown => "?".to_owned(),
    }
}

/// `["a", "b", "[2]"]` → `a.b[2]`.
fn join(segments: &[String]) -> String {
    let mut path = String::new();
    for segment in segments {
        if !path.is_empty() && !segment.starts_with('[') {
            path.push('.');
        }
        path.push_str(segment);
    }
    path
}

/// Turn serde's wording (fields, variants) into the user's (keys, values). `segments` is
/// where the error happened: for an unknown or missing key, that is the table holding it.
fn describe(segments: &[String], message: &str) -> PluginError {
    let path = join(segments);

    if let Some(rest) = message.strip_prefix("unknown field ") {
        let (key, expected) = split_first_quoted(rest);
        // The path ends with the unknown key itself.
        let parent = match segments.split_last() {
            Some((last, parent)) if last == key => join(parent),
            _ => path,
        };
        let accepted = quoted_names(expected);
        let accepts = if accepted.is_empty() {
            "accepts no keys".to_owned()
        } else {
            format!("accepts: {}", accepted.join(", "))
        };
        return PluginError::Config(if parent.is_empty() {
            format!("unknown key `{key}` (this plugin {accepts})")
        } else {
            format!("unknown key `{key}` in `{parent}` ({accepts})")
        });
    }
    if let Some(rest) = message.strip_prefix("missing field ") {
        let (key, _) = split_first_quoted(rest);
        return PluginError::Config(if path.is_empty() {
            format!("missing required key `{key}`")
        } else {
            format!("missing required key `{key}` in `{path}`")
        });
    }
    if path.is_empty() {
        return PluginError::Config(message.to_owned());
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let (value, expected) = split_first_quoted(rest);
        let accepted = quoted_names(expected);
        return PluginError::Config(format!(
            "key `{path}`: unknown value `{value}` (expected one of: {})",
            accepted.join(", ")
        ));
    }
    PluginError::Config(format!("key `{path}`: {message}"))
}

/// `"`x`, expected …"` → `("x", ", expected …")`.
fn split_first_quoted(text: &str) -> (&str, &str) {
    let Some(start) = text.find('`') else {
        return (text, "");
    };
    let after = &text[start + 1..];
    match after.find('`') {
        Some(end) => (&after[..end], &after[end + 1..]),
        None => (after, ""),
    }
}

/// Every `` `name` `` in `text`, in order.
fn quoted_names(mut text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    while text.contains('`') {
        let (name, rest) = split_first_quoted(text);
        names.push(name);
        text = rest;
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Config {
        url: String,
        #[serde(default)]
        level: i64,
        #[serde(default)]
        format: Format,
        #[serde(default)]
        options: Vec<String>,
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Format {
        #[default]
        Plain,
        Custom,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Nested {
        inner: Inner,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        a: u8,
        b: u8,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Empty {}

    fn err<T: DeserializeOwned + std::fmt::Debug>(json: &str) -> String {
        match parse::<T>(json) {
            Err(PluginError::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn parses_with_defaults() {
        let c: Config = parse(r#"{"url": "x"}"#).expect("valid");
        assert_eq!(
            c,
            Config {
                url: "x".into(),
                level: 0,
                format: Format::Plain,
                options: vec![],
            }
        );
    }

    #[test]
    fn unknown_key_names_the_accepted_keys() {
        assert_eq!(
            err::<Config>(r#"{"url": "x", "levle": 3}"#),
            "unknown key `levle` (this plugin accepts: url, level, format, options)"
        );
        assert_eq!(
            err::<Empty>(r#"{"x": 1}"#),
            "unknown key `x` (this plugin accepts no keys)"
        );
        assert_eq!(
            err::<Nested>(r#"{"inner": {"a": 1, "c": 2}}"#),
            "unknown key `c` in `inner` (accepts: a, b)"
        );
    }

    #[test]
    fn missing_key() {
        assert_eq!(err::<Config>("{}"), "missing required key `url`");
    }

    #[test]
    fn wrong_types_name_the_key() {
        assert_eq!(
            err::<Config>(r#"{"url": "x", "level": "high"}"#),
            "key `level`: invalid type: string \"high\", expected i64"
        );
        assert_eq!(
            err::<Config>(r#"{"url": "x", "options": ["a", 3]}"#),
            "key `options[1]`: invalid type: integer `3`, expected a string"
        );
        assert_eq!(
            err::<Config>(r#"{"url": "x", "format": "tar"}"#),
            "key `format`: unknown value `tar` (expected one of: plain, custom)"
        );
        assert_eq!(
            err::<Config>("[1]"),
            "the configuration must be a table, not an array"
        );
    }

    #[test]
    fn broken_json() {
        assert!(err::<Config>("{").starts_with("the configuration is not valid JSON"));
        assert!(
            err::<Config>(r#"{"url": "x"} x"#).starts_with("the configuration is not valid JSON")
        );
    }
}
