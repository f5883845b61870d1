//! Mail: the host's SMTP client (the `mail` capability) against a real SMTP server
//! (aiosmtpd, `tests/support/smtp.rs`) with STARTTLS, TLS and a login, and the `email`
//! notifier end to end.

mod support;

use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use pipeline::bindings::PluginError;
use pipeline::capabilities::mail::{Client, Message, Security, Server};
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
