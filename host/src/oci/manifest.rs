//! The Wasm OCI artifact layout (CNCF TAG Runtime "Wasm OCI Artifact"): an image manifest
//! whose config is `application/vnd.wasm.config.v0+json` and whose one layer is the
//! component, `application/wasm`.

use sha2::{Digest, Sha256};

pub const MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.wasm.config.v0+json";
pub const LAYER_MEDIA_TYPE: &str = "application/wasm";

/// A blob a manifest points at.
#[derive(Debug, PartialEq, Eq)]
pub struct Blob {
    pub hex: String,
    pub size: u64,
}

/// What `pipeline` reads of a manifest: its one Wasm layer.
#[derive(Debug)]
pub struct Manifest {
    pub layer: Blob,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    schema_version: u32,
    media_type: Option<String>,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: u64,
}

impl Manifest {
    /// Checks that `bytes` are a Wasm artifact's manifest with exactly one Wasm layer.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let raw: Raw = serde_json::from_slice(bytes)
            .map_err(|e| format!("its manifest is not an OCI image manifest ({e})"))?;
        if raw.schema_version != 2 {
            return Err(format!(
                "its manifest has schemaVersion {}, not 2",
                raw.schema_version
            ));
        }
        if let Some(mt) = raw.media_type.as_deref()
            && mt != MEDIA_TYPE
        {
            return Err(format!(
                "its manifest is `{mt}`, not a Wasm artifact's `{MEDIA_TYPE}` (an image index or a container image cannot be a plugin)"
            ));
        }
        if raw.config.media_type != CONFIG_MEDIA_TYPE {
            return Err(format!(
                "it is not a Wasm artifact: its config is `{}`, not `{CONFIG_MEDIA_TYPE}`",
                raw.config.media_type
            ));
        }
        let [layer] = &raw.layers[..] else {
            return Err(format!(
                "it has {} layers; a plugin is one `{LAYER_MEDIA_TYPE}` layer",
                raw.layers.len()
            ));
        };
        if layer.media_type != LAYER_MEDIA_TYPE {
            return Err(format!(
                "its layer is `{}`, not `{LAYER_MEDIA_TYPE}`",
                layer.media_type
            ));
        }
        let hex = layer
            .digest
            .strip_prefix("sha256:")
            .filter(|h| {
                h.len() == 64
                    && h.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            })
            .ok_or_else(|| format!("its layer's digest `{}` is not sha256", layer.digest))?;
        Ok(Manifest {
            layer: Blob {
                hex: hex.to_string(),
                size: layer.size,
            },
        })
    }
}

/// The config blob of a component: architecture `wasm`, os `wasip2`, the layer's digest,
/// and the component's imports and exports.
pub fn config(wasm: &[u8], imports: Vec<String>, exports: Vec<String>) -> Vec<u8> {
    let layer = format!("sha256:{}", hex::encode(Sha256::digest(wasm)));
    let created = jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now());
    let config = serde_json::json!({
        "created": created.to_string(),
        "architecture": "wasm",
        "os": "wasip2",
        "layerDigests": [layer],
        "component": {
            "exports": exports,
            "imports": imports,
        },
    });
    config.to_string().into_bytes()
}

/// A manifest built for a push, with its digests.
pub struct Built {
    pub bytes: Vec<u8>,
    pub hex: String,
    pub config_hex: String,
    pub layer_hex: String,
}

pub fn build(wasm: &[u8], config: &[u8]) -> Built {
    let config_hex = hex::encode(Sha256::digest(config));
    let layer_hex = hex::encode(Sha256::digest(wasm));
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": format!("sha256:{config_hex}"),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": LAYER_MEDIA_TYPE,
            "digest": format!("sha256:{layer_hex}"),
            "size": wasm.len(),
        }],
    });
    let bytes = manifest.to_string().into_bytes();
    Built {
        hex: hex::encode(Sha256::digest(&bytes)),
        bytes,
        config_hex,
        layer_hex,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_manifest_parses_back_to_its_layer() {
        let wasm = b"\0asm fake";
        let cfg = config(wasm, vec!["wasi:io/streams@0.2.0".into()], vec![]);
        let v: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
        assert_eq!(v["os"], "wasip2");
        let built = build(wasm, &cfg);
        let m = Manifest::parse(&built.bytes).unwrap();
        assert_eq!(m.layer.hex, built.layer_hex);
        assert_eq!(m.layer.size, wasm.len() as u64);
        assert_eq!(built.hex, hex::encode(Sha256::digest(&built.bytes)));
    }

    #[test]
    fn other_artifacts_are_refused() {
        let image = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:00","size":1},
            "layers":[]}"#;
        assert!(
            Manifest::parse(image)
                .unwrap_err()
                .contains("not a Wasm artifact")
        );
        let index = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
            "config":{"mediaType":"x","digest":"sha256:00","size":1},"layers":[]}"#;
        assert!(Manifest::parse(index).unwrap_err().contains("image index"));
        let two = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{CONFIG_MEDIA_TYPE}","digest":"sha256:00","size":1}},
            "layers":[{{"mediaType":"application/wasm","digest":"sha256:{h}","size":1}},
                      {{"mediaType":"application/wasm","digest":"sha256:{h}","size":1}}]}}"#,
            h = "a".repeat(64)
        );
        assert!(
            Manifest::parse(two.as_bytes())
                .unwrap_err()
                .contains("2 layers")
        );
        let bad = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"{CONFIG_MEDIA_TYPE}","digest":"sha256:00","size":1}},
            "layers":[{{"mediaType":"application/wasm","digest":"sha256:../../x","size":1}}]}}"#
        );
        assert!(
            Manifest::parse(bad.as_bytes())
                .unwrap_err()
                .contains("not sha256")
        );
        assert!(
            Manifest::parse(b"<html>")
                .unwrap_err()
                .contains("not an OCI image manifest")
        );
    }
}
