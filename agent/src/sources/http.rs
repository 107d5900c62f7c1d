//! The one HTTP client of the token sources: hyper 1 with rustls 0.23 on the
//! aws-lc-rs provider, the stack the AWS SDK already brings, so the agent
//! carries one TLS stack. (The ECR source talks through the SDK's own client
//! of the same stack; everything regent writes itself goes through this.)
//!
//! It is built on first use: an agent that never fetches over HTTP never
//! reads the system's CA roots. The roots are the system's
//! (`rustls-native-certs`, which honours `SSL_CERT_FILE` and `SSL_CERT_DIR`).
//! `http://` is allowed: sources decide which endpoints may use it (the
//! loopback fakes of the tests, a metadata server).
//!
//! [`Http::send`] bounds the whole exchange (connect, TLS, the answer's
//! headers and its body) by one timeout and the body by a size, and keeps
//! the body in wiped memory: answers carry tokens.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{HeaderMap, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use zeroize::Zeroizing;

/// The request body type.
pub type Body = Full<Bytes>;

/// Connecting (TCP, before TLS) gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

type Inner = Client<HttpsConnector<HttpConnector>, Body>;

/// The shared client; cheap to clone.
#[derive(Clone, Default)]
pub struct Http {
    inner: Arc<OnceLock<Result<Inner, String>>>,
}

/// An answer, whatever its status.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Zeroizing<Vec<u8>>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpError {
    /// No TLS setup: the system's CA roots could not be read.
    #[error("cannot set up TLS: {0}")]
    Setup(String),
    #[error("no answer within {}s", .0.as_secs())]
    TimedOut(Duration),
    /// Connecting, TLS, or the exchange itself failed.
    #[error("{0}")]
    Exchange(String),
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

impl HttpError {
    /// Whether trying again later can help (everything but a setup that
    /// will fail the same way).
    pub fn is_transient(&self) -> bool {
        !matches!(self, HttpError::Setup(_) | HttpError::TooLarge(_))
    }
}

impl Http {
    pub fn new() -> Http {
        Http::default()
    }

    fn client(&self) -> Result<&Inner, HttpError> {
        self.inner
            .get_or_init(build)
            .as_ref()
            .map_err(|e| HttpError::Setup(e.clone()))
    }

    /// Sends `req` and reads the answer: all of it within `timeout`, its
    /// body at most `limit` bytes.
    pub async fn send(
        &self,
        req: Request<Body>,
        timeout: Duration,
        limit: usize,
    ) -> Result<Reply, HttpError> {
        let client = self.client()?;
        let exchange = async {
            let answer = client
                .request(req)
                .await
                .map_err(|e| HttpError::Exchange(chain(&e)))?;
            let (parts, body) = answer.into_parts();
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        HttpError::TooLarge(limit)
                    } else {
                        HttpError::Exchange(e.to_string())
                    }
                })?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body: Zeroizing::new(body.to_vec()),
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| HttpError::TimedOut(timeout))?
    }
}

fn build() -> Result<Inner, String> {
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    tcp.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider)
        .map_err(|e| format!("cannot read the system's CA certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(https))
}

/// Whether `host` (as in a URL's authority, IPv6 in brackets or not) is
/// this machine: `localhost`, or a loopback address. Sources allow plain
/// `http://` to these only.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why a configured endpoint URL is refused ([`endpoint_url`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadUrl {
    /// Not an absolute http(s) URL, or one with user info, a query or a
    /// fragment.
    Malformed,
    /// `http://` to a host that is not this machine: tokens would cross the
    /// network in clear.
    ClearText,
}

/// A configured endpoint (an API, authority or token URL): `https://`, or
/// `http://` to a loopback host only; no user info, query or fragment;
/// trailing slashes dropped. The one check of every source's URL
/// settings; each says in its own words what the URL is for.
pub fn endpoint_url(raw: &str) -> Result<String, BadUrl> {
    let url = raw.trim_end_matches('/');
    let uri: hyper::Uri = url.parse().map_err(|_| BadUrl::Malformed)?;
    let authority = uri.authority().ok_or(BadUrl::Malformed)?;
    if authority.as_str().contains('@') || uri.query().is_some() || raw.contains('#') {
        return Err(BadUrl::Malformed);
    }
    match uri.scheme_str() {
        Some("https") => Ok(url.to_owned()),
        Some("http") if is_loopback(authority.host()) => Ok(url.to_owned()),
        Some("http") => Err(BadUrl::ClearText),
        _ => Err(BadUrl::Malformed),
    }
}

/// `pairs` as an `application/x-www-form-urlencoded` body, in wiped memory
/// (sized up front: no reallocation leaves a copy behind).
pub fn form(pairs: &[(&str, &str)]) -> Zeroizing<String> {
    let room = pairs.iter().map(|(k, v)| 3 * (k.len() + v.len()) + 2).sum();
    let mut body = Zeroizing::new(String::with_capacity(room));
    let mut ser = form_urlencoded::Serializer::new(std::mem::take(&mut *body));
    ser.extend_pairs(pairs.iter().copied());
    *body = ser.finish();
    body
}

/// An error and its sources on one line (hyper's outer error alone says
/// only "client error (Connect)").
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    super::text::error_chain(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server on loopback that answers each connection with `answer`
    /// after reading the request head, or never when `answer` is `None`.
    async fn server(answer: Option<&'static [u8]>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        let n = conn.read(&mut buf).await.unwrap();
                        if n == 0 {
                            return;
                        }
                        head.extend_from_slice(&buf[..n]);
                    }
                    match answer {
                        Some(bytes) => conn.write_all(bytes).await.unwrap(),
                        None => std::future::pending().await,
                    }
                });
            }
        });
        format!("http://{addr}")
    }

    fn get(url: &str) -> Request<Body> {
        Request::get(url).body(Body::default()).unwrap()
    }

    #[test]
    fn endpoints_are_https_or_loopback_and_nothing_else() {
        assert_eq!(
            endpoint_url("https://api.example.com/v3/").unwrap(),
            "https://api.example.com/v3"
        );
        assert_eq!(
            endpoint_url("http://127.0.0.1:9/t").unwrap(),
            "http://127.0.0.1:9/t"
        );
        assert_eq!(endpoint_url("http://[::1]:9").unwrap(), "http://[::1]:9");
        assert_eq!(
            endpoint_url("http://LocalHost/x").unwrap(),
            "http://LocalHost/x"
        );
        assert_eq!(
            endpoint_url("http://api.example.com"),
            Err(BadUrl::ClearText)
        );
        assert_eq!(
            endpoint_url("http://127.0.0.1.example.com"),
            Err(BadUrl::ClearText)
        );
        for bad in [
            "",
            "api.example.com",
            "file:///etc/passwd",
            "ftp://api.example.com",
            "https://user:pw@api.example.com",
            "https://api.example.com/?a=1",
            "https://api.example.com/#frag",
        ] {
            assert_eq!(endpoint_url(bad), Err(BadUrl::Malformed), "{bad}");
        }
    }

    #[test]
    fn loopback_hosts_and_forms() {
        for host in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.8.9.1",
            "[::1]",
            "::1",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in ["example.com", "10.0.0.1", "localhost.example.com", "[::2]"] {
            assert!(!is_loopback(host), "{host}");
        }
        assert_eq!(
            &*form(&[("a", "b c"), ("assertion", "x.y+z/=")]),
            "a=b+c&assertion=x.y%2Bz%2F%3D"
        );
    }

    #[tokio::test]
    async fn reads_an_answer_over_loopback() {
        let base = server(Some(
            b"HTTP/1.1 201 Created\r\ncontent-length: 5\r\nx-probe: yes\r\n\r\nhello",
        ))
        .await;
        let reply = Http::new()
            .send(get(&format!("{base}/token")), Duration::from_secs(5), 64)
            .await
            .unwrap();
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.headers["x-probe"], "yes");
        assert_eq!(&reply.body[..], b"hello");
    }

    #[tokio::test]
    async fn bounds_time_and_size() {
        let silent = server(None).await;
        let err = Http::new()
            .send(get(&silent), Duration::from_millis(200), 64)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, HttpError::TimedOut(_)), "{err}");
        assert!(err.is_transient());

        let big = server(Some(
            b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\naaaaaaaaaaaaaaaaaaaa",
        ))
        .await;
        let err = Http::new()
            .send(get(&big), Duration::from_secs(5), 10)
            .await
            .err()
            .unwrap();
        assert!(matches!(err, HttpError::TooLarge(10)), "{err}");
    }

    #[tokio::test]
    async fn a_refused_connection_says_why() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = Http::new()
            .send(
                get(&format!("http://127.0.0.1:{port}/")),
                Duration::from_secs(5),
                64,
            )
            .await
            .err()
            .unwrap();
        assert!(err.is_transient());
        assert!(err.to_string().contains("refused"), "{err}");
    }
}
