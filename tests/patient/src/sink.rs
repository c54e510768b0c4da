//! `patient sink`: a tiny HTTP server that records every request it receives and shows them
//! back, so end-to-end tests can see what hemostat sent to "Slack" from inside a compose
//! network. `POST`/`PUT` anything: answered `200 ok` and recorded. `GET /received`: a JSON array
//! of `{"path":..,"body":..}`. `GET /healthz`: `ok`. Bounded: it keeps the last 1,000 requests.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

const KEEP: usize = 1000;
const BODY_LIMIT: usize = 1 << 20;

type Log = Arc<Mutex<VecDeque<(String, String)>>>;

/// Escapes a string as a JSON string literal.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The recorded requests as a JSON array.
pub fn dump(log: &VecDeque<(String, String)>) -> String {
    let items: Vec<String> = log
        .iter()
        .map(|(path, body)| {
            format!(
                "{{\"path\":{},\"body\":{}}}",
                json_string(path),
                json_string(body)
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn handle(mut stream: TcpStream, log: &Log) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or("/").to_owned();
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        match reader.read_line(&mut header) {
            Ok(0) | Err(_) => break,
            Ok(_) if header == "\r\n" || header == "\n" => break,
            Ok(_) => {
                if let Some((name, value)) = header.split_once(':')
                    && name.trim().eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0).min(BODY_LIMIT);
                }
            }
        }
    }
    let mut body = vec![0u8; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    match (method.as_str(), path.as_str()) {
        ("GET", "/received") => {
            let text = match log.lock() {
                Ok(l) => dump(&l),
                Err(p) => dump(&p.into_inner()),
            };
            respond(&mut stream, "200 OK", "application/json", &text);
        }
        ("GET", "/healthz") => respond(&mut stream, "200 OK", "text/plain", "ok"),
        ("POST" | "PUT", _) => {
            let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
            if l.len() >= KEEP {
                l.pop_front();
            }
            l.push_back((path, String::from_utf8_lossy(&body).into_owned()));
            drop(l);
            respond(&mut stream, "200 OK", "text/plain", "ok");
        }
        _ => respond(&mut stream, "404 Not Found", "text/plain", "not found"),
    }
}

/// Serves forever on `addr`.
pub fn serve(addr: &str) -> ! {
    let listener = match TcpListener::bind(addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hemostat-patient sink: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("patient sink: recording requests on {addr}; GET /received to read them");
    let log: Log = Arc::default();
    for stream in listener.incoming().flatten() {
        let log = log.clone();
        std::thread::spawn(move || handle(stream, &log));
    }
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_dumps_as_json() {
        assert_eq!(json_string("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
        let mut log = VecDeque::new();
        log.push_back(("/slack".to_owned(), "{\"text\":\"hi\"}".to_owned()));
        assert_eq!(
            dump(&log),
            r#"[{"path":"/slack","body":"{\"text\":\"hi\"}"}]"#
        );
    }

    #[test]
    fn serves_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let log: Log = Arc::default();
        let server_log = log.clone();
        std::thread::spawn(move || {
            for s in listener.incoming().flatten().take(2) {
                handle(s, &server_log);
            }
        });
        let mut c = TcpStream::connect(addr).expect("connect");
        write!(
            c,
            "POST /services/x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
        )
        .expect("write");
        let mut reply = String::new();
        c.read_to_string(&mut reply).expect("read");
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        let mut c = TcpStream::connect(addr).expect("connect");
        write!(c, "GET /received HTTP/1.1\r\n\r\n").expect("write");
        let mut reply = String::new();
        c.read_to_string(&mut reply).expect("read");
        assert!(
            reply.contains(r#"{"path":"/services/x","body":"hello"}"#),
            "{reply}"
        );
    }
}
