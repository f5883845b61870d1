//! Fault matrix: sandbox — what a plugin can never do, whatever it sends: write through a
//! read-only database grant, reach past a directory grant by `..` or a symbolic link,
//! commit or sign beyond its git grant, run native code from a cache others can write.

use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::support::git::Repo;
use crate::support::scratch::{Scratch, assert_no_secret, list, stderr};
use crate::support::{self, PgCluster};

fn misbehave_wasm() -> PathBuf {
    Path::new(env!("PIPELINE_BUILTIN_WASM_DIR")).join("pipeline_misbehave.wasm")
}

fn git_wasm() -> PathBuf {
    Path::new(env!("PIPELINE_BUILTIN_WASM_DIR")).join("pipeline_git.wasm")
}

fn success(out: &Output) -> String {
    let err = stderr(out);
    assert!(out.status.success(), "failed:\n{err}");
    err
}

/// postgres → misbehave (`escape`, granted `granted/`, its plan also asking for
/// `granted/<ASK>`) → local sink.
fn escape_pipeline(s: &Scratch, granted: &Path) -> String {
    let file = s.path().join("escape.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nname = \"escape\"\nplugin = \"{}\"\nmode = \"escape\"\n\
             workdir = \"{g}\"\nask = \"${{env:ASK}}\"\n\
             allow = {{ directories = [\"{g}\"] }}\n\n\
             [[sink]]\nname = \"local\"\nplugin = \"local\"\npath = \"{}\"\n",
            misbehave_wasm().display(),
            s.backups().display(),
            g = granted.display(),
        ),
    )
    .unwrap();
    file.to_str().unwrap().to_string()
}

#[test]
fn a_plan_path_that_climbs_out_of_its_grant_is_refused_and_nothing_is_created() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    let root = s.path().canonicalize().unwrap();
    let granted = root.join("granted");
    std::fs::create_dir(&granted).unwrap();
    let file = escape_pipeline(&s, &granted);
    let url = pg.url("app");

    // Inside the grant: created, and the run stores its backup.
    let out = s.run(
        &["run", &file],
        &[("DATABASE_URL", &url), ("ASK", "sub/new")],
    );
    success(&out);
    assert!(granted.join("sub/new").is_dir());
    let before = s.files();
    assert_eq!(before.len(), 2, "{before:?}");

    // `granted/../outside` starts with `granted/` as written, not once resolved.
    let out = s.run(
        &["run", &file],
        &[("DATABASE_URL", &url), ("ASK", "../outside")],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("stage `transform escape`")
            && err.contains(&format!(
                "needs read-write access to {}/../outside (which is {}), which the pipeline file does not grant",
                granted.display(),
                root.join("outside").display()
            )),
        "names the stage and the path: {err}"
    );
    assert!(!root.join("outside").exists(), "nothing created outside");
    assert_eq!(s.files(), before, "the earlier backup is untouched");
    assert_no_secret(&pg, &err);

    // A symbolic link inside the grant that points outside it is resolved, not followed.
    let elsewhere = root.join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    symlink(&elsewhere, granted.join("link")).unwrap();
    let out = s.run(
        &["run", &file],
        &[("DATABASE_URL", &url), ("ASK", "link/new")],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("(which is {})", elsewhere.join("new").display())),
        "names where the link leads: {err}"
    );
    assert!(
        list(&elsewhere).is_empty(),
        "nothing created through the link"
    );
    assert_eq!(s.files(), before);
}

#[test]
fn the_whole_file_system_is_never_granted() {
    let s = Scratch::new();
    let file = s.path().join("root.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"postgresql://u@127.0.0.1:9/db\"\n\n\
             [[transform]]\nname = \"greedy\"\nplugin = \"{}\"\nmode = \"nosy\"\n\
             allow = {{ read_only_directories = [\"/etc/..\"] }}\n\n\
             [[sink]]\nplugin = \"local\"\npath = \"{}\"\n",
            misbehave_wasm().display(),
            s.backups().display(),
        ),
    )
    .unwrap();
    let out = s.run(&["validate", file.to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("transform[0].allow.read_only_directories")
            && err.contains("/etc/.. is the whole file system, which is never granted"),
        "{err}"
    );
}

#[test]
fn a_host_wildcard_that_covers_a_whole_top_level_domain_is_refused() {
    let s = Scratch::new();
    let file = s.path().join("hosts.toml");
    let write = |hosts: &str| {
        std::fs::write(
            &file,
            format!(
                "[source]\nplugin = \"postgres\"\nurl = \"postgresql://u@127.0.0.1:9/db\"\n\n\
                 [[transform]]\nname = \"wide\"\nplugin = \"{}\"\nmode = \"nosy\"\n\
                 allow = {{ hosts = [{hosts}] }}\n\n\
                 [[sink]]\nplugin = \"local\"\npath = \"{}\"\n",
                misbehave_wasm().display(),
                s.backups().display(),
            ),
        )
        .unwrap();
    };
    for wide in ["*.com", "*", "*.com:443", "a.*.example.com"] {
        write(&format!("\"{wide}\""));
        let out = s.run(&["validate", file.to_str().unwrap()], &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{wide}: {err}");
        assert!(
            err.contains("transform[0].allow.hosts")
                && err.contains(&format!("`{wide}` is not a host or `*.domain.tld`")),
            "{wide}: {err}"
        );
    }
    write("\"*.example.com\", \"dav.example.org:443\", \"[::1]:9000\"");
    let out = s.run(&["validate", file.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// `allow` keys belong to the capabilities: one that none of them reads (a typo) is refused
/// before anything runs, naming where it stands and the keys that exist, rather than
/// silently granting nothing.
#[test]
fn an_allow_key_no_capability_reads_is_refused_with_its_place_and_the_known_keys() {
    let s = Scratch::new();
    let file = s.path().join("typo.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"postgresql://u@127.0.0.1:9/db\"\n\n\
             [[transform]]\nplugin = \"{}\"\nmode = \"nosy\"\n\
             allow = {{ directories = [\"{}\"], host = [\"example.com\"] }}\n\n\
             [[sink]]\nplugin = \"local\"\npath = \"{}\"\n",
            misbehave_wasm().display(),
            s.backups().display(),
            s.backups().display(),
        ),
    )
    .unwrap();
    let out = s.run(&["validate", file.to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("typo.toml:8:")
            && err.contains("transform[0].allow.host: unknown key (expected one of: ")
            && err.contains("hosts"),
        "{err}"
    );
    // A native codec reads no grants, but a typo there is refused all the same.
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"postgresql://u@127.0.0.1:9/db\"\n\n\
             [[transform]]\nplugin = \"zstd\"\nallow = {{ hostz = [\"example.com\"] }}\n\n\
             [[sink]]\nplugin = \"local\"\npath = \"{}\"\n",
            s.backups().display(),
        ),
    )
    .unwrap();
    let out = s.run(&["validate", file.to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("typo.toml:7:11:")
            && err.contains("transform[0].allow.hostz: unknown key (expected one of: "),
        "{err}"
    );
}

#[test]
fn a_plugin_file_is_never_granted_write_access_over_the_component_cache_or_the_state() {
    let s = Scratch::new();
    let file = s.path().join("over.toml");
    let cache = s.path().join("home/.cache/pipeline");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"postgresql://u@127.0.0.1:9/db\"\n\n\
             [[transform]]\nname = \"greedy\"\nplugin = \"{}\"\nmode = \"nosy\"\n\
             allow = {{ directories = [\"${{env:GRANT}}\"] }}\n\n\
             [[sink]]\nplugin = \"local\"\npath = \"{}\"\n",
            misbehave_wasm().display(),
            s.backups().display(),
        ),
    )
    .unwrap();
    let home = s.path().join("home");
    let state = s.path().join("state");
    for (grant, what, place) in [
        (&home, "component cache", &cache),
        (&cache, "component cache", &cache),
        (&state, "state directory", &state),
    ] {
        let out = s.run(
            &["validate", file.to_str().unwrap()],
            &[
                ("PIPELINE_CACHE_DIR", cache.to_str().unwrap()),
                ("GRANT", grant.to_str().unwrap()),
            ],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!(
                "would be granted read-write access to {}, which holds pipeline's {what} ({})",
                grant.display(),
                place.display()
            )),
            "{err}"
        );
    }
    // A directory beside them is fine.
    let out = s.run(
        &["validate", file.to_str().unwrap()],
        &[
            ("PIPELINE_CACHE_DIR", cache.to_str().unwrap()),
            ("GRANT", s.path().join("work").to_str().unwrap()),
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

// --- the read-only database grant -------------------------------------------------------

/// `app` owns a `roles` table and a sequence; the pipeline's only entity type runs QUERY.
fn snapshot_pipeline(s: &Scratch, pg: &PgCluster, query: &str) -> Output {
    let file = s.path().join("snap.toml");
    let out_dir = s.path().join("history");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"pg-snapshot\"\nurl = \"${{env:DATABASE_URL}}\"\n\
             [[source.entities]]\ntype = \"sneaky\"\nquery = \"\"\"{query}\"\"\"\n\n\
             [[sink]]\nname = \"history\"\nplugin = \"git\"\nrepository = \"{}\"\ncommit = false\n",
            out_dir.display()
        ),
    )
    .unwrap();
    s.run(
        &["run", file.to_str().unwrap()],
        &[("DATABASE_URL", &pg.url("app"))],
    )
}

fn tables(pg: &PgCluster) -> String {
    pg.psql(
        "app",
        "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public';
         SELECT last_value || '/' || is_called FROM s;
         SELECT string_agg(name, ',' ORDER BY id) FROM roles;",
    )
}

#[test]
fn a_read_only_database_grant_holds_against_whatever_sql_a_plugin_sends() {
    let pg = PgCluster::start();
    pg.create_db("app");
    pg.psql(
        "app",
        "SET ROLE app; CREATE TABLE roles (id int PRIMARY KEY, name text NOT NULL);
         INSERT INTO roles VALUES (1, 'Admin'); CREATE SEQUENCE s;",
    );
    let s = Scratch::new();
    let before = tables(&pg);
    let select = "SELECT id::text, name, to_jsonb(r)::text FROM roles r";
    const SEVERAL: &str = "cannot insert multiple commands into a prepared statement";
    const CONTROL: &str = "is refused: the host runs every query in a read-only transaction";
    const MODE: &str = "transaction read-write mode must be set before any query";
    let hostile = [
        // Several statements: refused whole, none of them runs (this one already for
        // its first word).
        (format!("COMMIT; CREATE TABLE pwned (); {select}"), CONTROL),
        (format!("SET transaction_read_only = off; CREATE TABLE pwned (); {select}"), SEVERAL),
        (format!("{select}; INSERT INTO roles VALUES (2, 'Mallory')"), SEVERAL),
        // Transaction control: the host owns the transaction.
        ("COMMIT".to_string(), CONTROL),
        ("/* hidden */ -- really\n  end".to_string(), CONTROL),
        ("SET TRANSACTION READ WRITE".to_string(), CONTROL),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE".to_string(), CONTROL),
        // Leaving read-only mode from inside: refused by the server.
        ("SET transaction_read_only = off".to_string(), MODE),
        (format!("{select} WHERE set_config('transaction_read_only', 'off', false) IS NOT NULL"), MODE),
        // Writes hidden in a query.
        ("WITH x AS (INSERT INTO roles VALUES (3, 'Eve') RETURNING *) SELECT id::text, name, to_jsonb(x)::text FROM x".to_string(),
         "cannot execute SELECT in a read-only transaction"),
        ("SELECT nextval('s')::text, 'n', '{}'".to_string(), "cannot execute nextval() in a read-only transaction"),
        ("SELECT lo_import('/etc/hostname')::text, 'n', '{}'".to_string(), "lo_import"),
        ("CREATE TABLE pwned ()".to_string(), "cannot execute CREATE TABLE in a read-only transaction"),
        ("DO $$ BEGIN CREATE TABLE pwned (); END $$".to_string(), "cannot execute CREATE TABLE in a read-only transaction"),
    ];
    for (query, why) in &hostile {
        let out = snapshot_pipeline(&s, &pg, query);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{query}: {err}");
        assert!(
            err.contains("entity type `sneaky`") && err.contains(why),
            "{query}: names the entity type and says why ({why}): {err}"
        );
        assert_eq!(tables(&pg), before, "{query}: the database is unchanged");
        assert!(
            list(&s.path().join("history/snapshots")).is_empty(),
            "{query}: nothing recorded"
        );
        assert_no_secret(&pg, &err);
    }
    // A setting changed by one query does not outlive it: the next query still cannot
    // write (the host rolls back every call, and opens every transaction READ ONLY).
    let file = s.path().join("two.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"pg-snapshot\"\nurl = \"${{env:DATABASE_URL}}\"\n\
             [[source.entities]]\ntype = \"first\"\nquery = \"{select} WHERE set_config('default_transaction_read_only', 'off', false) IS NOT NULL\"\n\
             [[source.entities]]\ntype = \"second\"\nquery = \"CREATE TABLE pwned ()\"\n\n\
             [[sink]]\nname = \"history\"\nplugin = \"git\"\nrepository = \"{}\"\ncommit = false\n",
            s.path().join("history").display()
        ),
    )
    .unwrap();
    let out = s.run(
        &["run", file.to_str().unwrap()],
        &[("DATABASE_URL", &pg.url("app"))],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("entity type `second`") && err.contains("read-only transaction"),
        "{err}"
    );
    assert_eq!(tables(&pg), before);

    // The same pipeline with a plain SELECT works.
    let out = snapshot_pipeline(&s, &pg, select);
    success(&out);
    assert_eq!(list(&s.path().join("history/snapshots")).len(), 1);
}

// --- the git capability -----------------------------------------------------------------

use pipeline::bindings::PluginError;
use pipeline::bindings::snapshot_sink::pipeline::plugin::git::{
    CommitRequest, Host as _, Person, Signing,
};

/// The grants `pipeline` gives the stage `sink history` of a pipeline file, and a store
/// built from them: calls on it are what the stage's plugin calls reach.
fn git_stage(s: &Scratch, sink: &str) -> wasmtime::Store<pipeline::capabilities::StoreState> {
    let file = s.path().join("git.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"pg-snapshot\"\nurl = \"postgresql://u@127.0.0.1:9/db\"\n\
             [[source.entities]]\ntype = \"role\"\nquery = \"SELECT 1\"\n\n\
             [[sink]]\nname = \"history\"\n{sink}\n"
        ),
    )
    .unwrap();
    let engine = pipeline::engine::Engine::new().unwrap();
    let pipeline = pipeline::config::load(&file).unwrap_or_else(|e| panic!("{e}"));
    let prepared = pipeline::stages::prepare(&engine, pipeline).unwrap_or_else(|e| panic!("{e:#}"));
    let grants = prepared.sinks[0].run.grants.clone();
    engine
        .store("sink history", &grants, &Default::default())
        .unwrap()
}

fn request(paths: &[&str], signing: Option<Signing>) -> CommitRequest {
    let who = Person {
        name: "Rogue".into(),
        email: "rogue@test.invalid".into(),
    };
    CommitRequest {
        paths: paths.iter().map(|p| p.to_string()).collect(),
        message: "steal".into(),
        author: who.clone(),
        committer: who,
        signing,
    }
}

fn denied(result: Result<Option<String>, PluginError>, what: &str) -> String {
    match result {
        Err(PluginError::Denied(msg)) => msg,
        other => panic!("{what}: expected a denial, got {other:?}"),
    }
}

#[test]
fn a_snapshot_sink_commits_only_under_its_granted_directory() {
    let s = Scratch::new();
    let repo = Repo::new(s.path());
    let dir = repo.dir.canonicalize().unwrap();
    std::fs::write(dir.join(".env"), "SECRET=1\n").unwrap();
    std::fs::write(dir.join(".gitignore"), ".env\n").unwrap();
    std::fs::write(s.path().join("x"), "outside\n").unwrap();
    std::fs::create_dir_all(dir.join("snapshots")).unwrap();
    std::fs::write(dir.join("snapshots/a.json"), "{}\n").unwrap();
    symlink("../.env", dir.join("snapshots/env-link")).unwrap();
    let head = repo.head();
    let mut store = git_stage(
        &s,
        &format!(
            "plugin = \"{}\"\nrepository = \"{d}\"\n\
             allow = {{ directories = [\"{d}/snapshots\"], repositories = [\"{d}\"] }}",
            git_wasm().display(),
            d = dir.display()
        ),
    );
    let repo_path = dir.display().to_string();
    for path in [
        ".env",
        "../x",
        "snapshots/../.env",
        "snapshots/env-link",
        "snapshots",
        "README.md",
    ] {
        let msg = denied(
            store
                .data_mut()
                .commit(repo_path.clone(), request(&[path], None)),
            path,
        );
        assert!(
            msg.contains(
                "stage `sink history` may commit only files under the directories it was granted"
            ) && msg.contains(&format!("{path:?}")),
            "{msg}"
        );
        // One bad path refuses the whole commit.
        denied(
            store.data_mut().commit(
                repo_path.clone(),
                request(&["snapshots/a.json", path], None),
            ),
            path,
        );
    }
    assert_eq!(repo.head(), head, "nothing was committed");
    // Its own files commit.
    let id = store
        .data_mut()
        .commit(repo_path.clone(), request(&["snapshots/a.json"], None))
        .unwrap_or_else(|e| panic!("{e:?}"));
    assert!(id.is_some());
    let files = support::git::git(&dir, &["show", "--name-only", "--format=", "HEAD"]);
    assert_eq!(files.trim(), "snapshots/a.json");
}

#[test]
fn a_snapshot_sink_signs_only_with_the_key_its_pipeline_file_configures() {
    let s = Scratch::new();
    let repo = Repo::new(s.path());
    let dir = repo.dir.canonicalize().unwrap();
    std::fs::create_dir_all(dir.join("snapshots")).unwrap();
    std::fs::write(dir.join("snapshots/a.json"), "{}\n").unwrap();
    let head = repo.head();
    // Two ssh keys: the configured one and another the user also has.
    let keygen = |name: &str| {
        let key = s.path().join(name);
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&key)
            .output()
            .expect("ssh-keygen (apt-get install openssh-client)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        key
    };
    let (configured, other) = (keygen("configured"), keygen("other"));
    let mut store = git_stage(
        &s,
        &format!(
            "plugin = \"git\"\nrepository = \"{}\"\nsign = true\nsigning_format = \"ssh\"\n\
             signing_key = \"{}\"",
            dir.display(),
            configured.display()
        ),
    );
    let repo_path = dir.display().to_string();
    for signing in [
        Signing::Ssh(other.display().to_string()),
        Signing::Ssh(format!("{}/../other", configured.display())),
        Signing::Gpg(None),
        Signing::Gpg(Some("ABCDEF0123456789".into())),
    ] {
        let msg = denied(
            store.data_mut().commit(
                repo_path.clone(),
                request(&["snapshots/a.json"], Some(signing.clone())),
            ),
            &format!("{signing:?}"),
        );
        assert!(
            msg.contains("stage `sink history` may not sign with")
                && msg.contains("signs only with the key its pipeline file configures"),
            "{msg}"
        );
    }
    assert_eq!(repo.head(), head, "nothing was committed");
    // The configured key signs (spelled differently, the same file).
    let id = store
        .data_mut()
        .commit(
            repo_path,
            request(
                &["snapshots/a.json"],
                Some(Signing::Ssh(format!("{}/./configured", s.path().display()))),
            ),
        )
        .unwrap_or_else(|e| panic!("{e:?}"))
        .expect("a commit");
    let raw = support::git::git(&dir, &["cat-file", "commit", &id]);
    assert!(raw.contains("-----BEGIN SSH SIGNATURE-----"), "{raw}");

    // A plugin file signs only with what `allow.signing_keys` grants.
    let mut store = git_stage(
        &s,
        &format!(
            "plugin = \"{}\"\nrepository = \"{d}\"\n\
             allow = {{ directories = [\"{d}/snapshots\"], repositories = [\"{d}\"], \
             signing_keys = [\"ssh:{}\"] }}",
            git_wasm().display(),
            configured.display(),
            d = dir.display()
        ),
    );
    denied(
        store.data_mut().commit(
            dir.display().to_string(),
            request(
                &["snapshots/a.json"],
                Some(Signing::Ssh(other.display().to_string())),
            ),
        ),
        "another key",
    );
}

// --- the component cache ----------------------------------------------------------------

/// `NAME.toml`: `postgres` → the misbehaving transform in `mode` → `local` into `backups`.
fn misbehave_pipeline(s: &Scratch, name: &str, mode: &str, backups: &Path) -> PathBuf {
    let file = s.path().join(format!("{name}.toml"));
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nname = \"{mode}\"\nplugin = \"{}\"\nmode = \"{mode}\"\n\n\
             [[sink]]\nname = \"local\"\nplugin = \"local\"\npath = \"{}\"\n",
            misbehave_wasm().display(),
            backups.display(),
        ),
    )
    .unwrap();
    file
}

/// A run of the nosy transform with its own cache directory.
fn cached_run(s: &Scratch, pg: &PgCluster, cache: &Path) -> Output {
    let file = misbehave_pipeline(s, "cache", "nosy", &s.backups());
    s.run(
        &["run", file.to_str().unwrap()],
        &[
            ("DATABASE_URL", &pg.url("app")),
            ("PIPELINE_CACHE_DIR", cache.to_str().unwrap()),
        ],
    )
}

fn entries(cache: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    v.sort();
    v
}

#[test]
fn a_component_cache_others_can_write_or_that_was_altered_is_not_loaded() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    let cache = s.path().join("cache");
    // The first run compiles and caches (postgres, misbehave, local).
    let err = success(&cached_run(&s, &pg, &cache));
    assert!(!err.contains("not loading the compiled plugin"), "{err}");
    let cached = entries(&cache);
    assert_eq!(cached.len(), 3, "{cached:?}");
    let mode = std::fs::metadata(&cache).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "created private: {mode:o}");
    for e in &cached {
        let mode = std::fs::metadata(e).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{}: {mode:o}", e.display());
    }
    // Cached: a second run warns about nothing.
    let err = success(&cached_run(&s, &pg, &cache));
    assert!(!err.contains("not loading the compiled plugin"), "{err}");

    // A directory any user can write: nothing in it is loaded, the run still succeeds.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = cached_run(&s, &pg, &cache);
    let err = success(&out);
    assert!(
        err.contains(&format!(
            "not loading the compiled plugin cached in {}",
            cache.display()
        )) && err.contains("the cache directory is writable by every user (mode 777)"),
        "{err}"
    );
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();

    // A file another user could write.
    std::fs::set_permissions(&cached[0], std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = success(&cached_run(&s, &pg, &cache));
    assert!(
        err.contains("the cache file is writable by every user (mode 666)"),
        "{err}"
    );

    // A replaced or corrupted entry: one byte changed in the compiled code.
    for e in entries(&cache) {
        std::fs::set_permissions(&e, std::fs::Permissions::from_mode(0o600)).unwrap();
        let mut bytes = std::fs::read(&e).unwrap();
        let last = bytes.len() - 100;
        bytes[last] ^= 0xff;
        std::fs::write(&e, bytes).unwrap();
    }
    let out = cached_run(&s, &pg, &cache);
    let err = success(&out);
    assert!(
        err.contains("its SHA-256 does not match its contents (corrupted or replaced)"),
        "{err}"
    );
    assert_eq!(s.files().len(), 2 * 5, "every run stored its backup");
    // The entries were written again, and load cleanly.
    let err = success(&cached_run(&s, &pg, &cache));
    assert!(!err.contains("not loading the compiled plugin"), "{err}");

    // The digest beside an entry: altered, it is a mismatch; writable by others, refused;
    // missing (a run stopped between writing the two), the entry is written again quietly.
    let digest = |e: &Path| PathBuf::from(format!("{}.sha256", e.display()));
    let entry = entries(&cache)[0].clone();
    let recorded = std::fs::read_to_string(digest(&entry)).unwrap();
    assert!(
        recorded.starts_with("pipeline component cache 2\n"),
        "{recorded}"
    );
    let mut flipped = recorded.trim_end().to_owned();
    let last = flipped.pop();
    flipped.push(if last == Some('0') { '1' } else { '0' });
    std::fs::write(digest(&entry), format!("{flipped}\n")).unwrap();
    let err = success(&cached_run(&s, &pg, &cache));
    assert!(
        err.contains("its SHA-256 does not match its contents (corrupted or replaced)"),
        "{err}"
    );
    std::fs::set_permissions(digest(&entry), std::fs::Permissions::from_mode(0o666)).unwrap();
    let err = success(&cached_run(&s, &pg, &cache));
    assert!(
        err.contains("the cache digest file is writable by every user (mode 666)"),
        "{err}"
    );
    std::fs::remove_file(digest(&entry)).unwrap();
    let err = success(&cached_run(&s, &pg, &cache));
    assert!(!err.contains("not loading the compiled plugin"), "{err}");
    assert_eq!(
        std::fs::read_to_string(digest(&entry)).unwrap(),
        recorded,
        "written again, 0600"
    );
    let mode = std::fs::metadata(digest(&entry))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");

    // An entry in version 1's layout (`KEY.cwasm`, one file) is removed once the entry of
    // the same plugin is written in version 2's.
    let v1 = PathBuf::from(entry.display().to_string().replace(".2.cwasm", ".cwasm"));
    std::fs::write(&v1, b"pipeline component cache 1\n").unwrap();
    std::fs::remove_file(&entry).unwrap();
    success(&cached_run(&s, &pg, &cache));
    assert!(entry.exists() && !v1.exists(), "{:?}", entries(&cache));
}

/// The compiled code is mapped from the cache, not copied; on a `noexec` mount, where it
/// cannot be mapped executable, it is read into memory instead: still from the cache,
/// still checked, no warning and nothing compiled again.
#[test]
fn a_component_cache_on_a_noexec_mount_is_read_instead_of_mapped() {
    let pg = PgCluster::start();
    pg.create_db("app");
    support::load_sample(&pg, "app");
    let s = Scratch::new();
    let file = s.path().join("noexec.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[sink]]\nname = \"local\"\nplugin = \"local\"\npath = \"{}\"\n",
            s.backups().display(),
        ),
    )
    .unwrap();
    let run = |cache: &Path| {
        success(&s.run(
            &["-v", "run", file.to_str().unwrap()],
            &[
                ("DATABASE_URL", &pg.url("app")),
                ("PIPELINE_CACHE_DIR", cache.to_str().unwrap()),
            ],
        ))
    };
    let mapped = s.path().join("cache");
    run(&mapped);
    let err = run(&mapped);
    assert!(!err.contains("cannot map cache entry"), "{err}");
    assert_eq!(entries(&mapped).len(), 2, "{:?}", entries(&mapped));

    let noexec = s.path().join("noexec-cache");
    let _mount = crate::inputs::Tmpfs::mount_with(&noexec, "size=64m,mode=0700,noexec");
    run(&noexec);
    let cached = entries(&noexec);
    assert_eq!(cached.len(), 2, "{cached:?}");
    let written: Vec<_> = cached
        .iter()
        .map(|e| std::fs::metadata(e).unwrap().modified().unwrap())
        .collect();
    let err = run(&noexec);
    assert!(
        err.contains(&format!("cannot map cache entry {}", noexec.display())),
        "{err}"
    );
    assert!(
        !err.contains("not loading the compiled plugin") && !err.contains("ignoring cache entry"),
        "{err}"
    );
    let again: Vec<_> = cached
        .iter()
        .map(|e| std::fs::metadata(e).unwrap().modified().unwrap())
        .collect();
    assert_eq!(
        written, again,
        "read from the cache, not compiled and written again"
    );
    assert_eq!(s.files().len(), 2 * 4, "every run stored its backup");

    // While a run is under way (its transform sleeps once every stage has started), the
    // code of the cached components is a mapping of their cache files.
    let sleepy_backups = s.path().join("sleepy-backups");
    let sleepy = misbehave_pipeline(&s, "sleepy", "sleep", &sleepy_backups);
    let mut child = s.spawn(
        &["run", sleepy.to_str().unwrap()],
        &[
            ("DATABASE_URL", &pg.url("app")),
            ("PIPELINE_CACHE_DIR", mapped.to_str().unwrap()),
        ],
    );
    let maps_file = format!("/proc/{}/maps", child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    // The local sink's partial file shows that every stage was loaded and started.
    while std::time::Instant::now() < deadline
        && std::fs::read_dir(&sleepy_backups).map_or(true, |mut d| d.next().is_none())
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let maps = std::fs::read_to_string(&maps_file).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    let code: Vec<&str> = maps
        .lines()
        .filter(|l| l.contains(mapped.to_str().unwrap()) && l.contains(".2.cwasm"))
        .collect();
    assert!(
        code.iter()
            .any(|l| l.split_whitespace().nth(1) == Some("r-xp")),
        "no executable mapping of the cache in:\n{maps}"
    );
}

// --- the memory limit -------------------------------------------------------------------

/// A core module with two memories of one page each, exported as `a` and `b`
/// (hand-encoded: no text-format parser is needed).
const TWO_MEMORIES: &[u8] = &[
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version
    0x05, 0x05, 0x02, 0x00, 0x01, 0x00, 0x01, // memory section: two, min 1 page
    0x07, 0x09, 0x02, // export section, two exports
    0x01, b'a', 0x02, 0x00, // "a": memory 0
    0x01, b'b', 0x02, 0x01, // "b": memory 1
];

#[test]
fn the_memory_limit_is_for_the_whole_stage_not_for_each_memory() {
    const MIB: u64 = 1 << 20;
    const PAGE: u64 = 64 << 10;
    let engine = pipeline::engine::Engine::new().unwrap();
    // The store every stage's plugin runs in, with `limits.memory = "4MiB"`.
    let limits = pipeline::config::Limits {
        memory: 4 * MIB,
        ..Default::default()
    };
    let mut store = engine
        .store("transform greedy", &Default::default(), &limits)
        .unwrap();
    let module = wasmtime::Module::new(engine.wasmtime(), TWO_MEMORIES).unwrap();
    let instance = wasmtime::Instance::new(&mut store, &module, &[]).unwrap();
    let a = instance.get_memory(&mut store, "a").unwrap();
    let b = instance.get_memory(&mut store, "b").unwrap();
    // 3 MiB in `a`, then 2 MiB more in `b`: each under 4 MiB, together over it.
    a.grow(&mut store, 3 * MIB / PAGE - 1).unwrap();
    let err = b.grow(&mut store, 2 * MIB / PAGE).unwrap_err();
    let err = anyhow::Error::from(err);
    let message = pipeline::engine::describe_trap("transform greedy", None, &limits, &err);
    assert!(
        message.contains("stage `transform greedy` was stopped at its memory limit (4 MiB)")
            && message.contains("grow its memories and tables to 5 MiB in all"),
        "{message}"
    );
    assert_eq!(
        b.size(&store),
        1,
        "the growth past the limit did not happen"
    );
    // What is left of the limit can still be used.
    b.grow(&mut store, MIB / PAGE - 2).unwrap();
}
