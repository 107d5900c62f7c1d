//! A tiny HTTP/1.1 server on 127.0.0.1 for the fakes of the services regent
//! talks to (token endpoints, registries): std only, one thread per
//! connection, one request per connection, `Connection: close` on every reply.
//!
//! Each request (method, path, headers, body) goes to a handler closure,
//! which answers with a [`Response`] or, with `None`, closes the connection
//! without one. Every request read is recorded ([`HttpFake::requests`]).
//! A request head is bounded (64 KiB), a body too (1 MiB), and a peer that
//! stops sending is dropped after 10 s. [`HttpFake::kill`] stops answering
//! and closes the port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// The most a request head (request line and headers) may take.
const MAX_HEAD: u64 = 64 * 1024;
/// The most of a body that is read.
const MAX_BODY: usize = 1 << 20;
/// How long a connection may stay silent.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// One request as the fake read it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The request target as sent (path and query).
    pub path: String,
    /// In the order sent, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The first header called `name` (case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A reply: status, headers (`Content-Length` and `Connection` are added),
/// body.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// `status` with `Content-Type: content_type` and `body`.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn write_to(&self, conn: &mut TcpStream) -> std::io::Result<()> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        conn.write_all(head.as_bytes())?;
        conn.write_all(&self.body)?;
        conn.flush()
    }
}

/// The reason phrase of the statuses fakes send (HTTP/1.1 allows any, or none).
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// What a fake does with a request: a reply, or `None` to close the
/// connection without one.
type Handler = dyn Fn(&Request) -> Option<Response> + Send + Sync;

struct Shared {
    handler: Box<Handler>,
    requests: Mutex<Vec<Request>>,
    dead: AtomicBool,
}

/// A loopback HTTP server, until killed or dropped.
pub struct HttpFake {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<thread::JoinHandle<()>>,
}

impl HttpFake {
    /// Starts on 127.0.0.1 with a free port; every request goes to `handler`.
    pub fn start(
        handler: impl Fn(&Request) -> Option<Response> + Send + Sync + 'static,
    ) -> HttpFake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback HTTP fake");
        let addr = listener.local_addr().expect("loopback HTTP fake address");
        let shared = Arc::new(Shared {
            handler: Box::new(handler),
            requests: Mutex::new(Vec::new()),
            dead: AtomicBool::new(false),
        });
        let s = shared.clone();
        let accept = thread::spawn(move || {
            for conn in listener.incoming() {
                if s.dead.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let s = s.clone();
                thread::spawn(move || serve(conn, &s));
            }
        });
        HttpFake {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request read so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared
            .requests
            .lock()
            .expect("HTTP fake requests")
            .clone()
    }

    /// Stops answering (requests read from now on get their connection
    /// closed) and closes the port. Handlers still running finish.
    pub fn kill(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.dead.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it drops the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(2));
        let _ = accept.join();
    }
}

impl Drop for HttpFake {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve(mut conn: TcpStream, s: &Shared) {
    let _ = conn.set_read_timeout(Some(READ_TIMEOUT));
    let Some(req) = read_request(&conn) else {
        return;
    };
    if s.dead.load(Ordering::SeqCst) {
        return;
    }
    s.requests
        .lock()
        .expect("HTTP fake requests")
        .push(req.clone());
    if let Some(reply) = (s.handler)(&req) {
        let _ = reply.write_to(&mut conn);
    }
}

fn read_request(conn: &TcpStream) -> Option<Request> {
    let mut head = BufReader::new(conn.try_clone().ok()?).take(MAX_HEAD);
    let mut line = String::new();
    head.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut headers = Vec::new();
    let mut length = 0usize;
    let mut chunked = false;
    loop {
        line.clear();
        if head.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (name, value) = l.split_once(':')?;
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok()?;
        }
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
        headers.push((name.to_owned(), value.to_owned()));
    }
    let mut reader = head.into_inner();
    let body = if chunked {
        read_chunked(&mut reader)?
    } else {
        let mut body = vec![0; length.min(MAX_BODY)];
        reader.read_exact(&mut body).ok()?;
        body
    };
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

/// A `Transfer-Encoding: chunked` body (what Go's client sends for a body
/// of unknown length), at most [`MAX_BODY`] bytes; trailers are skipped.
fn read_chunked(reader: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size = String::new();
        reader.read_line(&mut size).ok()?;
        let size = size.trim().split(';').next()?;
        let n = usize::from_str_radix(size, 16).ok()?;
        if n == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).ok()? == 0 || line.trim().is_empty() {
                    return Some(body);
                }
            }
        }
        if body.len() + n > MAX_BODY {
            return None;
        }
        let start = body.len();
        body.resize(start + n, 0);
        reader.read_exact(&mut body[start..]).ok()?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf).ok()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_chunked_body() {
        let fake = HttpFake::start(|req| Some(Response::new(200, "text/plain", req.text())));
        let reply = exchange(
            &fake,
            "POST /t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
             4\r\nabcd\r\n3;ext=1\r\nefg\r\n0\r\n\r\n",
        );
        assert!(reply.ends_with("abcdefg"), "{reply}");
    }

    fn exchange(fake: &HttpFake, request: &str) -> String {
        let mut conn = TcpStream::connect(fake.addr).unwrap();
        conn.write_all(request.as_bytes()).unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).unwrap();
        reply
    }

    #[test]
    fn routes_a_request_and_records_it() {
        let fake = HttpFake::start(|req| match (req.method.as_str(), req.path.as_str()) {
            ("POST", "/token") => Some(
                Response::new(200, "text/plain", format!("got {}", req.text()))
                    .with_header("X-Seen", req.header("x-test").unwrap_or("none")),
            ),
            _ => Some(Response::new(404, "text/plain", "no")),
        });
        let reply = exchange(
            &fake,
            "POST /token HTTP/1.1\r\nHost: x\r\nX-Test: yes\r\nContent-Length: 5\r\n\r\nhello",
        );
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
        assert!(reply.contains("\r\nX-Seen: yes\r\n"), "{reply}");
        assert!(reply.contains("\r\nContent-Length: 9\r\n"), "{reply}");
        assert!(reply.ends_with("\r\n\r\ngot hello"), "{reply}");
        let reply = exchange(&fake, "GET /other HTTP/1.1\r\n\r\n");
        assert!(reply.starts_with("HTTP/1.1 404 Not Found\r\n"), "{reply}");

        let seen = fake.requests();
        assert_eq!(seen.len(), 2);
        assert_eq!(
            (seen[0].method.as_str(), seen[0].path.as_str()),
            ("POST", "/token")
        );
        assert_eq!(seen[0].header("X-TEST"), Some("yes"));
        assert_eq!(seen[0].body, b"hello");
        assert_eq!(seen[1].path, "/other");
    }

    #[test]
    fn no_reply_closes_and_kill_stops_answering() {
        let mut fake = HttpFake::start(|req| {
            (req.path != "/silent").then(|| Response::new(200, "text/plain", "ok"))
        });
        assert_eq!(exchange(&fake, "GET /silent HTTP/1.1\r\n\r\n"), "");
        fake.kill();
        assert!(TcpStream::connect_timeout(&fake.addr, Duration::from_secs(2)).is_err());
        assert_eq!(fake.requests().len(), 1);
    }
}
