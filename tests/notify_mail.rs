//! Mail: the host's SMTP client (the `mail` capability) against a real SMTP server
//! (aiosmtpd, `tests/support/smtp.rs`) with STARTTLS, TLS and a login, and the `email`
//! notifier end to end.

mod support;

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use pipeline::bindings::PluginError;
use pipeline::capabilities::mail::{Client, Message, Security, Server};
use support::PgCluster;
use support::scratch::{Scratch, assert_no_secret, stderr};
use support::smtp::{Mode, SmtpServer};

fn server(smtp: &SmtpServer, security: Security, password: Option<&str>) -> Server {
    Server {
        address: smtp.address(),
        security,
        username: password.map(|_| SmtpServer::USER.to_string()),
        password: password.map(str::to_string),
    }
}

fn message(data: &str) -> Message {
    Message {
        sender: "backup@pipeline.test".into(),
        recipients: vec!["ops@pipeline.test".into(), "oncall@pipeline.test".into()],
        data: data.into(),
    }
}

fn trusting(smtp: &SmtpServer) -> Client {
    Client::trusting(&smtp.ca()).unwrap_or_else(|e| panic!("{e}"))
}

fn text(e: &PluginError) -> String {
    pipeline::bindings::describe_error(e)
}

const DATA: &str = "From: backup@pipeline.test\nTo: ops@pipeline.test\nSubject: test\n\n\
                    line one\n.a line with a leading dot\n.\nlast line\n";

#[test]
fn starttls_login_and_delivery() {
    let smtp = SmtpServer::start(Mode::StartTls);
    trusting(&smtp)
        .send(
            &server(&smtp, Security::Starttls, Some(SmtpServer::PASSWORD)),
            &message(DATA),
        )
        .unwrap_or_else(|e| panic!("{}", text(&e)));
    let got = smtp.messages();
    assert_eq!(got.len(), 1, "{:?}", smtp.events());
    let m = &got[0];
    assert_eq!(m.mail_from, "backup@pipeline.test");
    assert_eq!(m.rcpt_tos, ["ops@pipeline.test", "oncall@pipeline.test"]);
    assert!(m.tls, "the message came in clear");
    assert_eq!(m.user.as_deref(), Some(SmtpServer::USER));
    assert_eq!(m.header("Subject"), Some("test"));
    // Lines arrive with CRLF, the dot-stuffing undone by the server.
    assert_eq!(
        m.text.as_deref(),
        Some("line one\n.a line with a leading dot\n.\nlast line\n")
    );
    assert!(
        m.data
            .contains("\r\n.a line with a leading dot\r\n.\r\nlast line\r\n")
    );
    let events = smtp.events();
    let expect = [
        "EHLO",
        "tls=False",
        "STARTTLS",
        "EHLO",
        "tls=True",
        "AUTH PLAIN tls=True",
        "LOGIN PLAIN ok",
        "MAIL tls=True",
    ];
    let joined = events.join(" | ");
    let mut at = 0;
    for e in expect {
        let found = joined[at..]
            .find(e)
            .unwrap_or_else(|| panic!("{e} missing after {at} in {joined}"));
        at += found + e.len();
    }
}

#[test]
fn tls_from_the_first_byte() {
    let smtp = SmtpServer::start(Mode::Tls);
    trusting(&smtp)
        .send(
            &server(&smtp, Security::Tls, Some(SmtpServer::PASSWORD)),
            &message(DATA),
        )
        .unwrap_or_else(|e| panic!("{}", text(&e)));
    let got = smtp.messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
    assert!(!smtp.events().iter().any(|e| e == "STARTTLS"));
}

#[test]
fn a_wrong_password_is_the_servers_refusal_and_never_shown() {
    let smtp = SmtpServer::start(Mode::StartTls);
    let wrong = "wrong-Pa55word-91c3";
    let err = trusting(&smtp)
        .send(
            &server(&smtp, Security::Starttls, Some(wrong)),
            &message(DATA),
        )
        .expect_err("a wrong password is refused");
    let shown = text(&err);
    assert!(
        shown.contains(&format!(
            "mail server {} refused AUTH PLAIN: 535",
            smtp.address()
        )),
        "{shown}"
    );
    assert!(!shown.contains(wrong), "{shown}");
    assert!(smtp.messages().is_empty());
    assert!(smtp.events().iter().any(|e| e == "LOGIN PLAIN refused"));
    assert!(!smtp.events().iter().any(|e| e.starts_with("MAIL")));
}

#[test]
fn no_starttls_offered_means_nothing_is_sent() {
    let smtp = SmtpServer::start(Mode::Plain);
    let err = trusting(&smtp)
        .send(
            &server(&smtp, Security::Starttls, Some(SmtpServer::PASSWORD)),
            &message(DATA),
        )
        .expect_err("refused");
    let shown = text(&err);
    assert!(matches!(err, PluginError::Denied(_)), "{shown}");
    assert!(
        shown.contains(&format!(
            "mail server {}: does not offer STARTTLS",
            smtp.address()
        )),
        "{shown}"
    );
    let events = smtp.events();
    assert!(events.iter().any(|e| e.starts_with("EHLO")), "{events:?}");
    assert!(
        !events
            .iter()
            .any(|e| e.starts_with("AUTH") || e.starts_with("LOGIN") || e.starts_with("MAIL")),
        "the server saw a login or a message in clear: {events:?}"
    );
    assert!(smtp.messages().is_empty());
}

#[test]
fn an_untrusted_certificate_is_refused_before_the_login() {
    let smtp = SmtpServer::start(Mode::StartTls);
    // The system's roots do not hold the test's CA.
    let err = Client::system()
        .send(
            &server(&smtp, Security::Starttls, Some(SmtpServer::PASSWORD)),
            &message(DATA),
        )
        .expect_err("an unknown CA is refused");
    let shown = text(&err);
    assert!(
        shown.contains("the TLS handshake failed") && shown.contains("certificate"),
        "{shown}"
    );
    assert!(
        !smtp
            .events()
            .iter()
            .any(|e| e.starts_with("AUTH") || e.starts_with("MAIL"))
    );
}

#[test]
fn a_login_only_server_gets_auth_login() {
    let smtp = SmtpServer::start_with(Mode::StartTls, &["--auth-exclude", "PLAIN"]);
    trusting(&smtp)
        .send(
            &server(&smtp, Security::Starttls, Some(SmtpServer::PASSWORD)),
            &message(DATA),
        )
        .unwrap_or_else(|e| panic!("{}", text(&e)));
    assert_eq!(smtp.messages().len(), 1);
    assert!(smtp.events().iter().any(|e| e == "LOGIN LOGIN ok"));
}

#[test]
fn no_encryption_only_without_a_password_and_only_on_this_machine() {
    let smtp = SmtpServer::start(Mode::Plain);
    let err = trusting(&smtp)
        .send(
            &server(&smtp, Security::None, Some(SmtpServer::PASSWORD)),
            &message(DATA),
        )
        .expect_err("a password in clear is refused");
    assert!(text(&err).contains("refusing to send a password without encryption"));
    // 192.0.2.1 (TEST-NET-1) is refused before any connection is tried.
    let far = Server {
        address: "192.0.2.1:25".into(),
        security: Security::None,
        username: None,
        password: None,
    };
    let started = Instant::now();
    let err = trusting(&smtp)
        .send(&far, &message(DATA))
        .expect_err("a remote server in clear is refused");
    assert!(
        text(&err).contains("security = none is only for a relay on this machine"),
        "{}",
        text(&err)
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(smtp.events().is_empty(), "{:?}", smtp.events());
    // The plain relay on this machine takes mail without a login.
    trusting(&smtp)
        .send(&server(&smtp, Security::None, None), &message(DATA))
        .unwrap_or_else(|e| panic!("{}", text(&e)));
    let got = smtp.messages();
    assert_eq!(got.len(), 1);
    assert!(!got[0].tls && got[0].user.is_none());
    assert!(!smtp.events().iter().any(|e| e.starts_with("AUTH")));
}

#[test]
fn envelope_addresses_cannot_smuggle_commands() {
    let smtp = SmtpServer::start(Mode::StartTls);
    for bad in [
        "ops@pipeline.test>\r\nRCPT TO:<evil@elsewhere.test",
        "ops@pipeline.test> NOTIFY=NEVER",
        "",
    ] {
        let mut m = message(DATA);
        m.recipients.push(bad.into());
        let err = trusting(&smtp)
            .send(
                &server(&smtp, Security::Starttls, Some(SmtpServer::PASSWORD)),
                &m,
            )
            .expect_err("refused");
        assert!(matches!(err, PluginError::Denied(_)), "{}", text(&err));
        assert!(text(&err).contains("recipient:"), "{}", text(&err));
    }
    let mut m = message(DATA);
    m.recipients.clear();
    assert!(
        trusting(&smtp)
            .send(
                &server(&smtp, Security::Starttls, Some(SmtpServer::PASSWORD)),
                &m
            )
            .is_err()
    );
    assert!(smtp.events().is_empty(), "{:?}", smtp.events());
}

#[test]
fn one_refused_recipient_fails_the_whole_message() {
    let smtp = SmtpServer::start(Mode::StartTls);
    let mut m = message(DATA);
    m.recipients.push("nobody@pipeline.test".into());
    let err = trusting(&smtp)
        .send(
            &server(&smtp, Security::Starttls, Some(SmtpServer::PASSWORD)),
            &m,
        )
        .expect_err("a refused recipient fails the message");
    assert!(
        text(&err).contains(&format!(
            "mail server {} refused RCPT TO:<nobody@pipeline.test>: 550 5.1.1 No such user here",
            smtp.address()
        )),
        "{}",
        text(&err)
    );
    assert!(smtp.messages().is_empty(), "the others got it anyway");
}

#[test]
fn eight_bit_text_is_declared() {
    let smtp = SmtpServer::start(Mode::StartTls);
    trusting(&smtp)
        .send(
            &server(&smtp, Security::Starttls, Some(SmtpServer::PASSWORD)),
            &message("Subject: été\nContent-Type: text/plain; charset=utf-8\n\nnaïve café\n"),
        )
        .unwrap_or_else(|e| panic!("{}", text(&e)));
    let got = smtp.messages();
    assert_eq!(got[0].mail_options, ["BODY=8BITMIME"]);
    assert!(got[0].data.contains("naïve café"));
}

/// A server that accepts the connection and never answers: the budget ends the wait.
#[test]
fn a_silent_server_times_out_within_the_budget() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let held = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut sink = Vec::new();
        let _ = conn.read_to_end(&mut sink);
    });
    let started = Instant::now();
    let err = Client::system()
        .budget(Duration::from_secs(1))
        .send(
            &Server {
                address: address.clone(),
                security: Security::None,
                username: None,
                password: None,
            },
            &message(DATA),
        )
        .expect_err("no answer");
    let elapsed = started.elapsed();
    assert!(
        text(&err).contains(&format!(
            "mail server {address}: no answer within 1 s (at the connection)"
        )),
        "{}",
        text(&err)
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    // The client hung up.
    held.join().expect("the silent server");
}

// ---------------------------------------------------------------------------------------
// End to end: the `email` notifier in a pipeline file, the binary trusting the test CA
// through SSL_CERT_FILE as an operator with a private CA would.

/// PostgreSQL → zstd → local, named `mailtest`, with `notify` (TOML tables) appended.
fn pipeline(s: &Scratch, notify: &str) -> String {
    let file = s.path().join("mailtest.toml");
    std::fs::write(
        &file,
        format!(
            "[source]\nplugin = \"postgres\"\nurl = \"${{env:DATABASE_URL}}\"\n\n\
             [[transform]]\nplugin = \"zstd\"\n\n\
             [[sink]]\nname = \"local\"\nplugin = \"local\"\npath = \"./backups\"\n\n{notify}"
        ),
    )
    .expect("write the pipeline file");
    file.display().to_string()
}

/// An `[[notify]]` table for the `email` notifier (`plugin`: the built-in or a file)
/// sending through `smtp`, with the password from `SMTP_PASSWORD`.
fn email(plugin: &str, smtp: &SmtpServer, extra: &str) -> String {
    format!(
        "[[notify]]\nname = \"mail\"\nplugin = \"{plugin}\"\nserver = \"{}\"\n\
         username = \"{}\"\npassword = \"${{env:SMTP_PASSWORD}}\"\n\
         from = \"backup@pipeline.test\"\nto = [\"ops@pipeline.test\"]\n{extra}\n",
        smtp.address(),
        SmtpServer::USER
    )
}

fn run(
    s: &Scratch,
    file: &str,
    db: &str,
    pg: &PgCluster,
    smtp: &SmtpServer,
    password: &str,
) -> Output {
    let ca = smtp.ca().display().to_string();
    s.run(
        &["run", file],
        &[
            ("DATABASE_URL", &pg.url(db)),
            ("SMTP_PASSWORD", password),
            ("SSL_CERT_FILE", &ca),
        ],
    )
}

#[test]
fn a_failing_run_mails_its_failure_and_keeps_its_exit_code() {
    let pg = PgCluster::start();
    let smtp = SmtpServer::start(Mode::StartTls);
    let s = Scratch::new();
    let file = pipeline(&s, &email("email", &smtp, "on = [\"failure\"]"));
    // A database that does not exist: the dump fails, exit 1.
    let out = run(&s, &file, "missing", &pg, &smtp, SmtpServer::PASSWORD);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let got = smtp.messages();
    assert_eq!(got.len(), 1, "one mail, for the failure: {err}");
    let m = &got[0];
    assert!(
        m.tls && m.user.as_deref() == Some(SmtpServer::USER),
        "{m:?}"
    );
    assert_eq!(m.mail_from, "backup@pipeline.test");
    assert_eq!(m.rcpt_tos, ["ops@pipeline.test"]);
    assert!(m.defects.is_empty(), "{:?}", m.defects);
    let subject = m.header("Subject").unwrap_or_default();
    assert!(
        subject.starts_with("[pipeline] mailtest failed on ") && subject.contains("missing"),
        "{subject}"
    );
    let text = m.text.as_deref().unwrap_or_default();
    assert!(
        text.contains("The backup run of pipeline mailtest on "),
        "{text}"
    );
    assert!(
        text.contains("Error: ") && text.contains("missing"),
        "{text}"
    );
    assert!(text.contains("Exit code: 1\n"), "{text}");
    for h in [
        "Date",
        "From",
        "To",
        "Message-ID",
        "MIME-Version",
        "Auto-Submitted",
    ] {
        assert!(m.header(h).is_some(), "no {h}: {}", m.raw_header());
    }
    assert_no_secret(&pg, &m.data);
    assert!(!m.data.contains(SmtpServer::PASSWORD));
    assert!(!err.contains(SmtpServer::PASSWORD), "{err}");
}

#[test]
fn a_wrong_smtp_password_only_warns() {
    let pg = PgCluster::start();
    pg.create_db("app");
    let smtp = SmtpServer::start(Mode::StartTls);
    let s = Scratch::new();
    let file = pipeline(&s, &email("email", &smtp, ""));
    let wrong = "wrong-smtp-Passw0rd-5e1d";
    let out = run(&s, &file, "app", &pg, &smtp, wrong);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "the backup succeeded: {err}");
    let warning = err
        .lines()
        .find(|l| l.contains("WARN") && l.contains("mail"))
        .unwrap_or_else(|| panic!("no warning about the mail: {err}"));
    assert!(
        warning.contains(&format!(
            "mail server {} refused AUTH PLAIN: 535",
            smtp.address()
        )),
        "{warning}"
    );
    assert!(!err.contains(wrong), "the password is in the log: {err}");
    assert!(smtp.messages().is_empty());
    assert_eq!(
        s.files().iter().filter(|f| f.ends_with(".zst")).count(),
        1,
        "{:?}",
        s.files()
    );
}

#[test]
fn a_run_refuses_a_server_without_starttls_and_sends_nothing_in_clear() {
    let pg = PgCluster::start();
    pg.create_db("app");
    let smtp = SmtpServer::start(Mode::Plain);
    let s = Scratch::new();
    let file = pipeline(&s, &email("email", &smtp, ""));
    let out = run(&s, &file, "app", &pg, &smtp, SmtpServer::PASSWORD);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("does not offer STARTTLS"), "{err}");
    let events = smtp.events();
    assert!(
        !events
            .iter()
            .any(|e| e.starts_with("AUTH") || e.starts_with("MAIL")),
        "{events:?}"
    );
    assert!(smtp.messages().is_empty());
}

#[test]
fn a_plugin_file_gets_only_the_mail_servers_allow_lists() {
    let pg = PgCluster::start();
    pg.create_db("app");
    let smtp = SmtpServer::start(Mode::StartTls);
    let s = Scratch::new();
    let wasm = Path::new(env!("PIPELINE_BUILTIN_WASM_DIR")).join("pipeline_email.wasm");
    let plugin = wasm.display().to_string();
    let file = pipeline(&s, &email(&plugin, &smtp, ""));
    let out = run(&s, &file, "app", &pg, &smtp, SmtpServer::PASSWORD);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("notify[0].allow")
            && err.contains(&format!(
                "allow = {{ mail_servers = [\"{}\"] }}",
                smtp.address()
            )),
        "{err}"
    );
    assert!(smtp.events().is_empty() && s.files().is_empty());
    // Granted, the same file sends.
    let file = pipeline(
        &s,
        &email(
            &plugin,
            &smtp,
            &format!("allow = {{ mail_servers = [\"{}\"] }}", smtp.address()),
        ),
    );
    let out = run(&s, &file, "app", &pg, &smtp, SmtpServer::PASSWORD);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let got = smtp.messages();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].header("Subject").is_some_and(|s| s
            .starts_with("[pipeline] mailtest succeeded on ")
            && s.contains(".zst (")),
        "{:?}",
        got[0].header("Subject")
    );
}
