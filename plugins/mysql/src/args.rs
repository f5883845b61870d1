//! The connection as the MariaDB/MySQL client programs take it, and the checks on extra
//! `options`.
//!
//! Everything in the URL but the password becomes arguments (`--host`, `--port`,
//! `--protocol`, `--socket`, `--user`, the TLS settings); the password goes to the program
//! as `MYSQL_PWD`, which is not on its command line (`/proc/<pid>/cmdline` is readable by
//! every user; `/proc/<pid>/environ` only by the same user and root).

use pipeline_plugin_sdk::PluginError;
use pipeline_plugin_sdk::url::{self, Url};

/// The default port of MariaDB and MySQL.
pub const DEFAULT_PORT: u16 = 3306;

/// A database to connect to, split into arguments and the password.
#[derive(PartialEq, Eq)]
pub struct Connection {
    /// Connection arguments, without the database.
    pub args: Vec<String>,
    pub database: String,
    pub password: Option<String>,
}

// Never print the password, even in a test failure.
impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("args", &self.args)
            .field("database", &self.database)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Connection {
    /// The environment that hands the password over.
    pub fn env(&self) -> Vec<(String, String)> {
        self.password
            .iter()
            .map(|p| ("MYSQL_PWD".to_owned(), p.clone()))
            .collect()
    }
}

/// Query parameters and the client option each becomes; `None`: a flag, given as
/// `true`/`false` (or empty for true).
const PARAMETERS: &[(&str, Option<&str>)] = &[
    ("socket", Some("--socket")),
    ("charset", Some("--default-character-set")),
    ("connect-timeout", Some("--connect-timeout")),
    ("ssl", None),
    ("ssl-mode", Some("--ssl-mode")),
    ("ssl-ca", Some("--ssl-ca")),
    ("ssl-capath", Some("--ssl-capath")),
    ("ssl-cert", Some("--ssl-cert")),
    ("ssl-key", Some("--ssl-key")),
    ("ssl-cipher", Some("--ssl-cipher")),
    ("ssl-verify-server-cert", None),
    ("compress", None),
];

/// Parses `mysql://user:password@host:port/database?socket=…&ssl-ca=…` (or `mariadb://`).
/// `key` names where the URL came from in errors (`key `url``, `the restore target`).
pub fn connection(text: &str, key: &str) -> Result<Connection, PluginError> {
    let u = url::parse(text, &["mysql", "mariadb"], key)?;
    from_url(u, key)
}

fn from_url(u: Url, key: &str) -> Result<Connection, PluginError> {
    let invalid = |m: String| PluginError::Config(format!("{key}: {m}"));
    if u.path.is_empty() || u.path.contains('/') {
        return Err(invalid(
            "name the database after the host: mysql://user@host:3306/DATABASE".into(),
        ));
    }
    let mut args = Vec::new();
    let mut charset = false;
    let socket = u.query.iter().any(|(k, _)| k == "socket");
    if socket {
        // A socket, whatever the host says (the clients take `localhost` for the default
        // socket anyway).
        args.push("--protocol=SOCKET".to_owned());
    } else if !u.host.is_empty() {
        // TCP to the host written, even `localhost` (which the clients would otherwise
        // take for their default socket, ignoring the port).
        args.push("--protocol=TCP".to_owned());
        args.push(format!("--host={}", u.host));
        args.push(format!("--port={}", u.port.unwrap_or(DEFAULT_PORT)));
    } else if u.port.is_some() {
        return Err(invalid(
            "a port needs a host: mysql://user@127.0.0.1:3306/db".into(),
        ));
    }
    if let Some(user) = &u.user {
        args.push(format!("--user={user}"));
    }
    for (name, value) in &u.query {
        let Some((_, option)) = PARAMETERS.iter().find(|(p, _)| p == name) else {
            return Err(invalid(format!(
                "unknown URL parameter `{name}` (known: {})",
                PARAMETERS
                    .iter()
                    .map(|(p, _)| *p)
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        match option {
            Some(option) => {
                if value.is_empty() {
                    return Err(invalid(format!("URL parameter `{name}` needs a value")));
                }
                charset |= *name == "charset";
                args.push(format!("{option}={value}"));
            }
            None => match value.as_str() {
                "" | "true" | "1" => args.push(format!("--{name}")),
                "false" | "0" => args.push(format!("--skip-{name}")),
                _ => {
                    return Err(invalid(format!("URL parameter `{name}` is true or false")));
                }
            },
        }
    }
    if !charset {
        // Not the client's default (latin1 or utf8mb3 in older versions): every character
        // must survive, emoji included.
        args.push("--default-character-set=utf8mb4".to_owned());
    }
    Ok(Connection {
        args,
        database: u.path,
        password: u.password,
    })
}

/// Options the plugin owns, by long name, and why. Short forms are in [`SHORT`].
const OWNED: &[(&str, &str)] = &[
    (
        "password",
        "the password goes in the `url`, never on a command line",
    ),
    ("result-file", "the dump goes to stdout, into the pipeline"),
    ("tab", "the dump goes to stdout, into the pipeline"),
    ("xml", "restore reads SQL"),
    ("databases", "the `url` names the one database"),
    ("all-databases", "the `url` names the one database"),
    ("host", "it belongs in the `url` key"),
    ("port", "it belongs in the `url` key"),
    ("socket", "it belongs in the `url` key (`?socket=`)"),
    ("user", "it belongs in the `url` key"),
    ("protocol", "the `url` key decides it"),
    (
        "defaults-file",
        "option files are read as usual (~/.my.cnf)",
    ),
    (
        "defaults-extra-file",
        "option files are read as usual (~/.my.cnf)",
    ),
    ("no-defaults", "option files are read as usual (~/.my.cnf)"),
    ("print-defaults", "it prints instead of dumping"),
    ("version", "it prints the version instead of dumping"),
    ("help", "it prints help instead of dumping"),
];
/// Short options the plugin owns (see [`OWNED`]).
const SHORT: &[(char, &str)] = &[
    ('p', "password"),
    ('r', "result-file"),
    ('T', "tab"),
    ('X', "xml"),
    ('B', "databases"),
    ('A', "all-databases"),
    ('h', "host"),
    ('P', "port"),
    ('S', "socket"),
    ('u', "user"),
    ('V', "version"),
    ('?', "help"),
    ('I', "help"),
];
/// Short options that take a value (the rest of a `-xVALUE` cluster is that value).
const SHORT_WITH_VALUE: &str = "wW";

fn refuse(option: &str, long: &str) -> PluginError {
    let why = OWNED
        .iter()
        .find(|(n, _)| *n == long)
        .map_or("", |(_, w)| w);
    PluginError::Config(format!("key `options`: `{option}` is not allowed: {why}"))
}

/// Refuses the options the plugin owns, in any spelling the clients accept: unambiguous
/// prefixes (`--result=`), `--loose-`, `--skip-`/`--enable-`/`--disable-` forms, short
/// clusters (`-cr file`). A long option's value must be attached (`--where=id>5`), so that
/// every other word is an option: table names (positional arguments) are refused; exclude
/// tables with `--ignore-table=db.table`.
pub fn check_options(options: &[String]) -> Result<(), PluginError> {
    let mut takes_value = false;
    for option in options {
        if std::mem::take(&mut takes_value) {
            continue;
        }
        if let Some(long) = option.strip_prefix("--") {
            if long.is_empty() {
                return Err(PluginError::Config(
                    "key `options`: `--` is not allowed: the plugin names the database".into(),
                ));
            }
            let name = long.split_once('=').map_or(long, |(n, _)| n);
            let mut name = name.strip_prefix("loose-").unwrap_or(name);
            for prefix in ["skip-", "enable-", "disable-", "maximum-"] {
                name = name.strip_prefix(prefix).unwrap_or(name);
            }
            let name = name.replace('_', "-");
            // The clients accept any unambiguous prefix; three letters is the shortest
            // that could still mean one of these (`--res`, `--pas`, `--dat`).
            if let Some((long, _)) = OWNED
                .iter()
                .find(|(n, _)| *n == name || (name.len() >= 3 && n.starts_with(name.as_str())))
            {
                return Err(refuse(option, long));
            }
            continue;
        }
        let Some(cluster) = option.strip_prefix('-').filter(|c| !c.is_empty()) else {
            return Err(PluginError::Config(format!(
                "key `options`: `{option}` is not an option: write a long option with its \
                 value as --name=value; the `url` names the database (leave tables out with \
                 --ignore-table=DB.TABLE)"
            )));
        };
        for (i, c) in cluster.char_indices() {
            if let Some((_, long)) = SHORT.iter().find(|(s, _)| *s == c) {
                return Err(refuse(option, long));
            }
            if SHORT_WITH_VALUE.contains(c) {
                takes_value = i + c.len_utf8() == cluster.len();
                break;
            }
        }
    }
    Ok(())
}

/// The dump program's arguments.
pub fn dump_args(c: &Connection, options: &[String]) -> Vec<String> {
    let mut args = c.args.clone();
    args.extend(
        [
            // A consistent snapshot of InnoDB tables without locking them.
            "--single-transaction",
            "--routines",
            "--triggers",
            "--events",
            // Binary columns as hex literals: the dump stays valid text.
            "--hex-blob",
            // MySQL 8 needs the PROCESS privilege for tablespaces; a database dump has none.
            "--no-tablespaces",
        ]
        .map(String::from),
    );
    args.extend(options.iter().cloned());
    args.push(c.database.clone());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(text: &str) -> Connection {
        connection(text, "key `url`").unwrap_or_else(|e| panic!("{text}: {e:?}"))
    }

    fn conn_err(text: &str) -> String {
        match connection(text, "key `url`") {
            Err(PluginError::Config(m)) => m,
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn tcp_socket_and_parameters() {
        let c = conn("mysql://app:p%40ss@127.0.0.1:3307/app");
        assert_eq!(
            c.args,
            [
                "--protocol=TCP",
                "--host=127.0.0.1",
                "--port=3307",
                "--user=app",
                "--default-character-set=utf8mb4"
            ]
        );
        assert_eq!(c.database, "app");
        assert_eq!(c.env(), [("MYSQL_PWD".to_owned(), "p@ss".to_owned())]);

        let c = conn(
            "mariadb://backup@localhost/shop?socket=%2Frun%2Fmysqld%2Fmysqld.sock&charset=latin1",
        );
        assert_eq!(
            c.args,
            [
                "--protocol=SOCKET",
                "--user=backup",
                "--socket=/run/mysqld/mysqld.sock",
                "--default-character-set=latin1"
            ]
        );
        assert!(c.env().is_empty());

        let c = conn(
            "mysql://app@db.internal/app?ssl-ca=/etc/ca.pem&ssl-verify-server-cert=true&compress=false",
        );
        assert_eq!(
            c.args,
            [
                "--protocol=TCP",
                "--host=db.internal",
                "--port=3306",
                "--user=app",
                "--ssl-ca=/etc/ca.pem",
                "--ssl-verify-server-cert",
                "--skip-compress",
                "--default-character-set=utf8mb4"
            ]
        );
        // No host: the client's default socket.
        let c = conn("mysql:///app");
        assert_eq!(c.args, ["--default-character-set=utf8mb4"]);
    }

    #[test]
    fn bad_urls_are_refused_without_quoting_them() {
        for (text, needle) in [
            ("mysql://app:secret@db", "name the database"),
            ("mysql://app:secret@db/a/b", "name the database"),
            (
                "mysql://app:secret@db/app?sslmode=require",
                "unknown URL parameter `sslmode`",
            ),
            ("mysql://app:secret@db/app?socket=", "needs a value"),
            ("mysql://app:secret@db/app?ssl=maybe", "true or false"),
            ("mysql://app:secret@:3306/app", "a port needs a host"),
            ("postgres://app:secret@db/app", "mysql://"),
        ] {
            let m = conn_err(text);
            assert!(m.contains(needle), "{text}: {m}");
            assert!(!m.contains("secret"), "{m}");
        }
    }

    #[test]
    fn the_password_is_never_an_argument() {
        let c = conn("mysql://app:s%40cret@db/app");
        let args = dump_args(&c, &["--skip-extended-insert".into()]);
        assert!(args.iter().all(|a| !a.contains("cret")), "{args:?}");
        assert_eq!(args.last().map(String::as_str), Some("app"));
        assert!(args.contains(&"--single-transaction".to_string()));
        assert!(args.contains(&"--routines".to_string()));
        assert!(args.contains(&"--triggers".to_string()));
        assert!(args.contains(&"--events".to_string()));
        assert!(!format!("{c:?}").contains("cret"));
    }

    #[test]
    fn owned_options_are_refused_in_every_spelling() {
        let check =
            |o: &[&str]| check_options(&o.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        for ok in [
            &[][..],
            &["--ignore-table=app.audit", "--skip-extended-insert"],
            &["--where=id > 5"],
            &["-w", "-p"], // "-p" is -w's value here
            &["-cw", "id>1"],
            &["--max-allowed-packet=64M", "--skip-add-drop-table", "-c"],
            &["--compact"],
        ] {
            assert!(check(ok).is_ok(), "{ok:?}");
        }
        for (bad, needle) in [
            (&["--password=x"][..], "never on a command line"),
            (&["-px"], "never on a command line"),
            (&["-cpx"], "never on a command line"),
            (&["--loose-password=x"], "never on a command line"),
            (&["--pass=x"], "never on a command line"),
            (&["--result-file=/tmp/x"], "stdout"),
            (&["--res", "x"], "stdout"),
            (&["-r", "x"], "stdout"),
            (&["--tab=/tmp"], "stdout"),
            (&["--databases"], "one database"),
            (&["-B"], "one database"),
            (&["--all_databases"], "one database"),
            (&["--host=x"], "`url`"),
            (&["-S", "/s"], "`url`"),
            (&["--defaults-file=/x"], "option files"),
            (&["--xml"], "SQL"),
            (&["orders"], "--ignore-table"),
            (&["--"], "names the database"),
        ] {
            match check(bad) {
                Err(PluginError::Config(m)) => {
                    assert!(m.contains(needle), "{bad:?}: {m}");
                    assert!(m.starts_with("key `options`"), "{m}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }
}
