//! Plugins from OCI registries, against a real registry ([`crate::support::registry`]):
//! `pipeline plugins push` publishes a component that a pipeline then runs by its
//! `oci://…@sha256:…` reference; the cache serves `--offline` runs once the registry is
//! gone; a tampered digest, a manifest or a layer altered in the registry's storage are
//! refused before anything runs; wrong credentials fail without showing the password (with
//! HTTP Basic and with the bearer token flow); and an OCI plugin gets only what its
//! `[allow]` lists, like a plugin file. Credentials go only where they are for, a layer
//! redirected to plain http elsewhere is refused, and a cached tag stays put.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::PgCluster;
use crate::support::registry::Registry;
use crate::support::scratch::{Scratch, assert_no_secret, list, stderr};

fn fixture() -> PathBuf {
    crate::support::scratch::repo().join("tests/fixtures/sink-built-for-wit-0.2.0.wasm")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A copy of `wasm` with a custom section named `tag` appended: the same plugin with
/// digests no other test shares (the component cache is shared between tests).
fn unique_copy(wasm: &Path, tag: &str, dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(wasm).expect("read the component");
    let mut payload = vec![tag.len() as u8];
    payload.extend_from_slice(tag.as_bytes());
    payload.extend_from_slice(format!("{:?}", std::time::SystemTime::now()).as_bytes());
    assert!(payload.len() < 128, "one LEB128 byte");
    bytes.push(0);
    bytes.push(payload.len() as u8);
    bytes.extend_from_slice(&payload);
    let out = dir.join(format!("{tag}.wasm"));
    std::fs::write(&out, bytes).expect("write the copy");
    out
}

/// The registry's credentials in the environment, for the registry at `address` only.
fn creds(address: &str) -> Vec<(&'static str, &str)> {
    vec![
        ("PIPELINE_REGISTRY_USERNAME", Registry::USER),
        ("PIPELINE_REGISTRY_PASSWORD", Registry::PASSWORD),
        ("PIPELINE_REGISTRY_HOST", address),
    ]
}

/// The right credentials in the environment but for another registry, and a Docker config
/// directory `docker` (which need not exist).
fn for_another_registry(docker: &Path) -> Vec<(&'static str, &str)> {
    vec![
        ("PIPELINE_REGISTRY_USERNAME", Registry::USER),
        ("PIPELINE_REGISTRY_PASSWORD", Registry::PASSWORD),
        ("PIPELINE_REGISTRY_HOST", "registry.example:5000"),
        ("DOCKER_CONFIG", docker.to_str().unwrap()),
    ]
}

/// `pipeline plugins push FILE REF`: the digest it prints, `sha256:` and 64 hex digits.
fn push(s: &Scratch, file: &Path, reference: &str, env: &[(&str, &str)]) -> String {
    let out = s.run(&["plugins", "push", file.to_str().unwrap(), reference], env);
    assert!(out.status.success(), "push failed: {}", stderr(&out));
    let digest = stdout(&out).trim().to_string();
    let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
    assert!(
        hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
        "{digest}"
    );
    hex.to_string()
}

/// A pipeline whose sink is the plugin `plugin`, storing into `store`.
fn sink_pipeline(s: &Scratch, name: &str, plugin: &str, store: &Path) -> String {
    let file = s.path().join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nplugin = \"zstd\"\n\n\
             [[sink]]\nname = \"remote\"\nplugin = \"{plugin}\"\npath = \"{store}\"\n\
             allow = {{ directories = [\"{store}\"] }}\n",
            store = store.display()
        ),
    )
    .unwrap();
    file.to_str().unwrap().to_string()
}

/// The runs the history holds of pipeline `name` (none, when it has none).
fn runs(s: &Scratch, name: &str) -> Vec<serde_json::Value> {
    let out = s.run(&["status", name, "--json"], &[]);
    if stderr(&out).contains(&format!("no run of pipeline `{name}` is recorded")) {
        return Vec::new();
    }
    assert!(out.status.success(), "status: {}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    json.get(0)
        .and_then(|p| p["runs"].as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn a_plugin_pushed_by_plugins_push_runs_by_its_oci_digest_and_offline_from_the_cache() {
    let pg = PgCluster::start();
    pg.create_db("app");
    crate::support::load_sample(&pg, "app");
    let mut reg = Registry::start();
    let s = Scratch::new();
    let wasm = unique_copy(&fixture(), "e2e", s.path());

    // Credentials from a Docker config file this time.
    let docker = s.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        Registry::USER,
        Registry::PASSWORD
    ));
    std::fs::write(
        docker.join("config.json"),
        format!(
            r#"{{"auths": {{"{}": {{"auth": "{auth}"}}}}}}"#,
            reg.address()
        ),
    )
    .unwrap();
    let docker = docker.to_str().unwrap().to_string();
    let env_docker = [("DOCKER_CONFIG", docker.as_str())];

    let tagged = format!("oci://{}/acme/fixture-sink:1.0", reg.address());
    let hex = push(&s, &wasm, &tagged, &env_docker);

    // `plugins pull` resolves the tag to the digest push printed.
    let out = s.run(&["plugins", "pull", &tagged], &env_docker);
    assert!(out.status.success(), "pull: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("sha256:{hex}"));

    let pinned = format!("oci://{}/acme/fixture-sink@sha256:{hex}", reg.address());
    // What it is, before granting it anything.
    let out = s.run(&["plugins", "inspect", &pinned], &env_docker);
    assert!(out.status.success(), "inspect: {}", stderr(&out));
    assert!(
        stdout(&out).starts_with("fixture-sink 0.1.0 (sink)"),
        "{}",
        stdout(&out)
    );
    let store = s.path().join("store");
    let file = sink_pipeline(&s, "oci", &pinned, &store);
    let db = pg.url("app");
    let env = [
        ("DATABASE_URL", db.as_str()),
        ("DOCKER_CONFIG", docker.as_str()),
    ];
    let out = s.run(&["validate", &file], &env);
    assert!(out.status.success(), "validate: {}", stderr(&out));
    let out = s.run(&["run", &file], &env);
    let err = stderr(&out);
    assert!(out.status.success(), "run: {err}");
    assert_no_secret(&pg, &err);
    assert!(!err.contains(Registry::PASSWORD), "{err}");
    let stored = list(&store);
    assert_eq!(stored.len(), 2, "a backup and its manifest: {stored:?}");
    assert!(
        stored
            .iter()
            .any(|f| crate::support::scratch::is_backup_name(f)),
        "{stored:?}"
    );

    // The registry is gone: an offline run (flag or environment) loads the plugin from the
    // cache, by its digest and by the tag as it was last pulled.
    reg.stop();
    let out = s.run(&["run", "--offline", &file], &env);
    assert!(out.status.success(), "offline run: {}", stderr(&out));
    assert_eq!(list(&store).len(), 4, "a second backup: {:?}", list(&store));
    let by_tag = sink_pipeline(&s, "oci-tag", &tagged, &store);
    let out = s.run(
        &["validate", &by_tag],
        &[("DATABASE_URL", db.as_str()), ("PIPELINE_OFFLINE", "1")],
    );
    assert!(out.status.success(), "offline by tag: {}", stderr(&out));

    // A reference never pulled cannot be loaded offline: the error says how to get it.
    let other = format!("oci://{}/acme/never-pulled:2.0", reg.address());
    let never = sink_pipeline(&s, "never", &other, &store);
    let out = s.run(&["run", "--offline", &never], &env);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("pipeline plugins pull {other}")),
        "the hint: {err}"
    );
    assert_eq!(list(&store).len(), 4, "nothing stored");
}

#[test]
fn a_tampered_digest_or_an_altered_blob_is_refused_and_nothing_runs() {
    let pg = PgCluster::start();
    pg.create_db("app");
    crate::support::load_sample(&pg, "app");
    let reg = Registry::start();
    let s = Scratch::new();
    let address = reg.address();
    let env_creds = creds(&address);
    let db = pg.url("app");
    let mut env = env_creds.clone();
    env.push(("DATABASE_URL", db.as_str()));
    let store = s.path().join("store");

    // One hex digit of the pinned digest changed: refused, nothing runs.
    let wasm = unique_copy(&fixture(), "tamper", s.path());
    let hex = push(
        &s,
        &wasm,
        &format!("oci://{}/acme/sink:1.0", reg.address()),
        &env_creds,
    );
    let flipped = format!(
        "{}{}",
        if hex.starts_with('0') { '1' } else { '0' },
        &hex[1..]
    );
    let tampered = format!("oci://{}/acme/sink@sha256:{flipped}", reg.address());
    let file = sink_pipeline(&s, "tampered", &tampered, &store);
    let out = s.run(&["run", &file], &env);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains(&tampered), "names the reference: {err}");
    assert!(
        list(&store).is_empty(),
        "nothing stored: {:?}",
        list(&store)
    );
    assert!(
        runs(&s, "tampered").iter().all(|r| r["outcome"] != "ok"),
        "no successful run recorded"
    );

    // The manifest altered in the registry's storage (still valid JSON): its digest no
    // longer matches the pinned one, and the error says expected and got.
    let manifest = reg.blob_file(&hex);
    let text = std::fs::read_to_string(&manifest).expect("the manifest in the registry");
    let altered = text.replacen("\"schemaVersion\":2", "\"schemaVersion\": 2", 1);
    assert_ne!(text, altered);
    std::fs::write(&manifest, altered).unwrap();
    let pinned = format!("oci://{}/acme/sink@sha256:{hex}", reg.address());
    let file = sink_pipeline(&s, "altered", &pinned, &store);
    let out = s.run(&["run", &file], &env);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("digest mismatch")
            && err.contains(&format!("expected sha256:{hex}"))
            && err.contains(&pinned),
        "expected and got: {err}"
    );
    assert!(
        list(&store).is_empty(),
        "nothing stored: {:?}",
        list(&store)
    );

    // A layer corrupted in the registry's storage: the pull refuses it (its digest is
    // checked as it streams) and caches nothing; a run with it stores nothing.
    let wasm = unique_copy(&fixture(), "corrupt", s.path());
    let layer = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&wasm).unwrap()))
    };
    let tagged = format!("oci://{}/acme/corrupt:1.0", reg.address());
    let hex = push(&s, &wasm, &tagged, &env_creds);
    let blob = reg.blob_file(&layer);
    let mut bytes = std::fs::read(&blob).expect("the layer in the registry");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&blob, bytes).unwrap();
    let out = s.run(&["plugins", "pull", &tagged], &env_creds);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("digest mismatch") && err.contains(&format!("sha256:{layer}")),
        "{err}"
    );
    let pinned = format!("oci://{}/acme/corrupt@sha256:{hex}", reg.address());
    let file = sink_pipeline(&s, "corrupt", &pinned, &store);
    let out = s.run(&["run", &file], &env);
    assert!(!out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("digest mismatch"), "{}", stderr(&out));
    assert!(
        list(&store).is_empty(),
        "nothing stored: {:?}",
        list(&store)
    );
}

#[test]
fn wrong_registry_credentials_fail_clearly_without_the_password() {
    let reg = Registry::start();
    let s = Scratch::new();
    let tagged = format!("oci://{}/acme/sink:1.0", reg.address());
    let file = fixture();
    let file = file.to_str().unwrap();
    let wrong = "Wrong-password-never-shown-42";
    let address = reg.address();

    let out = s.run(
        &["plugins", "push", file, &tagged],
        &[
            ("PIPELINE_REGISTRY_USERNAME", Registry::USER),
            ("PIPELINE_REGISTRY_PASSWORD", wrong),
            ("PIPELINE_REGISTRY_HOST", &address),
        ],
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("401")
            && err.contains(&format!(
                "refused the credentials of user `{}`",
                Registry::USER
            ))
            && err.contains("PIPELINE_REGISTRY_USERNAME/PIPELINE_REGISTRY_PASSWORD"),
        "{err}"
    );
    assert!(!err.contains(wrong), "the password was shown: {err}");

    // The environment's credentials without PIPELINE_REGISTRY_HOST: refused before they
    // are sent anywhere, naming the missing variable.
    let empty = s.path().join("no-docker");
    let out = s.run(
        &["plugins", "push", file, &tagged],
        &[
            ("PIPELINE_REGISTRY_USERNAME", Registry::USER),
            ("PIPELINE_REGISTRY_PASSWORD", Registry::PASSWORD),
            ("DOCKER_CONFIG", empty.to_str().unwrap()),
        ],
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("PIPELINE_REGISTRY_HOST is not") && err.contains(&address),
        "{err}"
    );
    assert!(!err.contains(Registry::PASSWORD), "{err}");

    // For another registry: this one is not sent them, and says none were found.
    let out = s.run(
        &["plugins", "push", file, &tagged],
        &for_another_registry(&empty),
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("asks for credentials and none were found"),
        "{err}"
    );

    // No credentials at all: says which variables to set.
    let empty = s.path().join("no-docker");
    let out = s.run(
        &["plugins", "pull", &tagged],
        &[("DOCKER_CONFIG", empty.to_str().unwrap())],
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("asks for credentials and none were found")
            && err.contains("PIPELINE_REGISTRY_USERNAME"),
        "{err}"
    );

    // A credential helper in the Docker config is reported, not run.
    a_credential_helper_is_reported_not_run(&s, &tagged);

    // The right ones push.
    push(&s, &fixture(), &tagged, &creds(&reg.address()));
}

#[test]
fn an_oci_plugin_gets_only_the_grants_its_allow_lists() {
    let pg = PgCluster::start();
    pg.create_db("app");
    crate::support::load_sample(&pg, "app");
    let reg = Registry::start();
    let s = Scratch::new();
    let misbehave = super::misbehave_wasm();
    let tagged = format!("oci://{}/acme/misbehave:1.0", reg.address());
    let hex = push(&s, &misbehave, &tagged, &creds(&reg.address()));

    let secret_file = s.path().join("key.txt");
    std::fs::write(&secret_file, "TOPSECRET-FILE-CONTENT").unwrap();
    let work = s.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let file = s.path().join("nosy.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nname = \"nosy\"\nplugin = \"oci://{reg}/acme/misbehave@sha256:{hex}\"\n\
             mode = \"nosy\"\nworkdir = \"{work}\"\nenv = \"NOSY_SECRET\"\nfile = \"{secret}\"\n\
             dir = \"{home}\"\nurl = \"http://{reg}/v2/\"\naddr = \"{reg}\"\nprogram = \"cat\"\n\
             allow = {{ directories = [\"{work}\"] }}\n\n\
             [[sink]]\nname = \"local\"\nplugin = \"local\"\npath = \"{backups}\"\n",
            reg = reg.address(),
            work = work.display(),
            secret = secret_file.display(),
            home = s.path().display(),
            backups = s.backups().display()
        ),
    )
    .unwrap();
    let db = pg.url("app");
    let address = reg.address();
    let mut env = creds(&address);
    env.push(("DATABASE_URL", db.as_str()));
    env.push(("NOSY_SECRET", "hunter2-nosy-env"));
    let out = s.run(&["run", file.to_str().unwrap()], &env);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("LEAKED"), "something leaked:\n{err}");
    for probe in [
        "probe env NOSY_SECRET: denied".to_string(),
        format!("probe file {}: denied", secret_file.display()),
        format!("probe directory {}: denied", s.path().display()),
        format!("probe url http://{}/v2/: denied", reg.address()),
        format!("probe socket {}: denied", reg.address()),
        "probe program cat: denied".to_string(),
    ] {
        assert!(err.contains(&probe), "missing `{probe}`:\n{err}");
    }
    for secret in ["TOPSECRET", "hunter2", Registry::PASSWORD] {
        assert!(!err.contains(secret), "{secret} reached the log:\n{err}");
    }
    assert_eq!(
        s.files().len(),
        2,
        "the data passed through: {:?}",
        s.files()
    );
}

#[test]
fn the_bearer_token_flow_pushes_and_pulls_and_a_wrong_password_gets_no_token() {
    let reg = Registry::start_with_tokens();
    let s = Scratch::new();
    let tagged = format!("oci://{}/acme/token-sink:1.0", reg.address());
    let wasm = unique_copy(&fixture(), "token", s.path());

    // Push and pull with the password: the registry asked for a token each time.
    let hex = push(&s, &wasm, &tagged, &creds(&reg.address()));
    assert!(reg.tokens_issued() >= 1, "{}", reg.log());
    let issued = reg.tokens_issued();
    let out = s.run(&["plugins", "pull", &tagged], &creds(&reg.address()));
    let err = stderr(&out);
    assert!(out.status.success(), "pull: {err}\n{}", reg.log());
    assert_eq!(stdout(&out).trim(), format!("sha256:{hex}"));
    assert!(
        reg.tokens_issued() > issued,
        "the pull used a token of its own"
    );

    // A wrong password gets no token: the error names the token service, the user and
    // where the credentials came from, never the password.
    let wrong = "Wrong-token-password-never-shown";
    let address = reg.address();
    let out = s.run(
        &["plugins", "pull", &tagged],
        &[
            ("PIPELINE_REGISTRY_USERNAME", Registry::USER),
            ("PIPELINE_REGISTRY_PASSWORD", wrong),
            ("PIPELINE_REGISTRY_HOST", &address),
        ],
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("refused a token")
            && err.contains(&format!("user `{}`", Registry::USER))
            && err.contains("401"),
        "{err}"
    );
    assert!(!err.contains(wrong), "the password was shown: {err}");

    // The environment's credentials for another registry: the token service is asked for
    // an anonymous token (no user is sent), which it refuses.
    let empty = s.path().join("no-docker");
    let out = s.run(&["plugins", "pull", &tagged], &for_another_registry(&empty));
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("refused a token") && !err.contains("for user"),
        "an anonymous request: {err}"
    );

    // A credential helper in the Docker config: an anonymous token is asked for; refused,
    // the error says the helper is not run.
    a_credential_helper_is_reported_not_run(&s, &tagged);
}

#[test]
fn a_registry_off_loopback_is_spoken_to_in_https_trusting_ssl_cert_file() {
    let reg = Registry::start_tls();
    let s = Scratch::new();
    let tagged = format!("oci://{}/acme/tls-sink:1.0", reg.address());
    let ca = reg.ca();
    let ca = ca.to_str().unwrap();
    let address = reg.address();
    let mut env = creds(&address);
    env.push(("SSL_CERT_FILE", ca));

    // https, trusting the CA SSL_CERT_FILE names.
    let hex = push(&s, &fixture(), &tagged, &env);
    let out = s.run(&["plugins", "pull", &tagged], &env);
    assert!(out.status.success(), "pull: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("sha256:{hex}"));

    // Without it, the system's roots do not trust the registry's certificate.
    let out = s
        .command(&["plugins", "pull", &tagged], &creds(&reg.address()))
        .env_remove("SSL_CERT_FILE")
        .output()
        .expect("run pipeline");
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("certificate"), "{err}");

    // Listed in PIPELINE_INSECURE_REGISTRIES, it is spoken to in plain http, which this
    // https-only registry answers with 400.
    let mut insecure = env.clone();
    let address = reg.address();
    insecure.push(("PIPELINE_INSECURE_REGISTRIES", &address));
    let out = s.run(&["plugins", "pull", &tagged], &insecure);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("HTTP 400"), "{err}");
}

#[test]
fn a_cached_tag_whose_blob_is_gone_is_pulled_again_by_its_recorded_digest() {
    let reg = Registry::start();
    let s = Scratch::new();
    let address = reg.address();
    let cache = s.path().join("cache");
    let cache_dir = cache.to_str().unwrap().to_string();
    let mut env = creds(&address);
    env.push(("PIPELINE_CACHE_DIR", &cache_dir));
    let tagged = format!("oci://{address}/acme/moving:1.0");
    let wasm = unique_copy(&fixture(), "moving", s.path());
    let layer = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&wasm).unwrap()))
    };
    let hex = push(&s, &wasm, &tagged, &env);
    let inspect = |env: &[(&str, &str)]| s.run(&["plugins", "inspect", &tagged], env);

    // First use pulls the tag and records what it resolved to.
    let out = inspect(&env);
    assert!(out.status.success(), "inspect: {}", stderr(&out));
    assert!(stdout(&out).starts_with("fixture-sink 0.1.0 (sink)"));
    let tag_file = cache
        .join("oci/tags")
        .join(&address)
        .join("acme/moving/@1.0");
    let recorded = format!("sha256:{hex}\n");
    assert_eq!(std::fs::read_to_string(&tag_file).unwrap(), recorded);

    // The tag moves in the registry to another component, and the cached layer is lost:
    // the recorded digest is pulled again (the original plugin), the record unchanged.
    let moved = push(&s, &super::misbehave_wasm(), &tagged, &env);
    assert_ne!(moved, hex);
    let cached_layer = cache.join("oci/blobs/sha256").join(&layer);
    std::fs::remove_file(&cached_layer).expect("the cached layer");
    let out = inspect(&env);
    assert!(out.status.success(), "inspect: {}", stderr(&out));
    assert!(
        stdout(&out).starts_with("fixture-sink 0.1.0 (sink)"),
        "the original plugin: {}",
        stdout(&out)
    );
    assert!(cached_layer.exists(), "its layer pulled again");
    assert_eq!(std::fs::read_to_string(&tag_file).unwrap(), recorded);

    // That digest gone from the registry too: the load fails, saying which digest it
    // wanted and how to resolve the tag again; the record is still unchanged.
    std::fs::remove_file(&cached_layer).unwrap();
    std::fs::remove_file(reg.blob_file(&layer)).expect("the layer in the registry");
    let out = inspect(&env);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains(&format!("sha256:{hex}"))
            && err.contains(&format!("pipeline plugins pull {tagged}")),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&tag_file).unwrap(), recorded);

    // `plugins pull` is what resolves the tag again.
    let out = s.run(&["plugins", "pull", &tagged], &env);
    assert!(out.status.success(), "pull: {}", stderr(&out));
    assert_eq!(stdout(&out).trim(), format!("sha256:{moved}"));
    assert_eq!(
        std::fs::read_to_string(&tag_file).unwrap(),
        format!("sha256:{moved}\n")
    );
}

#[test]
fn a_layer_redirected_to_plain_http_elsewhere_is_refused_and_sent_nothing() {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::{Arc, Mutex};
    // The storage the registry redirects blob downloads to: it records every request it
    // gets (there must be none) and answers each with a demand for credentials.
    let storage = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the storage");
    let storage_addr = storage.local_addr().unwrap().to_string();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for mut stream in storage.incoming().flatten() {
            let mut head = String::new();
            let mut reader = BufReader::new(stream.try_clone().expect("clone"));
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                head.push_str(&line);
                line.clear();
            }
            record.lock().unwrap().push(head);
            let _ = stream.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"storage\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    let reg = Registry::start_redirecting(&format!("http://{storage_addr}/"));
    let s = Scratch::new();
    let address = reg.address();
    let cache = s.path().join("cache");
    let cache_dir = cache.to_str().unwrap().to_string();
    let mut env = creds(&address);
    env.push(("PIPELINE_CACHE_DIR", &cache_dir));
    let tagged = format!("oci://{address}/acme/redirected:1.0");
    let wasm = unique_copy(&fixture(), "redirected", s.path());
    push(&s, &wasm, &tagged, &env);

    let out = s.run(&["plugins", "pull", &tagged], &env);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}\n{}", reg.log());
    assert!(
        err.contains("redirects its layer to plain http") && err.contains(&storage_addr),
        "{err}"
    );
    assert!(!err.contains(Registry::PASSWORD), "{err}");
    let seen = seen.lock().unwrap();
    assert!(seen.is_empty(), "the storage was sent: {seen:?}");
    assert!(
        !cache.join("oci/tags").join(&address).exists(),
        "no tag recorded"
    );
}

#[test]
fn storage_a_layer_is_redirected_to_is_sent_no_credentials_and_its_401_is_an_error() {
    use rustls::pki_types::pem::PemObject;
    use std::io::{BufRead, BufReader, Write};
    use std::sync::{Arc, Mutex};
    // An https registry (off loopback) that redirects blob downloads to storage on the
    // same address, another port, with a certificate the same CA vouches for: the storage
    // records every request head and demands credentials.
    let storage = std::net::TcpListener::bind("0.0.0.0:0").expect("bind the storage");
    let port = storage.local_addr().unwrap().port();
    let reg = Registry::start_tls_redirecting(port);
    let (cert, key) = reg.tls_identity();
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(&cert)
        .expect("the certificate")
        .collect::<Result<Vec<_>, _>>()
        .expect("the certificate");
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).expect("the key");
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("the storage's TLS identity"),
    );
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for stream in storage.incoming().flatten() {
            let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                continue;
            };
            let mut tls = rustls::StreamOwned::new(conn, stream);
            let mut head = String::new();
            {
                let mut reader = BufReader::new(&mut tls);
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                    head.push_str(&line);
                    line.clear();
                }
            }
            record.lock().unwrap().push(head);
            let _ = tls.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"storage\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });

    let s = Scratch::new();
    let address = reg.address();
    let ca = reg.ca();
    let ca = ca.to_str().unwrap();
    let cache = s.path().join("cache");
    let cache_dir = cache.to_str().unwrap().to_string();
    let mut env = creds(&address);
    env.push(("SSL_CERT_FILE", ca));
    env.push(("PIPELINE_CACHE_DIR", &cache_dir));
    let tagged = format!("oci://{address}/acme/stored:1.0");
    let wasm = unique_copy(&fixture(), "stored", s.path());
    push(&s, &wasm, &tagged, &env);

    let out = s.run(&["plugins", "pull", &tagged], &env);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}\n{}", reg.log());
    let storage_url = format!("https://{}:{port}/", address.split(':').next().unwrap());
    assert!(
        err.contains("asks for credentials (HTTP 401)")
            && err.contains("sent to the registry only")
            && err.contains(&storage_url),
        "{err}"
    );
    assert!(!err.contains(Registry::PASSWORD), "{err}");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1, "one request, not answered: {seen:?}");
    assert!(
        seen[0].starts_with("GET /docker/registry/v2/blobs/")
            && !seen[0].to_ascii_lowercase().contains("authorization:"),
        "no credentials: {seen:?}"
    );
}

/// A Docker config naming a credential helper: the pull fails, and the error says the
/// helper `desktop` is not run.
fn a_credential_helper_is_reported_not_run(s: &Scratch, tagged: &str) {
    let docker = s.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(docker.join("config.json"), r#"{"credsStore": "desktop"}"#).unwrap();
    let out = s.run(
        &["plugins", "pull", tagged],
        &[("DOCKER_CONFIG", docker.to_str().unwrap())],
    );
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("credential helper `desktop`") && err.contains("does not run"),
        "{err}"
    );
}
