//! Snapshot pipelines against a real PostgreSQL server, real git (a repository and a bare
//! remote) and real gpg (a throwaway key): files and JSON in the original format, signed
//! commits with the original messages, nothing else committed, pushes that land, hostile
//! names kept as data, no commit when nothing changed, and both ways in (pull and record).

mod support;

use std::path::Path;

use serde_json::Value as Json;
use support::PgCluster;
use support::git::{Gpg, Repo, git};
use support::scratch::{Scratch, assert_no_secret, list, repo, stderr};

fn snapshots_toml() -> String {
    repo()
        .join("pipelines/snapshots.toml")
        .display()
        .to_string()
}

const HOSTILE: &str = "Robert'); DROP TABLE roles;-- $(touch pwned) \"x\"\nnext ✓";

fn schema(pg: &PgCluster) {
    pg.psql(
        "app",
        "SET ROLE app;
         CREATE TABLE roles (id int PRIMARY KEY, name text NOT NULL, permissions jsonb NOT NULL,
                             updated_at timestamptz DEFAULT now(), updated_by text);",
    );
    pg.psql(
        "app",
        &format!(
            "SET ROLE app; INSERT INTO roles (id, name, permissions, updated_by) VALUES
             (1, 'Admin', '[\"read\", \"write\"]', 'alice@example.com'),
             (2, {}, '[\"read\"]', NULL);",
            sql_literal(HOSTILE)
        ),
    );
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    fn pairs(&self) -> Vec<(&str, &str)> {
        self.vars
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
}

fn env(pg: &PgCluster, repo: &Repo, gpg: &Gpg, s: &Scratch) -> Env {
    let vars = [
        ("DATABASE_URL", pg.url("app")),
        ("GIT_SNAPSHOTS_ENABLED", "true".into()),
        ("GIT_SNAPSHOT_USER", "Snap Bot".into()),
        ("GIT_SNAPSHOT_EMAIL", "bot@example.com".into()),
        ("GIT_SIGN_COMMITS", "true".into()),
        ("GIT_SIGNING_KEY", gpg.fingerprint.clone()),
        ("GIT_SNAPSHOT_REPO", repo.dir.display().to_string()),
        ("GIT_SNAPSHOT_PUSH", "true".into()),
        ("GNUPGHOME", gpg.path().display().to_string()),
        // No global git configuration can help: there is none.
        ("HOME", s.path().display().to_string()),
        ("GIT_CONFIG_GLOBAL", "/dev/null".into()),
        ("GIT_CONFIG_NOSYSTEM", "1".into()),
    ];
    Env {
        vars: vars.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    }
}

fn ok(out: &std::process::Output) -> String {
    let err = stderr(out);
    assert!(out.status.success(), "failed:\n{err}");
    err
}

fn read_json(path: &Path) -> (String, Json) {
    let text = std::fs::read_to_string(path).unwrap();
    let json = serde_json::from_str(&text).unwrap();
    (text, json)
}

#[test]
fn pulled_changes_become_signed_commits_of_their_own_files_only() {
    let pg = PgCluster::start();
    pg.create_db("app");
    schema(&pg);
    let s = Scratch::new();
    let repo = Repo::new(s.path());
    let gpg = Gpg::new();
    // Someone's work in progress: staged and unstaged changes the pipeline must not touch.
    std::fs::write(repo.dir.join("unrelated.txt"), "staged, not mine\n").unwrap();
    git(&repo.dir, &["add", "unrelated.txt"]);
    std::fs::write(repo.dir.join("README.md"), "app\nedited\n").unwrap();
    let start = repo.head();
    let env = env(&pg, &repo, &gpg, &s);

    let err = ok(&s.run(&["run", &snapshots_toml()], &env.pairs()));
    assert_no_secret(&pg, &err);
    let dir = repo.dir.join("snapshots");
    let files = list(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    let admin = files
        .iter()
        .find(|f| f.ends_with("_role_create_Admin_1.json"));
    let admin = admin.unwrap_or_else(|| panic!("{files:?}"));
    let time = &admin[..24];
    assert!(
        time.len() == 24 && time.ends_with('Z') && !time.contains(':') && !time.contains('.'),
        "{admin}"
    );
    // The exact original document: key order, 2-space indent, no `user` when unknown.
    let (text, json) = read_json(&dir.join(admin));
    let ts = json["metadata"]["timestamp"].as_str().unwrap().to_string();
    let ms = ts.parse::<jiff::Timestamp>().unwrap().as_millisecond();
    assert_eq!(
        text,
        format!(
            "{{\n  \"metadata\": {{\n    \"id\": \"1-{ms}\",\n    \"timestamp\": \"{ts}\",\n    \"type\": \"role\",\n    \"entityId\": \"1\",\n    \"entityName\": \"Admin\",\n    \"action\": \"create\",\n    \"user\": \"alice@example.com\"\n  }},\n  \"data\": {{\n    \"id\": 1,\n    \"name\": \"Admin\",\n    \"permissions\": [\n      \"read\",\n      \"write\"\n    ]\n  }}\n}}"
        )
    );
    assert_eq!(ts.replace([':', '.'], "-"), time);

    let hostile = files.iter().find(|f| !f.contains("Admin")).unwrap();
    assert!(
        hostile.ends_with(
            "_role_create_Robert____DROP_TABLE_roles_--___touch_pwned___x__next___2.json"
        ),
        "{hostile}"
    );
    let (_, json) = read_json(&dir.join(hostile));
    assert_eq!(json["metadata"]["entityName"], HOSTILE);
    assert!(json["metadata"].get("user").is_none(), "{json}");

    let commits = repo.commits_since(&start);
    let subjects: Vec<&str> = commits.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(
        subjects,
        [
            "[SNAPSHOT] create role: Admin (1)".to_string(),
            format!(
                "[SNAPSHOT] create role: {} (2)",
                HOSTILE.replace('\n', "\\n")
            ),
        ]
    );
    for (id, _) in &commits {
        gpg.verify(&repo.dir, id)
            .unwrap_or_else(|e| panic!("{id} does not verify: {e}"));
        let who = git(
            &repo.dir,
            &["show", "-s", "--format=%an <%ae>|%cn <%ce>", id],
        );
        assert_eq!(
            who.trim(),
            "Snap Bot <bot@example.com>|Snap Bot <bot@example.com>"
        );
        let changed = git(&repo.dir, &["show", "--format=", "--name-only", id]);
        assert_eq!(changed.lines().count(), 1, "one file per commit: {changed}");
        assert!(changed.starts_with("snapshots/"), "{changed}");
    }
    // The staged and unstaged work is exactly as it was.
    let status = git(&repo.dir, &["status", "--porcelain"]);
    assert_eq!(status, " M README.md\nA  unrelated.txt\n", "{status}");
    // Pushed.
    let remote = git(&repo.remote, &["rev-parse", "refs/heads/main"]);
    assert_eq!(remote.trim(), repo.head());
    // Names were data: no command ran.
    for place in [s.path(), repo.dir.as_path()] {
        assert!(!place.join("pwned").exists(), "{}", place.display());
    }

    // Nothing changed: nothing written, nothing committed.
    let head = repo.head();
    let err = ok(&s.run(&["run", &snapshots_toml()], &env.pairs()));
    assert!(
        err.contains("0 changed") || err.contains("nothing changed"),
        "{err}"
    );
    assert_eq!(repo.head(), head);
    assert_eq!(list(&dir), files);

    // An update (a column the query leaves out changes too: no effect) and a deletion.
    pg.psql(
        "app",
        "SET ROLE app; UPDATE roles SET permissions = '[\"read\", \"write\", \"admin\"]', updated_at = now(), updated_by = 'bob@example.com' WHERE id = 1; DELETE FROM roles WHERE id = 2;",
    );
    ok(&s.run(&["run", &snapshots_toml()], &env.pairs()));
    let commits = repo.commits_since(&head);
    let subjects: Vec<&str> = commits.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(subjects.len(), 2, "{subjects:?}");
    assert_eq!(subjects[0], "[SNAPSHOT] update role: Admin (1)");
    assert!(
        subjects[1].starts_with("[SNAPSHOT] delete role: Robert')"),
        "{subjects:?}"
    );
    let files = list(&dir);
    assert_eq!(files.len(), 4, "{files:?}");
    let update = files.iter().find(|f| f.contains("_update_")).unwrap();
    let (_, json) = read_json(&dir.join(update));
    assert_eq!(json["metadata"]["user"], "bob@example.com");
    assert_eq!(json["data"]["permissions"][2], "admin");

    let out = s.run(&["list", &snapshots_toml()], &env.pairs());
    ok(&out);
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.starts_with("sink git: 4 snapshots of 2 entities, newest "),
        "{listed}"
    );

    // History and diff read it back.
    let out = s.run(
        &[
            "snapshot",
            "history",
            &snapshots_toml(),
            "--type",
            "role",
            "--id",
            "1",
        ],
        &env.pairs(),
    );
    ok(&out);
    let history = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 2, "{history}");
    assert!(
        lines[0].contains(" update ") && lines[0].contains("(by bob@example.com)"),
        "{history}"
    );
    assert!(lines[1].contains(" create "), "{history}");
    let out = s.run(
        &[
            "snapshot",
            "diff",
            &snapshots_toml(),
            "--type",
            "role",
            "--id",
            "1",
        ],
        &env.pairs(),
    );
    ok(&out);
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(diff.contains("+    \"admin\""), "{diff}");
    assert!(diff.contains(&format!("--- {admin}")), "{diff}");
    let out = s.run(
        &["snapshot", "show", &snapshots_toml(), admin],
        &env.pairs(),
    );
    ok(&out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        std::fs::read_to_string(dir.join(admin)).unwrap()
    );
}

#[test]
fn an_application_records_one_change_with_the_record_command() {
    let pg = PgCluster::start();
    pg.create_db("app");
    schema(&pg);
    let s = Scratch::new();
    let repo = Repo::new(s.path());
    let gpg = Gpg::new();
    let env = env(&pg, &repo, &gpg, &s);
    let start = repo.head();
    let record = |action: &str, data: &str| {
        s.run_with_stdin(
            &[
                "snapshot",
                "record",
                &snapshots_toml(),
                "--type",
                "coorp-graph",
                "--id",
                "g/1",
                "--name",
                "Main graph $(id)",
                "--action",
                action,
                "--user",
                "carol@example.com",
            ],
            &env.pairs(),
            data,
        )
    };
    let out = record("create", r#"{"nodes": [1, 2], "z": true, "a": null}"#);
    ok(&out);
    let file = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        file.ends_with("_coorp-graph_create_Main_graph___id__g%2F1.json"),
        "{file}"
    );
    let (text, json) = read_json(&repo.dir.join("snapshots").join(&file));
    assert_eq!(json["metadata"]["user"], "carol@example.com");
    // The application's key order is kept.
    assert!(
        text.contains("\"nodes\": [\n      1,\n      2\n    ],\n    \"z\": true,\n    \"a\": null"),
        "{text}"
    );
    let out = record("update", r#"{"nodes": [1, 2, 3], "z": true, "a": null}"#);
    ok(&out);
    let commits = repo.commits_since(&start);
    assert_eq!(
        commits.iter().map(|(_, s)| s.as_str()).collect::<Vec<_>>(),
        [
            "[SNAPSHOT] create coorp-graph: Main graph $(id) (g/1)",
            "[SNAPSHOT] update coorp-graph: Main graph $(id) (g/1)"
        ]
    );
    for (id, _) in &commits {
        gpg.verify(&repo.dir, id).unwrap();
    }
    let out = s.run(
        &[
            "snapshot",
            "diff",
            &snapshots_toml(),
            "--type",
            "coorp-graph",
            "--id",
            "g/1",
        ],
        &env.pairs(),
    );
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("+    3\n"));

    // Bad input is refused before anything is written.
    let head = repo.head();
    let out = record("update", "not json");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("not JSON"), "{}", stderr(&out));
    let out = record("rename", "{}");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("create, update or delete"),
        "{}",
        stderr(&out)
    );
    assert_eq!(repo.head(), head);
    assert_eq!(list(&repo.dir.join("snapshots")).len(), 2);
}

#[test]
fn with_git_disabled_the_files_are_still_written() {
    let pg = PgCluster::start();
    pg.create_db("app");
    schema(&pg);
    let s = Scratch::new();
    let dir = s.path().join("plain");
    std::fs::create_dir_all(&dir).unwrap();
    let out = s.run(
        &["run", &snapshots_toml()],
        &[
            ("DATABASE_URL", &pg.url("app")),
            ("GIT_SNAPSHOT_REPO", dir.to_str().unwrap()),
        ],
    );
    ok(&out);
    assert_eq!(list(&dir.join("snapshots")).len(), 2);
    assert!(!dir.join(".git").exists(), "no repository was made");
}

#[test]
fn a_repository_that_is_not_granted_is_denied() {
    let pg = PgCluster::start();
    pg.create_db("app");
    schema(&pg);
    let s = Scratch::new();
    let repo = Repo::new(s.path());
    let wasm = Path::new(env!("PIPELINE_BUILTIN_WASM_DIR")).join("pipeline_git.wasm");
    let snaps = repo.dir.join("snapshots");
    let file = s.path().join("third.toml");
    let write = |allow: &str| {
        std::fs::write(
            &file,
            format!(
                "[source]\nplugin = \"pg-snapshot\"\nurl = \"${{env:DATABASE_URL}}\"\n\
                 [[source.entities]]\ntype = \"role\"\nquery = \"SELECT id::text, name, permissions::text FROM roles\"\n\n\
                 [[sink]]\nname = \"history\"\nplugin = \"{}\"\nrepository = \"{}\"\n{allow}\n",
                wasm.display(),
                repo.dir.display()
            ),
        )
        .unwrap();
    };
    let env = [("DATABASE_URL", pg.url("app"))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // The snapshot directory is granted, the repository is not.
    write(&format!(
        "allow = {{ directories = [\"{}\"] }}",
        snaps.display()
    ));
    let out = s.run(&["run", file.to_str().unwrap()], &env);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!(
            "allow = {{ repositories = [\"{}\"] }}",
            repo.dir.display()
        )),
        "says what to add: {err}"
    );
    let head = repo.head();
    assert!(!snaps.exists(), "nothing written");

    // Granted both, the same plugin file commits.
    write(&format!(
        "allow = {{ directories = [\"{}\"], repositories = [\"{}\"] }}",
        snaps.display(),
        repo.dir.display()
    ));
    ok(&s.run(&["run", file.to_str().unwrap()], &env));
    assert_eq!(repo.commits_since(&head).len(), 2);
}

#[test]
fn a_commit_that_fails_leaves_nothing_half_recorded_and_the_next_run_records_it() {
    let pg = PgCluster::start();
    pg.create_db("app");
    schema(&pg);
    let s = Scratch::new();
    let repo = Repo::new(s.path());
    let gpg = Gpg::new();
    let mut env = env(&pg, &repo, &gpg, &s);
    for (k, v) in env.vars.iter_mut() {
        if k == "GIT_SIGNING_KEY" {
            *v = "no-such-key@test.invalid".into();
        }
    }
    let head = repo.head();
    let out = s.run(&["run", &snapshots_toml()], &env.pairs());
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("gpg") && err.contains("committed 0 of 2"),
        "{err}"
    );
    assert_eq!(repo.head(), head, "no commit");
    assert_eq!(
        list(&repo.dir.join("snapshots")),
        Vec::<String>::new(),
        "no file left"
    );

    let env = self::env(&pg, &repo, &gpg, &s);
    ok(&s.run(&["run", &snapshots_toml()], &env.pairs()));
    assert_eq!(repo.commits_since(&head).len(), 2);
}
