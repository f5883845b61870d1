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
//!
//! Or declare each key once with [`config_keys!`](crate::config_keys): the macro writes
//! the struct, its `Deserialize` (unknown keys rejected, defaults applied, the same
//! messages as above) and `keys()`, the [`ConfigKey`](crate::ConfigKey) list for
//! `describe()`, with each default stated in its help:
//!
//! ```
//! pipeline_plugin_sdk::config_keys! {
//!     #[derive(Debug)]
//!     struct Config {
//!         /// Where artifacts go.
//!         #[key(Path, required, "The directory to store artifacts in")]
//!         path: String,
//!         #[key(Integer, default(6), "Compression level, 0 to 9")]
//!         level: i64,
//!         #[key(Secret, optional, "The server's password")]
//!         password: Option<String>,
//!     }
//! }
//!
//! let config: Config = pipeline_plugin_sdk::config::parse(r#"{"path": "/b"}"#).unwrap();
//! assert_eq!((config.path.as_str(), config.level, config.password), ("/b", 6, None));
//!
//! let keys = Config::keys();
//! assert_eq!(keys[1].name, "level");
//! assert!(!keys[1].required);
//! assert_eq!(keys[1].description, "Compression level, 0 to 9; default 6");
//! ```

use serde::de::DeserializeOwned;

use crate::PluginError;

#[doc(hidden)]
pub use serde as __serde;

/// Declare a plugin's configuration keys once: the struct, its `Deserialize` (read it with
/// [`parse`]) and `keys()`, the [`ConfigKey`](crate::ConfigKey)s for
/// [`PluginInfo::config_keys`](crate::PluginInfo).
///
/// Each field carries `#[key(TYPE, KIND, HELP)]` (after its doc comment, before any other
/// attribute), where `TYPE` is a [`ValueType`](crate::ValueType) variant (`Secret` for
/// keys whose values are never shown) and `KIND` is one of
///
/// * `required`: a missing key is `missing required key `name``;
/// * `optional`: a missing key is the field type's `Default` (`None`, `false`, empty);
/// * `default(EXPR)`: a missing key is `EXPR` (of the field's type); its help gets
///   `; default <EXPR's Display>` appended;
/// * `default_in_help(EXPR)`: the same default, for a help that already states it in its
///   own words (`(default "pg_dump", found on PATH)`); nothing is appended.
///
/// The key's name is the field's name. Unknown keys are rejected and a key present with a
/// wrong type (`null` included) is an error naming it, exactly as with a
/// `#[serde(deny_unknown_fields)]` struct. Checks beyond the type (ranges, non-empty)
/// stay in the plugin's code, after [`parse`]. See the [module docs](self) for an example.
#[macro_export]
macro_rules! config_keys {
    (
        $(#[$attr:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:expr])*
                #[key($vt:ident, $kind:ident $(($default:expr))?, $help:expr $(,)?)]
                $(#[$fattr:meta])*
                $fvis:vis $field:ident : $ty:ty
            ),* $(,)?
        }
    ) => {
        $(#[$attr])*
        $vis struct $name {
            $(
                $(#[doc = $doc])*
                $(#[$fattr])*
                $fvis $field: $ty,
            )*
        }

        impl $name {
            /// The configuration keys, for `PluginInfo::config_keys`.
            #[allow(dead_code)]
            $vis fn keys() -> ::std::vec::Vec<$crate::ConfigKey> {
                ::std::vec![$(
                    $crate::config_key(
                        ::core::stringify!($field),
                        $crate::ValueType::$vt,
                        $crate::config_keys!(@required $kind),
                        &$crate::config_keys!(@help $ty, $help, $kind $(($default))?),
                    ),
                )*]
            }
        }

        impl<'de> $crate::config::__serde::Deserialize<'de> for $name {
            fn deserialize<D>(deserializer: D) -> ::core::result::Result<Self, D::Error>
            where
                D: $crate::config::__serde::Deserializer<'de>,
            {
                use $crate::config::__serde as __pipeline_serde;

                /// A key that is present must parse as its type (`null` included).
                fn present<'de, D, T>(deserializer: D) -> ::core::result::Result<::core::option::Option<T>, D::Error>
                where
                    D: __pipeline_serde::Deserializer<'de>,
                    T: __pipeline_serde::Deserialize<'de>,
                {
                    T::deserialize(deserializer).map(::core::option::Option::Some)
                }

                #[derive($crate::config::__serde::Deserialize)]
                #[serde(crate = "__pipeline_serde", deny_unknown_fields)]
                struct Raw {
                    $(
                        #[serde(default, deserialize_with = "present")]
                        $field: ::core::option::Option<$ty>,
                    )*
                }

                let raw = <Raw as __pipeline_serde::Deserialize>::deserialize(deserializer)?;
                ::core::result::Result::Ok($name {
                    $(
                        $field: $crate::config_keys!(
                            @value raw.$field, $field, D, $kind $(($default))?
                        ),
                    )*
                })
            }
        }
    };

    (@required required) => { true };
    (@required optional) => { false };
    (@required default) => { false };
    (@required default_in_help) => { false };
    (@required $other:ident) => {
        ::core::compile_error!(::core::concat!(
            "config_keys!: unknown kind `", ::core::stringify!($other),
            "` (expected required, optional, default(VALUE) or default_in_help(VALUE))"
        ))
    };

    (@help $ty:ty, $help:expr, default($default:expr)) => {{
        let value: $ty = $default;
        ::std::format!("{}; default {}", $help, value)
    }};
    (@help $ty:ty, $help:expr, $kind:ident $(($default:expr))?) => {
        ::std::string::String::from($help)
    };

    (@value $raw:expr, $field:ident, $d:ident, required) => {
        match $raw {
            ::core::option::Option::Some(value) => value,
            ::core::option::Option::None => {
                return ::core::result::Result::Err(
                    <$d::Error as $crate::config::__serde::de::Error>::missing_field(
                        ::core::stringify!($field),
                    ),
                );
            }
        }
    };
    (@value $raw:expr, $field:ident, $d:ident, optional) => {
        $raw.unwrap_or_default()
    };
    (@value $raw:expr, $field:ident, $d:ident, $kind:ident($default:expr)) => {
        match $raw {
            ::core::option::Option::Some(value) => value,
            ::core::option::Option::None => $default,
        }
    };
}

/// For a plugin's tests: panics unless `keys` (what `describe()` lists) are exactly the
/// keys the configuration type `C` accepts — the same names in the same order, required
/// exactly where a missing key is an error, and typed as `C` parses them (a value of the
/// listed type is accepted, one of another type is an error naming the key). `minimal` is
/// a configuration `C` accepts. With [`config_keys!`](crate::config_keys) the two cannot
/// drift; this proves it for a plugin, and catches a hand-written list that did.
pub fn check_described_keys<C: DeserializeOwned>(
    keys: &[crate::ConfigKey],
    minimal: &serde_json::Value,
) {
    use crate::ValueType;
    use serde_json::{Value, json};
    let error = |config: &Value| parse::<C>(&config.to_string()).err().map(|e| e.to_string());
    let with = |name: &str, value: Option<Value>| {
        let mut config = minimal.clone();
        let table = config.as_object_mut().expect("a table");
        match value {
            Some(value) => table.insert(name.to_owned(), value),
            None => table.remove(name),
        };
        config
    };
    let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        error(&with("no_such_key", Some(json!(1)))),
        Some(format!(
            "configuration error: unknown key `no_such_key` (this plugin accepts: {})",
            names.join(", ")
        ))
    );
    assert_eq!(error(minimal), None);
    for key in keys {
        let name = key.name.as_str();
        let missing = error(&with(name, None))
            .is_some_and(|e| e.contains(&format!("missing required key `{name}`")));
        assert_eq!(missing, key.required, "{name}: required");
        let (right, wrong) = match key.value_type {
            ValueType::Text | ValueType::Secret | ValueType::Path => (json!("x"), json!(true)),
            ValueType::Integer => (json!(1), json!("x")),
            ValueType::Boolean => (json!(true), json!("x")),
            ValueType::TextList => (json!(["x"]), json!("x")),
            ValueType::Table => (json!([]), json!("x")),
        };
        let right = minimal.get(name).cloned().unwrap_or(right);
        let type_error = format!("key `{name}`: invalid type");
        let got = error(&with(name, Some(right)));
        assert!(
            !got.as_deref().is_some_and(|e| e.contains(&type_error)),
            "{name}: {got:?}"
        );
        let got = error(&with(name, Some(wrong)));
        assert!(
            got.as_deref()
                .is_some_and(|e| e.starts_with(&format!("configuration error: key `{name}`"))),
            "{name}: {got:?}"
        );
    }
}

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

    crate::config_keys! {
        #[derive(Debug, PartialEq)]
        struct Declared {
            /// The store.
            #[key(Text, required, "Where to")]
            url: String,
            #[key(Integer, default(6), "Level")]
            level: i64,
            #[key(Text, default("plain".into()), "Format")]
            format: String,
            #[key(Secret, optional, "Password")]
            password: Option<String>,
            #[key(TextList, optional, "Options")]
            options: Vec<String>,
            #[key(Text, default_in_help("pg_dump".into()), "Program (default pg_dump, on PATH)")]
            program: String,
        }
    }

    #[test]
    fn declared_keys_describe_themselves() {
        let keys = Declared::keys();
        let described: Vec<(&str, bool, &str)> = keys
            .iter()
            .map(|k| (k.name.as_str(), k.required, k.description.as_str()))
            .collect();
        assert_eq!(
            described,
            [
                ("url", true, "Where to"),
                ("level", false, "Level; default 6"),
                ("format", false, "Format; default plain"),
                ("password", false, "Password"),
                ("options", false, "Options"),
                ("program", false, "Program (default pg_dump, on PATH)"),
            ]
        );
        assert!(matches!(keys[3].value_type, crate::ValueType::Secret));
        assert!(matches!(keys[4].value_type, crate::ValueType::TextList));
    }

    #[test]
    fn declared_keys_parse_with_defaults() {
        let c: Declared = parse(r#"{"url": "x"}"#).expect("valid");
        assert_eq!(
            c,
            Declared {
                url: "x".into(),
                level: 6,
                format: "plain".into(),
                password: None,
                options: vec![],
                program: "pg_dump".into(),
            }
        );
        let c: Declared = parse(
            r#"{"url": "x", "level": 0, "format": "custom", "password": "p", "options": ["a"]}"#,
        )
        .expect("valid");
        assert_eq!(
            (c.level, c.format.as_str(), c.password.as_deref(), c.options),
            (0, "custom", Some("p"), vec!["a".to_owned()])
        );
    }

    #[test]
    fn declared_keys_fail_like_a_serde_struct() {
        assert_eq!(
            err::<Declared>(r#"{"url": "x", "levle": 3}"#),
            "unknown key `levle` (this plugin accepts: url, level, format, password, options, program)"
        );
        assert_eq!(err::<Declared>("{}"), "missing required key `url`");
        assert_eq!(
            err::<Declared>(r#"{"url": "x", "level": "high"}"#),
            "key `level`: invalid type: string \"high\", expected i64"
        );
        assert_eq!(
            err::<Declared>(r#"{"url": "x", "level": null}"#),
            "key `level`: invalid type: null, expected i64"
        );
        assert_eq!(
            err::<Declared>(r#"{"url": "x", "options": ["a", 3]}"#),
            "key `options[1]`: invalid type: integer `3`, expected a string"
        );
        // The same messages as the serde struct above, key for key.
        assert_eq!(
            err::<Declared>(r#"{"url": 1}"#),
            err::<Config>(r#"{"url": 1}"#)
        );
        assert_eq!(
            err::<Declared>(r#"{"url": null}"#),
            err::<Config>(r#"{"url": null}"#)
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
