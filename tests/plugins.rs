//! Third-party plugins: a crate made by `pipeline plugins new` and built outside this
//! repository runs as a sink; a sink built against `pipeline:plugin@0.2.0` and committed as
//! a fixture keeps running end to end (the contract strands no 0.2.0 plugin); a plugin that
//! loops or hoards memory is stopped by its stage's limits without storing or pruning
//! anything; a nosy plugin reaches nothing its stage was not granted, and each try is an
//! error for the plugin and a line in the log.

mod support;

#[path = "plugins/oci.rs"]
mod oci;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use support::PgCluster;
use support::cargo::build_wasm;
use support::scratch::{Scratch, assert_no_secret, list, stderr};

fn misbehave_wasm() -> PathBuf {
    Path::new(env!("PIPELINE_BUILTIN_WASM_DIR")).join("pipeline_misbehave.wasm")
}

fn success(out: &std::process::Output) -> String {
    let err = stderr(out);
    assert!(out.status.success(), "the run failed:\n{err}");
    err
}

#[test]
fn a_crate_made_by_plugins_new_builds_outside_the_repo_and_runs_as_a_sink() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    let dir = s.path().join("my-sink");
    let out = s.run(
        &[
            "plugin",
            "new",
            "sink",
            "my-sink",
            "--dir",
            dir.to_str().unwrap(),
        ],
        &[],
    );
    success(&out);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("cargo build --target wasm32-wasip2 --release"),
        "{said}"
    );
    let wasm = build_wasm(&dir, "my_sink", false);

    let out = s.run(&["plugins", "inspect", wasm.to_str().unwrap()], &[]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(shown.starts_with("my-sink 0.1.0 (sink)"), "{shown}");
    assert!(shown.contains("compatible with this host"), "{shown}");
    assert!(shown.contains("wasi:filesystem/preopens"), "{shown}");

    let store = s.path().join("store");
    let file = s.path().join("mine.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nplugin = \"zstd\"\n\n\
             [[sink]]\nname = \"mine\"\nplugin = \"{wasm}\"\npath = \"{store}\"\n\
             allow = {{ directories = [\"{store}\"] }}\n\n\
             [retention]\ndays = 0\nkeep_last = 1\n",
            wasm = wasm.display(),
            store = store.display()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let env = [("DATABASE_URL", pg.url("app"))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let first = success(&s.run(&["run", file], &env));
    assert_no_secret(&pg, &first);
    let after_first = list(&store);
    assert_eq!(after_first.len(), 2, "backup and manifest: {after_first:?}");
    std::thread::sleep(std::time::Duration::from_millis(20));
    success(&s.run(&["run", file], &env));
    let after_second = list(&store);
    assert_eq!(
        after_second.len(),
        2,
        "days = 0, keep_last = 1 pruned: {after_second:?}"
    );
    assert_ne!(
        after_first, after_second,
        "the newer backup is the one kept"
    );

    pg.create_db("restored");
    success(&s.run(&["restore", file, "--to", &pg.url("restored")], &env));
    assert_eq!(pg.canonical_dump("app"), pg.canonical_dump("restored"));
}

#[test]
fn a_plugin_built_for_an_unsupported_wit_version_is_refused_naming_the_versions_run() {
    let s = Scratch::new();
    let old = support::scratch::repo().join("tests/fixtures/sink-built-for-wit-0.1.0.wasm");
    let out = s.run(&["plugins", "inspect", old.to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("built against pipeline:plugin@0.1.0, which this host (pipeline:plugin@0.3.")
            && err.contains("cannot run")
            && err.contains("it runs plugins built for 0.2.x and 0.3.x"),
        "{err}"
    );
    let store = s.path().join("store");
    let file = s.path().join("old.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"postgres://u@127.0.0.1:1/db\"\n\n\
             [[sink]]\nname = \"old\"\nplugin = \"{}\"\npath = \"{}\"\n\
             allow = {{ directories = [\"{}\"] }}\n",
            old.display(),
            store.display(),
            store.display()
        ),
    )
    .unwrap();
    let out = s.run(&["validate", file.to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("old.toml:") && err.contains("pipeline:plugin@0.1.0"),
        "{err}"
    );
}

/// `plugins inspect` says which contract a plugin runs under: a 0.2.0 plugin through the
/// adapter of the current host, a plugin built now under the current contract.
#[test]
fn plugins_inspect_names_the_contract_each_plugin_runs_under() {
    let s = Scratch::new();
    let fixture = support::scratch::repo().join("tests/fixtures/sink-built-for-wit-0.2.0.wasm");
    let out = s.run(&["plugins", "inspect", fixture.to_str().unwrap()], &[]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        shown.contains(
            "WIT: pipeline:plugin@0.2.0: compatible with this host (pipeline:plugin@0.3.0), run as contract 0.2"
        ),
        "{shown}"
    );
    let local = Path::new(env!("PIPELINE_BUILTIN_WASM_DIR")).join("pipeline_local.wasm");
    let out = s.run(&["plugins", "inspect", local.to_str().unwrap()], &[]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        shown.contains(
            "WIT: pipeline:plugin@0.3.0: compatible with this host (pipeline:plugin@0.3.0)\n"
        ),
        "{shown}"
    );
}

/// The contract's promise to plugin authors, kept by a file nobody may rebuild:
/// `tests/fixtures/sink-built-for-wit-0.2.0.wasm` is a third-party sink built against
/// `pipeline:plugin@0.2.0` (the unmodified `pipeline plugin new sink` crate; how it was made
/// is in `tests/fixtures/README.md`). This host must run it as a sink end to end: the backup
/// and its manifest stored through its `put`, `list` showing them, retention pruning through
/// its `list` and `delete`, `verify` and `restore` reading the backup back through its `get`,
/// equal to the database it came from.
///
/// Any later change to `wit/` or the host that strands a 0.2.0 plugin fails here. Do not
/// rebuild the fixture to make this pass: it stands for plugins in the wild that nobody will
/// rebuild. Keep the host able to run 0.2.0 instead (docs/plugins.md, "Versioning and
/// compatibility").
#[test]
fn a_sink_built_for_wit_0_2_0_keeps_running_end_to_end() {
    let fixture = support::scratch::repo().join("tests/fixtures/sink-built-for-wit-0.2.0.wasm");
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();

    let out = s.run(&["plugins", "inspect", fixture.to_str().unwrap()], &[]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(shown.starts_with("fixture-sink 0.1.0 (sink)"), "{shown}");
    assert!(
        shown.contains("WIT: pipeline:plugin@0.2.0: compatible with this host"),
        "{shown}"
    );

    let store = s.path().join("store");
    let file = s.path().join("old.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nplugin = \"zstd\"\n\n\
             [[sink]]\nname = \"old\"\nplugin = \"{wasm}\"\npath = \"{store}\"\n\
             allow = {{ directories = [\"{store}\"] }}\n\n\
             [retention]\ndays = 0\nkeep_last = 2\n",
            wasm = fixture.display(),
            store = store.display()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let env = [("DATABASE_URL", pg.url("app"))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    success(&s.run(&["validate", file], &env));

    // Three runs: each stores a backup and then its manifest through the fixture's `put`;
    // with keep_last = 2, the third prunes the first through its `list` and `delete`.
    let mut made: Vec<String> = Vec::new();
    for run in 0..3 {
        let before = list(&store);
        let err = success(&s.run(&["run", file], &env));
        assert_no_secret(&pg, &err);
        let new: Vec<String> = list(&store)
            .into_iter()
            .filter(|f| !before.contains(f))
            .collect();
        let backup = new
            .iter()
            .find(|f| !f.ends_with(".sha256"))
            .unwrap_or_else(|| panic!("run {run} stored a backup: {new:?}"))
            .clone();
        assert!(
            support::scratch::is_backup_name(&backup),
            "run {run}: {backup}"
        );
        assert_eq!(
            new,
            vec![backup.clone(), format!("{backup}.sha256")],
            "run {run} stored the backup and its manifest"
        );
        let manifest =
            std::fs::read_to_string(store.join(format!("{backup}.sha256"))).expect("the manifest");
        let first = manifest.lines().next().unwrap_or_default();
        assert!(
            first.len() == 64 + 2 + backup.len()
                && first.ends_with(&format!("  {backup}"))
                && first[..64].chars().all(|c| c.is_ascii_hexdigit()),
            "run {run}: a sha256sum line: {manifest:?}"
        );
        made.push(backup);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut expected = vec![
        made[1].clone(),
        format!("{}.sha256", made[1]),
        made[2].clone(),
        format!("{}.sha256", made[2]),
    ];
    expected.sort();
    assert_eq!(
        list(&store),
        expected,
        "keep_last = 2 pruned the first backup and its manifest"
    );

    // `list` reads the store through the fixture's `list`.
    let out = s.run(&["list", file], &env);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(listing.contains("sink old (2 backups)"), "{listing}");
    for name in &made[1..] {
        let line = listing
            .lines()
            .find(|l| l.contains(name.as_str()))
            .unwrap_or_else(|| panic!("{name} is listed:\n{listing}"));
        assert!(line.contains("sha256 recorded"), "{line}");
    }
    assert!(!listing.contains(made[0].as_str()), "{listing}");

    // `verify` reads the newest back through its `get` and checks it against the manifest.
    let newest = &made[2];
    let out = s.run(&["verify", file], &env);
    let text = support::scratch::logs(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("ok      sink old: {newest}"))
            && text.contains("matches its manifest"),
        "{text}"
    );

    // `restore` brings it back into an empty database, equal to the source.
    pg.create_db("restored");
    let err = success(&s.run(&["restore", file, "--to", &pg.url("restored")], &env));
    assert!(err.contains(newest.as_str()), "restores the newest: {err}");
    assert_no_secret(&pg, &err);
    assert_eq!(pg.canonical_dump("app"), pg.canonical_dump("restored"));
}

/// A pipeline whose transform is the misbehaving plugin, its mode and limits from the
/// environment, with one earlier good backup in place.
fn limits_pipeline(s: &Scratch, pg: &PgCluster) -> (String, Vec<String>) {
    let file = s.path().join("limits.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nname = \"misbehave\"\nplugin = \"{}\"\nmode = \"${{env:MODE}}\"\n\
             limits = {{ timeout = \"${{env:TIMEOUT:-1h}}\", memory = \"${{env:MEMORY:-512MiB}}\" }}\n\n\
             [[transform]]\nplugin = \"zstd\"\n\n\
             [[sink]]\nname = \"local\"\nplugin = \"local\"\npath = \"{}\"\n\n\
             [retention]\ndays = 0\nkeep_last = 1\n",
            misbehave_wasm().display(),
            s.backups().display()
        ),
    )
    .unwrap();
    let file = file.to_str().unwrap().to_string();
    // The nosy mode passes data through: a good backup to protect.
    let out = s.run(
        &["run", &file],
        &[("DATABASE_URL", &pg.url("app")), ("MODE", "nosy")],
    );
    success(&out);
    let before = s.files();
    assert_eq!(before.len(), 2, "{before:?}");
    (file, before)
}

#[test]
fn an_endless_loop_is_stopped_by_the_time_limit_and_nothing_is_stored_or_pruned() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    let (file, before) = limits_pipeline(&s, &pg);
    let started = std::time::Instant::now();
    let out = s.run(
        &["run", &file],
        &[
            ("DATABASE_URL", &pg.url("app")),
            ("MODE", "spin"),
            ("TIMEOUT", "2s"),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("stage `transform misbehave` (plugin ")
            && err.contains("pipeline_misbehave.wasm) ran longer than its time limit (2s)"),
        "names the plugin and the limit: {err}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "stopped near its limit, not at a global timeout"
    );
    assert_eq!(s.files(), before, "nothing stored, nothing pruned");
}

#[test]
fn a_plugin_that_grows_its_memory_without_end_is_stopped_at_its_memory_limit() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    let (file, before) = limits_pipeline(&s, &pg);
    let out = s.run(
        &["run", &file],
        &[
            ("DATABASE_URL", &pg.url("app")),
            ("MODE", "grow"),
            ("MEMORY", "64MiB"),
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("pipeline_misbehave.wasm) was stopped at its memory limit (64 MiB)"),
        "names the plugin and the limit: {err}"
    );
    assert!(err.contains("limits.memory"), "says what to raise: {err}");
    assert_eq!(s.files(), before, "nothing stored, nothing pruned");
}

/// A TCP listener that counts the connections it accepts.
fn listener() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            count.fetch_add(1, Ordering::SeqCst);
            if let Ok(mut c) = conn {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf);
            }
        }
    });
    (addr, accepted)
}

#[test]
fn a_nosy_plugin_reaches_nothing_it_was_not_granted_and_the_log_names_each_try() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    let work = s.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let secret_file = s.path().join("key.txt");
    std::fs::write(&secret_file, "TOPSECRET-FILE-CONTENT").unwrap();
    let (addr, accepted) = listener();
    let url = format!("http://{addr}/steal");
    let file = s.path().join("nosy.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nname = \"nosy\"\nplugin = \"{wasm}\"\nmode = \"nosy\"\n\
             workdir = \"{work}\"\nenv = \"NOSY_SECRET\"\nfile = \"{secret}\"\n\
             dir = \"{home}\"\nurl = \"{url}\"\naddr = \"{addr}\"\nprogram = \"cat\"\n\
             allow = {{ directories = [\"{work}\"] }}\n\n\
             [[sink]]\nname = \"local\"\nplugin = \"local\"\npath = \"{backups}\"\n",
            wasm = misbehave_wasm().display(),
            work = work.display(),
            secret = secret_file.display(),
            home = s.path().display(),
            backups = s.backups().display()
        ),
    )
    .unwrap();
    let out = s.run(
        &["run", file.to_str().unwrap()],
        &[
            ("DATABASE_URL", &pg.url("app")),
            ("NOSY_SECRET", "hunter2-nosy-env"),
        ],
    );
    // Every try was an error the plugin handled: the run itself succeeds.
    let err = success(&out);
    assert!(!err.contains("LEAKED"), "something leaked:\n{err}");
    for probe in [
        "probe env NOSY_SECRET: denied".to_string(),
        "probe env (all): denied (empty)".to_string(),
        format!("probe file {}: denied", secret_file.display()),
        format!("probe file {}/../key.txt: denied", work.display()),
        format!("probe directory {}: denied", s.path().display()),
        format!("probe url {url}: denied"),
        format!("probe socket {addr}: denied"),
        "probe program cat: denied".to_string(),
    ] {
        assert!(err.contains(&probe), "missing `{probe}`:\n{err}");
    }
    // The host names what it refused where it sees the try.
    assert!(
        err.contains(&format!("denied an HTTP request to `{addr}`"))
            || err.contains("denied an HTTP request to `127.0.0.1"),
        "{err}"
    );
    assert!(
        err.contains(&format!("denied a network socket to connect to {addr}")),
        "{err}"
    );
    assert!(err.contains("denied: ") && err.contains("`cat`"), "{err}");
    for secret in ["TOPSECRET", "hunter2"] {
        assert!(!err.contains(secret), "{secret} reached the log:\n{err}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "no connection reached the listener"
    );
    assert_eq!(
        s.files().len(),
        2,
        "the data passed through: {:?}",
        s.files()
    );
    assert_eq!(
        list(&work),
        Vec::<String>::new(),
        "nothing written to its directory"
    );
}
