//! Email: the SMTP side of a `mailto://`, `smtp://` or `smtps://` sink. STARTTLS is required
//! unless the URL says otherwise (lettre refuses to send credentials over a connection that
//! could not be upgraded); the password is never logged, and an error names the sink only.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use crate::sink::{Attempt, Email, EmailTls, Request};

/// The SMTP transport of `e`; commands time out after `timeout`.
pub fn transport(
    e: &Email,
    timeout: Duration,
) -> anyhow::Result<AsyncSmtpTransport<Tokio1Executor>> {
    let builder = match e.tls {
        EmailTls::Implicit => AsyncSmtpTransport::<Tokio1Executor>::relay(&e.host)?,
        EmailTls::StartTls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&e.host)?,
        EmailTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&e.host),
    };
    let mut builder = builder
        .port(e.port)
        .timeout(Some(timeout))
        .hello_name(ClientId::Domain("hemostat".into()));
    if let Some(user) = &e.user {
        builder = builder.credentials(Credentials::new(
            user.clone(),
            e.password.clone().unwrap_or_default(),
        ));
    }
    Ok(builder.build())
}

/// The header `name` of a request, if it has one.
fn header<'a>(r: &'a Request, name: &str) -> Option<&'a str> {
    r.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Builds the message of `r` for `e`: every recipient in `To`, the subject and Message-ID
/// from its headers, its body as plain UTF-8 text.
pub fn message(e: &Email, r: &Request) -> Result<Message, String> {
    let from: Mailbox = e
        .from
        .parse()
        .map_err(|_| "its from= address is not an email address".to_owned())?;
    let mut b = Message::builder()
        .from(from)
        .subject(header(r, "Subject").unwrap_or("hemostat"))
        .header(ContentType::TEXT_PLAIN);
    if let Some(id) = header(r, "Message-ID") {
        b = b.message_id(Some(id.to_owned()));
    }
    for to in &e.to {
        let to: Mailbox = to
            .parse()
            .map_err(|_| "a to= address is not an email address".to_owned())?;
        b = b.to(to);
    }
    b.body(String::from_utf8_lossy(&r.body).into_owned())
        .map_err(|e| format!("the message could not be built: {e}"))
}

/// Sends `r` as an email through `mailer`: a 5xx answer will not get better (fatal), anything
/// else (a 4xx, a timeout, a refused connection) is worth trying again.
pub async fn send(
    name: &str,
    mailer: &AsyncSmtpTransport<Tokio1Executor>,
    e: &Email,
    r: &Request,
) -> Attempt {
    let m = match message(e, r) {
        Ok(m) => m,
        Err(why) => {
            return Attempt::Fatal {
                reason: format!("{name}: {why}"),
            };
        }
    };
    match mailer.send(m).await {
        Ok(resp) => Attempt::Sent {
            status: resp.code().into(),
        },
        Err(err) if err.is_permanent() => Attempt::Fatal {
            reason: format!("{name} refused the message: {}", smtp_reason(&err)),
        },
        Err(err) => Attempt::Retry {
            reason: format!("{name} could not take the message: {}", smtp_reason(&err)),
            after: None,
        },
    }
}

/// What went wrong, in words that hold no credential: lettre's errors quote the server's
/// answer (never what we sent), but we say only its class and code.
fn smtp_reason(e: &lettre::transport::smtp::Error) -> String {
    let class = if e.is_timeout() {
        "timed out"
    } else if e.is_tls() {
        "TLS failed"
    } else if e.is_permanent() {
        "permanent error"
    } else if e.is_transient() {
        "temporary error"
    } else {
        "connection failed"
    };
    match e.status() {
        Some(code) => format!("{class} (SMTP {code})"),
        None => class.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::sink::Method;

    fn email(to: &[&str]) -> Email {
        Email {
            host: "127.0.0.1".into(),
            port: 25,
            tls: EmailTls::None,
            user: None,
            password: None,
            from: "hemostat@example.com".into(),
            to: to.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_message_has_every_recipient_and_the_subject() {
        let r = Request {
            method: Method::Post,
            url: None,
            body: "line one\nline two".into(),
            content_type: "text/plain".into(),
            headers: vec![
                ("Subject".into(), "Restart of web succeeded".into()),
                ("Message-ID".into(), "<abc@hemostat>".into()),
            ],
        };
        let m = message(&email(&["a@example.com", "b@example.com"]), &r).unwrap();
        let text = String::from_utf8(m.formatted()).unwrap();
        assert!(text.contains("Subject: Restart of web succeeded"), "{text}");
        assert!(
            text.contains("a@example.com") && text.contains("b@example.com"),
            "{text}"
        );
        assert!(text.contains("Message-ID: <abc@hemostat>"), "{text}");
        assert!(text.contains("line two"), "{text}");
        assert!(message(&email(&["not an address"]), &r).is_err());
    }
}
