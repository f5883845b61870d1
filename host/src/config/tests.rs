use super::*;

const NIGHTLY: &str = r#"
[source]
plugin = "postgres"
url = "${env:DATABASE_URL}"

[[transform]]
plugin = "zstd"
level = 3

[[sink]]
plugin = "local"
path = "${env:BACKUP_DIR:-./backups}"

[retention]
days = "${env:BACKUP_RETENTION_DAYS:-30}"
keep_last = 2
"#;

fn env_with(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
    move |name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    }
}

fn parse_str(
    text: &str,
    vars: &'static [(&'static str, &'static str)],
) -> Result<Pipeline, ConfigError> {
    parse(Path::new("pipelines/nightly.toml"), text, &env_with(vars))
}

#[test]
fn nightly_parses_with_defaults() {
    let p = parse_str(
        NIGHTLY,
        &[("DATABASE_URL", "postgres://u:s%40cret-long@h/db")],
    )
    .unwrap();
    assert_eq!(p.name, "nightly");
    assert_eq!(p.artifact, "backup-{time}");
    assert_eq!(p.source.plugin, PluginRef::Builtin("postgres".into()));
    assert_eq!(p.source.config["url"], "postgres://u:s%40cret-long@h/db");
    assert_eq!(p.transforms[0].config["level"], 3);
    assert_eq!(p.sinks[0].name, "local");
    assert_eq!(p.sinks[0].config["path"], "./backups");
    let r = p.retention.unwrap();
    assert_eq!((r.days, r.keep_last), (Some(30), 2));
    assert_eq!(p.secrets.redact("x s@cret-long y"), "x *** y");
    assert_eq!(p.secrets.redact("x s%40cret-long y"), "x *** y");
}

#[test]
fn missing_variable_names_file_line_key_and_variable() {
    let e = parse_str(NIGHTLY, &[]).unwrap_err().to_string();
    assert!(
        e.starts_with(
            "pipelines/nightly.toml:4:7: source.url: environment variable DATABASE_URL is not set"
        ),
        "{e}"
    );
}

#[test]
fn non_numeric_retention_is_an_error_not_a_silent_no_prune() {
    let e = parse_str(
        NIGHTLY,
        &[("DATABASE_URL", "x"), ("BACKUP_RETENTION_DAYS", "thirty")],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(":15:8: retention.days: expected a whole number"),
        "{e}"
    );
    assert!(e.contains("BACKUP_RETENTION_DAYS"), "{e}");
}

#[test]
fn unknown_host_keys_and_type_errors_have_positions() {
    let e = parse_str(
        "[source]\nplugin = \"postgres\"\n[[sink]]\nplugin = \"local\"\n[retention]\ndayz = 3\n",
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains(":6:1: retention.dayz: unknown key"), "{e}");
    let e = parse_str("[source]\nplugin = 5\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(":2:10: source.plugin: expected a string, found integer"),
        "{e}"
    );
    let e = parse_str("[source\nplugin = 5\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("nightly.toml:1:") && e.contains("invalid TOML"),
        "{e}"
    );
}

#[test]
fn sinks_need_distinct_names_and_a_source_is_required() {
    let e = parse_str("[[sink]]\nplugin = \"local\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("source: missing"), "{e}");
    let two = "[source]\nplugin = \"postgres\"\n[[sink]]\nplugin = \"local\"\n[[sink]]\nplugin = \"local\"\n";
    let e = parse_str(two, &[]).unwrap_err().to_string();
    assert!(e.contains("two sinks are named `local`"), "{e}");
}

#[test]
fn plugin_files_grants_and_limits() {
    let text = "[source]\nplugin = \"postgres\"\n[[sink]]\nplugin = \"./my-sink.wasm\"\nurl = \"https://x\"\n\
                allow = { directories = [\"/srv/b\"], programs = [\"rclone\"] }\nlimits = { timeout = \"2h\", memory = \"64MiB\" }\n";
    let p = parse_str(text, &[]).unwrap();
    let s = &p.sinks[0];
    assert_eq!(
        s.plugin,
        PluginRef::File(PathBuf::from("pipelines/./my-sink.wasm"))
    );
    assert_eq!(s.name, "my-sink");
    let values = |key| {
        s.allow
            .values(key)
            .map(|(v, _)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(values("directories"), ["/srv/b"]);
    assert_eq!(values("programs"), ["rclone"]);
    assert_eq!(
        s.allow.keys["programs"].values[0].1,
        Loc { line: 6, col: 49 }
    );
    assert_eq!(s.limits.timeout, Duration::from_secs(7200));
    assert_eq!(s.limits.memory, 64 << 20);
    assert_eq!(s.key_locs["url"], Loc { line: 5, col: 1 });
    assert!(!s.config.contains_key("allow"));
}

#[test]
fn oci_plugin_references_are_parsed_and_checked_at_their_line() {
    let hex = "ab".repeat(32);
    let text = format!(
        "[source]\nplugin = \"postgres\"\n[[sink]]\nplugin = \"oci://registry.example/acme/webdav-sink:1.2@sha256:{hex}\"\n"
    );
    let p = parse_str(&text, &[]).unwrap();
    let s = &p.sinks[0];
    match &s.plugin {
        PluginRef::Oci(r) => {
            assert_eq!(r.registry, "registry.example");
            assert_eq!(r.repository, "acme/webdav-sink");
            assert_eq!(r.tag.as_deref(), Some("1.2"));
            assert_eq!(r.digest.as_deref(), Some(hex.as_str()));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.name, "webdav-sink");
    // Not a file path, though it holds `/` and may end in `.wasm`.
    let bad = "[source]\nplugin = \"postgres\"\n[[sink]]\nplugin = \"oci://registry.example/../x.wasm\"\n";
    let e = parse_str(bad, &[]).unwrap_err().to_string();
    assert!(
        e.contains(":4:")
            && e.contains("sink[0].plugin")
            && e.contains("not a valid path component"),
        "{e}"
    );
}

#[test]
fn durations_and_sizes() {
    assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration("1d"), Some(Duration::from_secs(86400)));
    assert_eq!(parse_duration("0"), None);
    assert_eq!(parse_duration("5 parsecs"), None);
    assert_eq!(parse_size("1GiB"), Some(1 << 30));
    assert_eq!(parse_size("lots"), None);
}

/// Odd strings (unicode, empty, very long, half a reference) never panic anywhere a
/// pipeline file's text goes, and a broken file's error still has a line and column.
#[test]
fn odd_strings_never_panic() {
    let long = "é".repeat(5000);
    let odd = [
        "",
        "$",
        "${",
        "${}",
        "${env:",
        "${env:é}",
        "${env:A:-é",
        "$${é",
        "é${env:A:-}é",
        "🙂",
        "-1",
        "99999999999999999999",
        " 3 ",
        "ü\u{0}",
        long.as_str(),
    ];
    for s in odd {
        let _ = interpolate::interpolate(s, |_| Some("ö".into()));
        let _ = parse_duration(s);
        let _ = parse_size(s);
        let _ = typed_value(&Json::String(s.into()), true);
        let _ = typed_value(&Json::String(s.into()), false);
        let text = format!("[source]\nplugin = \"postgres\"\nurl = \"{s}\"\né = ü\n");
        let err = parse(Path::new("x.toml"), &text, &|_| None).expect_err("broken");
        assert!(err.loc.is_some(), "{err}");
        let _ = parse(Path::new("x.toml"), s, &|_| None);
    }
    assert_eq!(typed_value(&Json::from(" 7 "), true), Ok(Json::from(7)));
    assert_eq!(typed_value(&Json::from("Yes"), false), Ok(Json::Bool(true)));
    assert!(typed_value(&Json::from("3x"), true).is_err());
}

fn with_signing(table: &str) -> String {
    format!("{NIGHTLY}\n[signing]\n{table}")
}

#[test]
fn signing_table_parses_paths_principal_and_masks_the_passphrase() {
    let text = with_signing(
        "key = \"${env:KEY}\"\npassphrase = \"${env:PASS}\"\n\
         allowed_signers = \"/etc/pipeline/allowed_signers\"\nprincipal = \"backups@example.com\"\n",
    );
    let p = parse_str(
        &text,
        &[
            ("DATABASE_URL", "x"),
            ("KEY", "/etc/pipeline/manifest_ed25519"),
            ("PASS", "a long passphrase"),
        ],
    )
    .unwrap();
    assert!(!format!("{:?}", p.signing).contains("a long passphrase"));
    let s = p.signing.expect("[signing]");
    let key = s.key.expect("key");
    assert_eq!(key.value, Path::new("/etc/pipeline/manifest_ed25519"));
    assert_eq!((key.loc.line, key.loc.col), (19, 7));
    assert_eq!(s.passphrase.as_deref(), Some("a long passphrase"));
    assert_eq!(s.principal.expect("principal").value, "backups@example.com");
    assert_eq!(p.secrets.redact("x a long passphrase y"), "x *** y");
}

#[test]
fn signing_table_errors_name_the_key() {
    let env: &[(&str, &str)] = &[("DATABASE_URL", "x")];
    let e = parse_str(&with_signing("allowed_signers = \"a\"\n"), env)
        .unwrap_err()
        .to_string();
    assert!(e.contains(":18:1: signing.principal: missing"), "{e}");
    let e = parse_str(&with_signing("principal = \"p\"\n"), env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("signing.allowed_signers: missing"), "{e}");
    let e = parse_str(&with_signing("passphrase = \"p\"\n"), env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("signing.key: missing"), "{e}");
    let e = parse_str(
        &with_signing("allowed_signers = \"a\"\nprincipal = \"a b\"\n"),
        env,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(":20:13: signing.principal: `a b` is not one principal"),
        "{e}"
    );
    let e = parse_str(&with_signing("keys = \"k\"\n"), env)
        .unwrap_err()
        .to_string();
    assert!(e.contains(":19:1: signing.keys: unknown key"), "{e}");
    // An empty value is no value: a machine that only verifies leaves the key unset.
    let p = parse_str(&with_signing("key = \"${env:KEY:-}\"\n"), env).unwrap();
    assert!(p.signing.expect("[signing]").key.is_none());
}

#[test]
fn metrics_table_takes_a_prom_textfile_or_nothing() {
    let env: &[(&str, &str)] = &[("DATABASE_URL", "x")];
    let with = |t: &str| format!("{NIGHTLY}\n[metrics]\n{t}");
    let p = parse_str(&with("textfile = \"/var/lib/ne/nightly.prom\"\n"), env).unwrap();
    let m = p.metrics.expect("[metrics]");
    assert_eq!(
        m.textfile.as_deref(),
        Some(Path::new("/var/lib/ne/nightly.prom"))
    );
    assert_eq!((m.pushgateway, m.job.as_str()), (None, "pipeline"));
    let p = parse_str(
        &with("pushgateway = \"http://pg:9091\"\njob = \"backups\"\n"),
        env,
    )
    .unwrap();
    let m = p.metrics.expect("[metrics]");
    assert_eq!(m.pushgateway.as_deref(), Some("http://pg:9091"));
    assert_eq!((m.textfile, m.job.as_str()), (None, "backups"));
    let e = parse_str(&with("pushgateway = \"http://u:p@pg:9091\"\n"), env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("metrics.pushgateway: not a Pushgateway URL"),
        "{e}"
    );
    assert!(!e.contains("u:p"), "no password in the error: {e}");
    // An empty value is no value: a machine without node_exporter leaves it unset.
    let p = parse_str(&with("textfile = \"${env:METRICS_FILE:-}\"\n"), env).unwrap();
    assert!(p.metrics.is_none());
    let e = parse_str(&with("textfile = \"/tmp/m.txt\"\n"), env)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("metrics.textfile: `/tmp/m.txt` does not end in `.prom`"),
        "{e}"
    );
    let e = parse_str(&with(""), env).unwrap_err().to_string();
    assert!(e.contains("metrics.textfile: missing"), "{e}");
    let e = parse_str(&with("textfile = \"a.prom\"\npush = \"x\"\n"), env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("metrics.push: unknown key"), "{e}");
}

#[test]
fn schedule_and_timezone_are_read_and_checked_with_their_place() {
    let vars = &[("DATABASE_URL", "postgres://h/db")];
    let p = parse_str(NIGHTLY, vars).unwrap();
    assert!(p.schedule.is_none(), "no schedule unless given");

    let text = format!("[pipeline]\nschedule = \"0 2 * * *\"\n{NIGHTLY}");
    let s = parse_str(&text, vars)
        .unwrap()
        .schedule
        .expect("a schedule");
    assert_eq!((s.text(), s.time_zone_name()), ("0 2 * * *", "UTC"));

    let text =
        format!("[pipeline]\nschedule = \"@daily\"\ntimezone = \"Europe/Berlin\"\n{NIGHTLY}");
    let s = parse_str(&text, vars)
        .unwrap()
        .schedule
        .expect("a schedule");
    assert_eq!(s.time_zone_name(), "Europe/Berlin");

    let text = format!("[pipeline]\nschedule = \"0 24 * * *\"\n{NIGHTLY}");
    let e = parse_str(&text, vars).unwrap_err().to_string();
    assert!(
        e.starts_with("pipelines/nightly.toml:2:12: pipeline.schedule: hour field `24`"),
        "{e}"
    );

    let text =
        format!("[pipeline]\nschedule = \"@daily\"\ntimezone = \"Europe/Nowhere\"\n{NIGHTLY}");
    let e = parse_str(&text, vars).unwrap_err().to_string();
    assert!(
        e.starts_with(
            "pipelines/nightly.toml:3:12: pipeline.timezone: unknown time zone `Europe/Nowhere`"
        ),
        "{e}"
    );

    let text = format!("[pipeline]\ntimezone = \"UTC\"\n{NIGHTLY}");
    let e = parse_str(&text, vars).unwrap_err().to_string();
    assert!(
        e.contains("pipeline.timezone: is the time zone of `schedule`"),
        "{e}"
    );

    let text = format!("[pipeline]\nschedule = 5\n{NIGHTLY}");
    let e = parse_str(&text, vars).unwrap_err().to_string();
    assert!(e.contains("pipeline.schedule: expected a string"), "{e}");
}

#[test]
fn the_schedule_alone_is_read_without_the_stages_variables() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    // DATABASE_URL is not set: loading the file fails, its schedule is still read.
    std::fs::write(
        &file,
        format!("[pipeline]\nschedule = \"*/2 * * * * *\"\n{NIGHTLY}")
            .replace("DATABASE_URL", "PIPELINE_TEST_SURELY_UNSET_VARIABLE"),
    )
    .unwrap();
    assert!(load(&file).is_err());
    let s = schedule_of(&file).unwrap().expect("a schedule");
    assert_eq!(s.text(), "*/2 * * * * *");
    std::fs::write(&file, NIGHTLY).unwrap();
    assert!(schedule_of(&file).unwrap().is_none());
}
