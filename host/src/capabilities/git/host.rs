//! The `pipeline:plugin/git` interface: a stage commits and pushes only in the repositories
//! it was granted (`grant.repository`), through [`super::Repo`].

use std::path::Path;

use crate::bindings::PluginError;
use crate::bindings::snapshot_sink::pipeline::plugin::git::{CommitRequest, Host, Person, Signing};
use crate::logging;

use crate::capabilities::StoreState;
use crate::capabilities::git;

impl StoreState {
    /// Opens `repository` if the stage was granted exactly that working tree.
    fn granted_repository(&self, repository: &str) -> Result<git::Repo, PluginError> {
        let path = crate::config::absolute(Path::new(repository));
        if !self.grants.repositories.contains(&path) {
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
        let signing = request.signing.as_ref().map(|s| match s {
            Signing::Gpg(key) => git::Signing::Gpg {
                key: key.clone(),
                program: None,
                home: None,
            },
            Signing::Ssh(key_file) => git::Signing::Ssh {
                key_file: crate::config::absolute(Path::new(key_file)),
                program: None,
            },
        });
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
