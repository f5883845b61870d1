//! The `pipeline:plugin/git` interface: a stage commits and pushes only in the repositories
//! it was granted (`grant.repository`), through [`super::Repo`]. It commits only files
//! under a directory it was granted read-write (a third-party sink cannot commit the
//! repository's `.env`), and signs only with a key the pipeline file configured for it
//! ([`SigningKey`]): the plugin names a key at call time, the host checks it is that one.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use wasmtime::component::{HasSelf, Linker};

use crate::bindings::snapshot_sink::pipeline::plugin::git::{
    self as wit, CommitRequest, Host, Person, Signing,
};
use crate::bindings::{Grant, PluginError};
use crate::capabilities::filesystem::normalize;
use crate::capabilities::git;
use crate::capabilities::{Capability, GrantContext, StoreState};
use crate::config::ConfigError;
use crate::logging;

/// The `git` capability: `allow.repositories`, `allow.signing_keys`, and the repositories
/// a plan asks to commit to.
pub struct Git;

/// What a stage may do with git.
#[derive(Debug, Clone, Default)]
pub struct GitGrants {
    /// Working trees (normalized) it may commit to and push from.
    pub repositories: Vec<PathBuf>,
    /// Keys it may sign commits with.
    pub signing: Vec<SigningKey>,
}

impl Capability for Git {
    const ALLOW_KEYS: &'static [&'static str] = &["repositories", "signing_keys"];
    const IMPORTS: &'static [(&'static str, &'static str)] = &[(
        "pipeline:plugin/git",
        "git commits and pushes: only repositories in `allow.repositories`, signed only with `allow.signing_keys`",
    )];
    type Granted = GitGrants;
    type State = ();

    fn link(linker: &mut Linker<StoreState>) -> wasmtime::Result<()> {
        wit::add_to_linker::<StoreState, HasSelf<StoreState>>(linker, |s| s)
    }

    fn allowed(cx: &mut GrantContext<'_>, git: &mut GitGrants) -> Result<(), ConfigError> {
        for (repo, loc) in cx.allowed("repositories") {
            git.repositories
                .push(cx.normalize(Some(*loc), "allow.repositories", repo)?);
        }
        for (key, loc) in cx.allowed("signing_keys") {
            git.signing.push(
                SigningKey::parse(key)
                    .map_err(|e| cx.error(Some(*loc), "allow.signing_keys", e))?,
            );
        }
        Ok(())
    }

    fn admit(
        cx: &mut GrantContext<'_>,
        asked: &Grant,
        git: &mut GitGrants,
    ) -> Result<bool, ConfigError> {
        let Grant::Repository(repo) = asked else {
            return Ok(false);
        };
        let path = cx.normalize(None, "repository", repo)?;
        if !git.repositories.contains(&path) {
            if !cx.builtin() {
                return Err(cx.refuse(
                    &format!("to commit to the git repository {repo}"),
                    "repositories",
                    repo,
                ));
            }
            git.repositories.push(path);
        }
        Ok(true)
    }

    fn state(_stage: &str, _: &GitGrants) {}
}

/// A key a stage may sign commits with, granted by the pipeline file: the built-in `git`
/// sink's `sign`/`signing_format`/`signing_key`, or a plugin file's
/// `allow.signing_keys` (`ssh:KEY_FILE`, `openpgp:KEY_ID`, `openpgp` for gpg's default key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SigningKey {
    /// gpg with this key id, fingerprint or user id; `None` is gpg's default key.
    Openpgp(Option<String>),
    /// `ssh-keygen -Y sign` with this key file (normalized).
    Ssh(PathBuf),
}

impl SigningKey {
    /// Reads one `allow.signing_keys` entry.
    pub fn parse(text: &str) -> Result<SigningKey, String> {
        match text.split_once(':') {
            None if text.trim() == "openpgp" => Ok(SigningKey::Openpgp(None)),
            Some(("openpgp", key)) if !key.trim().is_empty() => {
                Ok(SigningKey::Openpgp(Some(key.trim().to_string())))
            }
            Some(("ssh", file)) if !file.trim().is_empty() => normalize(Path::new(file.trim()))
                .map(SigningKey::Ssh)
                .map_err(|e| format!("cannot resolve the key file {file}: {e}")),
            _ => Err(format!(
                "`{text}` is not `ssh:KEY_FILE`, `openpgp:KEY_ID` or `openpgp` (gpg's default key)"
            )),
        }
    }

    /// Whether a plugin's request to sign with `requested` is for this key.
    fn permits(&self, requested: &Signing) -> bool {
        match (self, requested) {
            (SigningKey::Openpgp(granted), Signing::Gpg(asked)) => {
                match (
                    granted,
                    asked.as_deref().map(str::trim).filter(|k| !k.is_empty()),
                ) {
                    (None, None) => true,
                    (Some(g), Some(a)) => g.eq_ignore_ascii_case(a),
                    _ => false,
                }
            }
            (SigningKey::Ssh(granted), Signing::Ssh(file)) => {
                normalize(Path::new(file)).is_ok_and(|f| &f == granted)
            }
            _ => false,
        }
    }
}

/// The key the built-in `git` sink's configuration (as the plugin receives it) signs
/// with: none unless `sign` is true.
pub fn configured_signing(config: &Json) -> Result<Vec<SigningKey>, String> {
    if config.get("sign").and_then(Json::as_bool) != Some(true) {
        return Ok(Vec::new());
    }
    let key = config
        .get("signing_key")
        .and_then(Json::as_str)
        .map(str::trim)
        .filter(|k| !k.is_empty());
    match config.get("signing_format").and_then(Json::as_str) {
        Some("ssh") => match key {
            Some(file) => SigningKey::parse(&format!("ssh:{file}")).map(|k| vec![k]),
            // The plugin's plan refuses this configuration with its own message.
            None => Ok(Vec::new()),
        },
        _ => Ok(vec![SigningKey::Openpgp(key.map(str::to_string))]),
    }
}

impl StoreState {
    /// Opens `repository` if the stage was granted exactly that working tree.
    fn granted_repository(&self, repository: &str) -> Result<git::Repo, PluginError> {
        let path = normalize(Path::new(repository))
            .unwrap_or_else(|_| crate::config::absolute(Path::new(repository)));
        if !self.grants.git.repositories.contains(&path) {
            let msg = format!(
                "the git repository {} is not granted to stage `{}`: add it to the stage's `allow.repositories`",
                path.display(),
                self.stage
            );
            logging::warn(Some(&self.stage), &format!("denied: {msg}"));
            return Err(PluginError::Denied(msg));
        }
        git::Repo::open(&path).map_err(|e| PluginError::Other(e.to_string()))
    }

    fn deny(&self, msg: String) -> PluginError {
        logging::warn(Some(&self.stage), &format!("denied: {msg}"));
        PluginError::Denied(msg)
    }

    /// Every path must be, once normalized (`..` and symbolic links resolved), inside a
    /// directory the stage may write: what a stage commits is what it was given to write.
    fn check_paths(&self, repository: &str, paths: &[String]) -> Result<(), PluginError> {
        let root = normalize(Path::new(repository))
            .map_err(|e| PluginError::Other(format!("cannot resolve {repository}: {e}")))?;
        for p in paths {
            let inside = normalize(&root.join(p)).is_ok_and(|real| {
                self.grants
                    .filesystem
                    .granted
                    .iter()
                    .any(|(dir, writable)| *writable && real.starts_with(dir) && real != *dir)
            });
            if !inside {
                return Err(self.deny(format!(
                    "stage `{}` may commit only files under the directories it was granted \
                     read-write, and {p:?} (in {}) is not one of them",
                    self.stage,
                    root.display()
                )));
            }
        }
        Ok(())
    }

    /// The requested signature must use a key granted to the stage; the host signs with
    /// the granted key as the pipeline file names it, not with the plugin's spelling.
    fn check_signing(
        &self,
        signing: Option<&Signing>,
    ) -> Result<Option<git::Signing>, PluginError> {
        let Some(requested) = signing else {
            return Ok(None);
        };
        if let Some(key) = self
            .grants
            .git
            .signing
            .iter()
            .find(|k| k.permits(requested))
        {
            return Ok(Some(match key {
                SigningKey::Openpgp(key) => git::Signing::Gpg {
                    key: key.clone(),
                    program: None,
                    home: None,
                },
                SigningKey::Ssh(key_file) => git::Signing::Ssh {
                    key_file: key_file.clone(),
                    program: None,
                },
            }));
        }
        let asked = match requested {
            Signing::Gpg(Some(key)) => format!("the gpg key {key:?}"),
            Signing::Gpg(None) => "gpg's default key".to_string(),
            Signing::Ssh(file) => format!("the ssh key file {file}"),
        };
        Err(self.deny(format!(
            "stage `{}` may not sign with {asked}: it signs only with the key its pipeline file \
             configures (the git sink's `signing_key`, or `allow.signing_keys` for a plugin file)",
            self.stage
        )))
    }
}

fn person(p: &Person) -> git::Person {
    git::Person {
        name: p.name.clone(),
        email: p.email.clone(),
    }
}

impl Host for StoreState {
    fn commit(
        &mut self,
        repository: String,
        request: CommitRequest,
    ) -> Result<Option<String>, PluginError> {
        let repo = self.granted_repository(&repository)?;
        self.check_paths(&repository, &request.paths)?;
        let signing = self.check_signing(request.signing.as_ref())?;
        repo.commit_paths(
            &request.paths,
            &request.message,
            &person(&request.author),
            &person(&request.committer),
            signing.as_ref(),
        )
        .map_err(|e| PluginError::Other(e.to_string()))
    }

    fn push(
        &mut self,
        repository: String,
        remote: String,
        branch: Option<String>,
    ) -> Result<(), PluginError> {
        let repo = self.granted_repository(&repository)?;
        let branch = match branch {
            Some(b) => b,
            None => repo
                .head_branch()
                .map_err(|e| PluginError::Other(e.to_string()))?,
        };
        repo.push(&remote, &branch)
            .map_err(|e| PluginError::Other(e.to_string()))
    }
}
