//! `${env:NAME}` and `${env:NAME:-default}` in pipeline files.
//!
//! Interpolation happens inside string values after TOML parsing, so a variable's value is
//! always data: it cannot add keys or break the file's syntax. `$${` stands for a literal `${`.

/// The result of interpolating one string.
#[derive(Debug, PartialEq, Eq)]
pub struct Interpolated {
    pub value: String,
    /// Names of the variables read, for error messages ("from ${env:BACKUP_RETENTION_DAYS}").
    pub vars: Vec<String>,
}

/// Expands `s`, reading variables through `lookup`. The error says what is wrong with which
/// reference.
pub fn interpolate(
    s: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<Interpolated, String> {
    let mut value = String::with_capacity(s.len());
    let mut vars = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        value.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            value.push_str("${");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix("${") {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("`{after}` has no closing `}}`"))?;
            let expr = &tail[..end];
            let spec = expr.strip_prefix("env:").ok_or_else(|| {
                format!("`${{{expr}}}` is not a known reference: write `${{env:NAME}}` or `${{env:NAME:-default}}`")
            })?;
            let (name, default) = match spec.split_once(":-") {
                Some((name, default)) => (name, Some(default)),
                None => (spec, None),
            };
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "`${{{expr}}}`: `{name}` is not a valid environment variable name"
                ));
            }
            match (lookup(name), default) {
                (Some(v), None) => value.push_str(&v),
                (Some(v), Some(_)) if !v.is_empty() => value.push_str(&v),
                (_, Some(default)) => value.push_str(default),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (referenced as `${{env:{name}}}`; \
                         set it, or give a default with `${{env:{name}:-default}}`)"
                    ));
                }
            }
            vars.push(name.to_string());
            rest = &tail[end + 1..];
        } else {
            value.push('$');
            rest = &after[1..];
        }
    }
    value.push_str(rest);
    Ok(Interpolated { value, vars })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_unset_and_defaults() {
        assert_eq!(
            interpolate("a ${env:SET} b", env).unwrap().value,
            "a value b"
        );
        assert_eq!(
            interpolate("${env:UNSET:-./backups}", env).unwrap().value,
            "./backups"
        );
        assert_eq!(interpolate("${env:SET:-x}", env).unwrap().value, "value");
        // An empty variable takes the default, as in the shell's `:-`.
        assert_eq!(interpolate("${env:EMPTY:-30}", env).unwrap().value, "30");
        assert_eq!(interpolate("${env:EMPTY}", env).unwrap().value, "");
        assert_eq!(
            interpolate("cost $5, $${env:SET}", env).unwrap().value,
            "cost $5, ${env:SET}"
        );
        assert_eq!(
            interpolate("${env:SET}${env:UNSET:-}", env).unwrap().vars,
            ["SET", "UNSET"]
        );
    }

    #[test]
    fn errors_name_the_variable() {
        let e = interpolate("${env:DATABASE_URL}", env).unwrap_err();
        assert!(e.contains("DATABASE_URL is not set"), "{e}");
        assert!(
            interpolate("${env:A", env)
                .unwrap_err()
                .contains("no closing")
        );
        assert!(
            interpolate("${file:/etc/passwd}", env)
                .unwrap_err()
                .contains("not a known reference")
        );
        assert!(
            interpolate("${env:A B}", env)
                .unwrap_err()
                .contains("not a valid")
        );
    }
}
