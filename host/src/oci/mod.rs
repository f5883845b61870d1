//! Plugins from OCI registries: `plugin = "oci://registry/repository:tag@sha256:…"`.
//!
//! A reference ([`reference`]) is resolved from the local cache ([`cache`]) when it can be,
//! else pulled from the registry ([`client`], with [`auth`]) and verified on the way in:
//! the manifest against the pinned digest, the layer against the manifest. What comes out
//! is a component's bytes, which the engine loads like a plugin file's; its stage gets the
//! grants of a plugin file (only what `[allow]` lists).

pub mod auth;
pub mod cache;
pub mod client;
pub mod manifest;
pub mod reference;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use bytes::Bytes;

pub use reference::Reference;

use cache::Cache;
use manifest::Manifest;

static OFFLINE: AtomicBool = AtomicBool::new(false);

/// `--offline` (or `PIPELINE_OFFLINE=1`): plugins come from the cache only.
pub fn set_offline(offline: bool) {
    OFFLINE.store(offline, Ordering::Relaxed);
}

fn offline() -> bool {
    OFFLINE.load(Ordering::Relaxed)
}

/// The longest a pull (manifest and layer, with every retry of authentication) may take.
pub const PULL_DEADLINE: Duration = Duration::from_secs(10 * 60);

/// The component `r` names: from the cache (a tag as it resolved at its last pull), else
/// pulled now unless offline. A tag recorded in the cache whose blobs are gone is pulled
/// again by the digest it recorded, never resolved again: only `plugins pull` moves a tag.
pub fn load(r: &Reference) -> Result<Vec<u8>> {
    let cache = Cache::open()?;
    let known = match (&r.digest, &r.tag) {
        (Some(d), _) => Some(d.clone()),
        (None, Some(t)) => cache.tag(r, t)?,
        (None, None) => None,
    };
    if let Some(hex) = &known
        && let Some(wasm) = cached(&cache, r, hex)?
    {
        return Ok(wasm);
    }
    if offline() {
        bail!(
            "{r} is not in the plugin cache and this run is offline: run `pipeline plugins pull {r}` first (with network access)"
        );
    }
    let (target, recorded) = match (&r.digest, &known) {
        (None, Some(hex)) => (r.pinned(hex), true),
        _ => (r.clone(), false),
    };
    let hex = pull_deadline(&target, &cache).map_err(|e| {
        if recorded {
            e.context(format!(
                "{r}: its tag resolved to {target} at its last pull, whose cached copy is gone, and pulling that digest again failed (to resolve the tag again, run `pipeline plugins pull {r}`)"
            ))
        } else {
            e
        }
    })?;
    crate::logging::info(None, &format!("pulled {target} (sha256:{hex})"));
    cached(&cache, r, &hex)?
        .ok_or_else(|| anyhow!("{r}: pulled, but not found in the cache afterwards"))
}

/// Pulls `r` from its registry even if cached (a tag is resolved again): its manifest's
/// digest, hex.
pub fn pull(r: &Reference) -> Result<String> {
    if offline() {
        bail!("{r}: cannot pull while offline");
    }
    let cache = Cache::open()?;
    pull_deadline(r, &cache)
}

/// [`client::pull`], given [`PULL_DEADLINE`] to finish.
fn pull_deadline(r: &Reference, cache: &Cache) -> Result<String> {
    client::block_on(|| async {
        tokio::time::timeout(PULL_DEADLINE, client::pull(r, cache))
            .await
            .map_err(|_| {
                anyhow!(
                    "{r}: the pull did not finish in {} minutes",
                    PULL_DEADLINE.as_secs() / 60
                )
            })?
    })
}

/// Pushes a component (with its config blob, [`manifest::config`]) to `r`'s tag: the
/// manifest's digest, hex.
pub fn push(r: &Reference, wasm: Vec<u8>, config: Vec<u8>) -> Result<String> {
    if offline() {
        bail!("{r}: cannot push while offline");
    }
    client::block_on(|| client::push(r, Bytes::from(wasm), Bytes::from(config)))
}

/// The cached component of the manifest `hex`, both blobs checked against their digests.
fn cached(cache: &Cache, r: &Reference, hex: &str) -> Result<Option<Vec<u8>>> {
    let Some(bytes) = cache.read_blob(hex)? else {
        return Ok(None);
    };
    let m = Manifest::parse(&bytes).map_err(|e| anyhow!("{r}: {e}"))?;
    cache.read_blob(&m.layer.hex)
}
