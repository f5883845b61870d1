//! Registry credentials: `PIPELINE_REGISTRY_USERNAME`/`PIPELINE_REGISTRY_PASSWORD` for the
//! one registry `PIPELINE_REGISTRY_HOST` names, else the registry's entry in the Docker
//! config file; the `WWW-Authenticate` challenge a registry answers with; and which token
//! realm may be sent them. A password is registered with the log's redactor as soon as it
//! is read and never formatted into a message.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

pub const ENV_USER: &str = "PIPELINE_REGISTRY_USERNAME";
pub const ENV_PASSWORD: &str = "PIPELINE_REGISTRY_PASSWORD";
/// The registry (`host[:port]`) the two above are for; they are sent to no other.
pub const ENV_HOST: &str = "PIPELINE_REGISTRY_HOST";

/// A user name and password, and where they were found (for messages).
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    password: String,
    /// `PIPELINE_REGISTRY_USERNAME/PASSWORD` or the config file's path.
    pub source: String,
    /// Found in the Docker config file's entry for the registry (not in the environment).
    docker: bool,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Credentials({} from {}, password ***)",
            self.user, self.source
        )
    }
}

impl Credentials {
    fn new(user: String, password: String, source: String, docker: bool) -> Credentials {
        let mut r = crate::redact::Redactor::default();
        r.add_opaque(&password);
        r.add_opaque(&STANDARD.encode(format!("{user}:{password}")));
        crate::logging::add_secrets(&r);
        Credentials {
            user,
            password,
            source,
            docker,
        }
    }

    /// The `Authorization` value of HTTP Basic authentication.
    pub fn basic(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.user, self.password))
        )
    }
}

/// What the environment and the Docker config file hold for one registry.
#[derive(Debug, Clone)]
pub enum Found {
    Credentials(Credentials),
    /// The config file names a credential helper for it, which is not run.
    Helper {
        helper: String,
        file: PathBuf,
    },
    None,
}

/// The credentials for `registry` (`host:port`): the environment's if
/// `PIPELINE_REGISTRY_HOST` names this registry, else the Docker config file's
/// (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`).
pub fn lookup(registry: &str) -> Result<Found, String> {
    let var = |k| std::env::var(k).ok();
    if let Some(c) = from_env(var(ENV_USER), var(ENV_PASSWORD), var(ENV_HOST), registry)? {
        return Ok(Found::Credentials(c));
    }
    let Some(file) = docker_config_path() else {
        return Ok(Found::None);
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Found::None),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    from_docker_config(&text, registry, file)
}

/// The environment's credentials, if they are for `registry`. Without
/// `PIPELINE_REGISTRY_HOST` they are refused rather than sent to whatever registry asks.
fn from_env(
    user: Option<String>,
    password: Option<String>,
    host: Option<String>,
    registry: &str,
) -> Result<Option<Credentials>, String> {
    let (user, password) = match (user, password) {
        (Some(u), Some(p)) => (u, p),
        (Some(_), None) => return Err(format!("{ENV_USER} is set but {ENV_PASSWORD} is not")),
        (None, Some(_)) => return Err(format!("{ENV_PASSWORD} is set but {ENV_USER} is not")),
        (None, None) => return Ok(None),
    };
    let Some(host) = host else {
        return Err(format!(
            "{ENV_USER} and {ENV_PASSWORD} are set but {ENV_HOST} is not: set it to the registry they are for (`host:port`, here `{registry}`); they are sent to no other"
        ));
    };
    if !host.trim().eq_ignore_ascii_case(registry) {
        return Ok(None);
    }
    Ok(Some(Credentials::new(
        user,
        password,
        format!("{ENV_USER}/{ENV_PASSWORD}"),
        false,
    )))
}

/// Whether a token realm may be sent `creds` (else an anonymous token is asked for): a
/// realm on the registry's own host (any port), or, for credentials from the Docker config
/// file's entry for this registry, any https realm (what docker itself does).
pub fn realm_gets_credentials(realm: &http::Uri, registry_host: &str, creds: &Credentials) -> bool {
    let same_host = realm.host().is_some_and(|h| {
        h.trim_matches(['[', ']'])
            .eq_ignore_ascii_case(registry_host.trim_matches(['[', ']']))
    });
    same_host || creds.docker && realm.scheme() == Some(&http::uri::Scheme::HTTPS)
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker/config.json"))
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(serde::Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// The entry for `registry` in a Docker config file's text. Keys are matched by host and
/// port, whatever scheme or path they were written with (`https://host/v1/`).
fn from_docker_config(text: &str, registry: &str, file: PathBuf) -> Result<Found, String> {
    // The file's own parse error may quote its content (a password): name the file only.
    let config: DockerConfig = serde_json::from_str(text).map_err(|e| {
        format!(
            "{} is not a Docker config file (line {}, column {})",
            file.display(),
            e.line(),
            e.column()
        )
    })?;
    let key_host = |k: &str| {
        let k = k
            .strip_prefix("https://")
            .or_else(|| k.strip_prefix("http://"))
            .unwrap_or(k);
        k.split('/').next().unwrap_or(k).to_ascii_lowercase()
    };
    if let Some((_, entry)) = config.auths.iter().find(|(k, _)| key_host(k) == registry) {
        let source = file.display().to_string();
        if let Some(auth) = &entry.auth {
            let decoded = STANDARD
                .decode(auth.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    format!("{source}: auths.\"{registry}\".auth is not base64 of `user:password`")
                })?;
            let (user, password) = decoded.split_once(':').ok_or_else(|| {
                format!("{source}: auths.\"{registry}\".auth is not base64 of `user:password`")
            })?;
            return Ok(Found::Credentials(Credentials::new(
                user.into(),
                password.into(),
                source,
                true,
            )));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Found::Credentials(Credentials::new(
                u.clone(),
                p.clone(),
                source,
                true,
            )));
        }
    }
    let helper = config
        .cred_helpers
        .iter()
        .find(|(k, _)| key_host(k) == registry)
        .map(|(_, h)| h.clone())
        .or(config.creds_store);
    Ok(match helper {
        Some(helper) => Found::Helper { helper, file },
        None => Found::None,
    })
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(params);
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    Some(Challenge::Bearer {
        realm: get("realm")?,
        service: get("service"),
        scope: get("scope"),
    })
}

/// `k="v, with commas",k2=v2` → pairs.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.peek().copied() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        out.push((key.trim().to_string(), value.trim().to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:acme/sink:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:acme/sink:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge("bearer realm=https://a/token"),
            Some(Challenge::Bearer {
                realm: "https://a/token".into(),
                service: None,
                scope: None
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn environment_credentials_go_only_to_the_registry_they_name() {
        let s = |v: &str| Some(v.to_string());
        let c = from_env(s("u"), s("pw"), s("Reg.Example:5000"), "reg.example:5000")
            .unwrap()
            .expect("for this registry");
        assert_eq!(c.user, "u");
        assert!(!c.docker);
        // Another registry gets none of them.
        assert!(
            from_env(s("u"), s("pw"), s("reg.example:5000"), "evil.example")
                .unwrap()
                .is_none()
        );
        assert!(
            from_env(s("u"), s("pw"), s("reg.example:5000"), "reg.example:5001")
                .unwrap()
                .is_none()
        );
        // Without PIPELINE_REGISTRY_HOST: refused, naming the variable.
        let err = from_env(s("u"), s("pw"), None, "reg.example").unwrap_err();
        assert!(err.contains(ENV_HOST) && !err.contains("pw"), "{err}");
        assert!(
            from_env(s("u"), None, None, "r")
                .unwrap_err()
                .contains(ENV_PASSWORD)
        );
        assert!(from_env(None, None, s("r"), "r").unwrap().is_none());
    }

    #[test]
    fn a_token_realm_gets_credentials_only_on_the_registry_host_or_from_docker_config() {
        let env = Credentials::new("u".into(), "pw".into(), "env".into(), false);
        let docker = Credentials::new("u".into(), "pw".into(), "config.json".into(), true);
        let uri = |u: &str| u.parse::<http::Uri>().unwrap();
        // The registry's own host, any port, either kind of credentials.
        for c in [&env, &docker] {
            assert!(realm_gets_credentials(
                &uri("http://127.0.0.1:9000/token"),
                "127.0.0.1",
                c
            ));
            assert!(realm_gets_credentials(
                &uri("https://REG.example/token"),
                "reg.example",
                c
            ));
        }
        // Another host: only Docker config credentials, and only over https.
        let other = uri("https://auth.example/token");
        assert!(!realm_gets_credentials(&other, "reg.example", &env));
        assert!(realm_gets_credentials(&other, "reg.example", &docker));
        let plain = uri("http://auth.example/token");
        assert!(!realm_gets_credentials(&plain, "reg.example", &docker));
        let lookalike = uri("https://reg.example.evil.example/token");
        assert!(!realm_gets_credentials(&lookalike, "reg.example", &env));
    }

    #[test]
    fn docker_config_entries() {
        let auth = STANDARD.encode("alice:s3cret:with:colons");
        let text = format!(
            r#"{{"auths": {{"https://registry.example:5000/v1/": {{"auth": "{auth}"}},
                "other.example": {{"username": "bob", "password": "pw"}}}},
                "credHelpers": {{"ecr.example": "ecr-login"}}}}"#
        );
        let f = PathBuf::from("/cfg/config.json");
        match from_docker_config(&text, "registry.example:5000", f.clone()).unwrap() {
            Found::Credentials(c) => {
                assert_eq!(c.user, "alice");
                assert_eq!(c.password, "s3cret:with:colons");
                assert!(!format!("{c:?}").contains("s3cret"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            from_docker_config(&text, "other.example", f.clone()).unwrap(),
            Found::Credentials(c) if c.user == "bob"
        ));
        assert!(matches!(
            from_docker_config(&text, "ecr.example", f.clone()).unwrap(),
            Found::Helper { helper, .. } if helper == "ecr-login"
        ));
        assert!(matches!(
            from_docker_config(&text, "none.example", f.clone()).unwrap(),
            Found::None
        ));
        let store = r#"{"credsStore": "desktop"}"#;
        assert!(matches!(
            from_docker_config(store, "none.example", f.clone()).unwrap(),
            Found::Helper { helper, .. } if helper == "desktop"
        ));
        let err = from_docker_config(
            r#"{"auths": {"x": {"auth": "not base64 hunter22"}}"#,
            "x",
            f,
        )
        .unwrap_err();
        assert!(err.contains("/cfg/config.json"), "{err}");
        assert!(!err.contains("hunter22"), "{err}");
    }
}
