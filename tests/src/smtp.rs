//! A small SMTP server on 127.0.0.1 for the email sink's tests: it speaks the protocol a
//! client sees (RFC 5321 greeting, `EHLO` with its extensions, `AUTH PLAIN` and `AUTH LOGIN`,
//! `MAIL`, `RCPT`, `DATA` with dot-unstuffing, `RSET`, `NOOP`, `QUIT`), refuses what a real
//! server refuses (a command out of order, a wrong password), and records every message it
//! accepted. It offers no STARTTLS, so clients connect with `tls=none`.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A message the server accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mail {
    /// The user that authenticated, if any.
    pub user: Option<String>,
    pub from: String,
    pub to: Vec<String>,
    /// Headers and body as sent, dot-unstuffed, with CRLF line ends.
    pub data: String,
}

impl Mail {
    /// The value of header `name` (unfolded), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.data.split("\r\n\r\n").next()?;
        let mut value: Option<String> = None;
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some(v) = value.as_mut() {
                    v.push_str(line.trim_start());
                }
                continue;
            }
            if value.is_some() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case(name)
            {
                value = Some(v.trim().to_owned());
            }
        }
        value
    }

    /// The body after the headers.
    pub fn body(&self) -> &str {
        self.data.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }
}

/// What the server remembers and how it answers.
#[derive(Debug, Default)]
struct State {
    mails: Vec<Mail>,
    /// `(user, password)` it accepts; `None`: no authentication offered or needed.
    login: Option<(String, String)>,
    /// `DATA` answers `451` this many more times before accepting.
    fail_data: u32,
}

/// A running server; it stops when dropped.
#[derive(Debug)]
pub struct SmtpServer {
    pub port: u16,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|b| *b != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, b) in chunk.iter().enumerate() {
            n |= val(*b)? << (18 - 6 * i);
        }
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// The address in `FROM:<a@b>` / `TO:<a@b> SIZE=...`.
fn address(arg: &str) -> Option<String> {
    let start = arg.find('<')?;
    let end = arg[start..].find('>')? + start;
    Some(arg[start + 1..end].to_owned())
}

impl SmtpServer {
    /// Starts a server; with `login`, it offers `AUTH PLAIN LOGIN` and requires that user.
    pub async fn start(login: Option<(&str, &str)>) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
        let port = listener.local_addr().expect("smtp addr").port();
        let state = Arc::new(Mutex::new(State {
            login: login.map(|(u, p)| (u.to_owned(), p.to_owned())),
            ..State::default()
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = session(sock, st).await;
                });
            }
        });
        SmtpServer { port, state, task }
    }

    /// `DATA` answers `451` (try again later) the next `n` times.
    pub fn fail_next(&self, n: u32) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .fail_data = n;
    }

    /// The messages accepted so far.
    pub fn mails(&self) -> Vec<Mail> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .mails
            .clone()
    }

    /// Waits (up to `timeout`) until `n` messages arrived.
    pub async fn wait_for(&self, n: usize, timeout: std::time::Duration) -> Vec<Mail> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let m = self.mails();
            if m.len() >= n || std::time::Instant::now() >= deadline {
                return m;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

async fn session(sock: tokio::net::TcpStream, st: Arc<Mutex<State>>) -> std::io::Result<()> {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    let needs_auth = st.lock().unwrap_or_else(|p| p.into_inner()).login.clone();
    w.write_all(b"220 127.0.0.1 ESMTP hemostat-test\r\n")
        .await?;
    let mut helo = false;
    let mut user: Option<String> = None;
    let mut from: Option<String> = None;
    let mut to: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end_matches(['\r', '\n']).to_owned();
        let (verb, arg) = cmd.split_once(' ').unwrap_or((cmd.as_str(), ""));
        let verb = verb.to_ascii_uppercase();
        let reply: String = match verb.as_str() {
            "EHLO" | "HELO" => {
                helo = true;
                if needs_auth.is_some() {
                    "250-127.0.0.1\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n250 SMTPUTF8".into()
                } else {
                    "250-127.0.0.1\r\n250-8BITMIME\r\n250 SMTPUTF8".into()
                }
            }
            "AUTH" if helo => {
                let Some((want_user, want_pass)) = &needs_auth else {
                    w.write_all(b"503 5.5.1 no authentication here\r\n").await?;
                    continue;
                };
                let (mech, initial) = arg.split_once(' ').unwrap_or((arg, ""));
                let (u, p) = match mech.to_ascii_uppercase().as_str() {
                    "PLAIN" => {
                        let raw = if initial.is_empty() {
                            w.write_all(b"334 \r\n").await?;
                            line.clear();
                            r.read_line(&mut line).await?;
                            line.trim().to_owned()
                        } else {
                            initial.to_owned()
                        };
                        let dec = decode_base64(&raw).unwrap_or_default();
                        let parts: Vec<&[u8]> = dec.split(|b| *b == 0).collect();
                        match parts.as_slice() {
                            [_, u, p] => (
                                String::from_utf8_lossy(u).into_owned(),
                                String::from_utf8_lossy(p).into_owned(),
                            ),
                            _ => (String::new(), String::new()),
                        }
                    }
                    "LOGIN" => {
                        w.write_all(b"334 VXNlcm5hbWU6\r\n").await?;
                        line.clear();
                        r.read_line(&mut line).await?;
                        let u = decode_base64(line.trim()).unwrap_or_default();
                        w.write_all(b"334 UGFzc3dvcmQ6\r\n").await?;
                        line.clear();
                        r.read_line(&mut line).await?;
                        let p = decode_base64(line.trim()).unwrap_or_default();
                        (
                            String::from_utf8_lossy(&u).into_owned(),
                            String::from_utf8_lossy(&p).into_owned(),
                        )
                    }
                    _ => {
                        w.write_all(b"504 5.5.4 mechanism not supported\r\n")
                            .await?;
                        continue;
                    }
                };
                if &u == want_user && &p == want_pass {
                    user = Some(u);
                    "235 2.7.0 authenticated".into()
                } else {
                    "535 5.7.8 authentication failed".into()
                }
            }
            "MAIL" if helo => {
                if needs_auth.is_some() && user.is_none() {
                    "530 5.7.0 authentication required".into()
                } else if let Some(a) = address(arg) {
                    from = Some(a);
                    to.clear();
                    "250 2.1.0 ok".into()
                } else {
                    "501 5.5.4 bad address".into()
                }
            }
            "RCPT" if from.is_some() => match address(arg) {
                Some(a) => {
                    to.push(a);
                    "250 2.1.5 ok".into()
                }
                None => "501 5.5.4 bad address".into(),
            },
            "DATA" if !to.is_empty() => {
                w.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == ".\r\n" || line == ".\n" {
                        break;
                    }
                    // Dot-unstuffing: a line the client started with `..` began with `.`.
                    data.push_str(line.strip_prefix('.').unwrap_or(&line));
                }
                let mut s = st.lock().unwrap_or_else(|p| p.into_inner());
                if s.fail_data > 0 {
                    s.fail_data -= 1;
                    "451 4.3.0 try again later".into()
                } else {
                    s.mails.push(Mail {
                        user: user.clone(),
                        from: from.take().unwrap_or_default(),
                        to: std::mem::take(&mut to),
                        data,
                    });
                    "250 2.0.0 queued".into()
                }
            }
            "RSET" => {
                from = None;
                to.clear();
                "250 2.0.0 ok".into()
            }
            "NOOP" => "250 2.0.0 ok".into(),
            "QUIT" => {
                w.write_all(b"221 2.0.0 bye\r\n").await?;
                return Ok(());
            }
            _ => "503 5.5.1 bad sequence of commands".into(),
        };
        w.write_all(reply.as_bytes()).await?;
        w.write_all(b"\r\n").await?;
    }
}
