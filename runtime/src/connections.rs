//! Upstream connections of one tenant, kept open between requests.
//!
//! wasmtime-wasi-http's default sender opens a new TCP connection — and for
//! `https` a new TLS session, with a root store built anew — for every
//! request. A tick calls each service several times (the events page, the
//! computer, the isolation probe and request…), and against the real APIs
//! every handshake costs round trips and CPU. [`ConnectionPool`] is one
//! tenant's pooled HTTP/1.1 client — hyper-util's
//! [`Client`](hyper_util::client::legacy::Client) over hyper-rustls'
//! connector with this crate's [`tls_config`]:
//! - a connection goes back to the pool only once hyper has read its answer
//!   to the end (the guest read it, or dropped it and hyper drained a rest it
//!   already held), and is taken only when hyper says it can carry another
//!   request (a `Connection: close`, an error, a timeout or a body dropped
//!   mid-way closes it);
//! - it is used again only within [`IDLE_TIMEOUT`] (below the 60 s keep-alive
//!   of common servers and load balancers; the pool's timer closes it within
//!   one more such period), at most [`MAX_IDLE_PER_ORIGIN`] are kept per origin;
//! - a pooled connection the server closed meanwhile is noticed before the
//!   request is written (hyper hands the request back) and the request goes
//!   out on a new connection: nothing is sent twice by the pool;
//! - one client per tenant: no connection is shared between customers.
//!
//! What this module adds to the library: the timeouts of wasmtime-wasi-http's
//! default sender — connect (until a connection, idle or new with its TCP and
//! TLS handshakes, takes the request), first byte of the answer, between two
//! body frames — and, per answer, whether its request opened a new connection
//! (a first-use mark the connector puts on each connection, which hyper-util
//! copies into every answer's extensions).

use std::error::Error as StdError;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{
    Connected, Connection, HttpConnector, capture_connection,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use wasmtime_wasi_http::p2::bindings::http::types::ErrorCode;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// How long an idle connection is used again.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Idle connections kept per origin.
pub const MAX_IDLE_PER_ORIGIN: usize = 2;
/// A connection's read buffer, fixed: hyper's adaptive buffer grows to
/// ~400 KiB on large answers (an events page) and a kept connection would
/// hold that while idle.
const READ_BUFFER: usize = 16 * 1024;

/// The timeouts of one request.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Until a connection (idle, or new: TCP and TLS handshakes) takes the request.
    pub connect: Duration,
    /// From then until the answer's head has arrived.
    pub first_byte: Duration,
    /// Between two frames of the answer's body.
    pub between_bytes: Duration,
}

/// The client TLS configuration: Mozilla's root store (webpki-roots, as
/// wasmtime-wasi-http's default sender), ring, TLS 1.2 and 1.3. Built once.
pub fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| format!("TLS setup: {e}"))
        })
        .clone()
}

/// One tenant's upstream client: its kept-alive connections, by origin.
pub struct ConnectionPool {
    client: Client<Connector, WasiBody>,
}

impl ConnectionPool {
    /// A tenant's client. `connect_cap` (the tenant's longest connect timeout)
    /// also bounds a connection that finishes in the background after its
    /// request took an idle one that came free meanwhile.
    pub fn new(connect_cap: Duration) -> Self {
        Self::with_idle_timeout(connect_cap, IDLE_TIMEOUT)
    }

    fn with_idle_timeout(connect_cap: Duration, idle_timeout: Duration) -> Self {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        let https = tls_config()
            .map(|config| HttpsConnector::from((tcp, config)))
            .map_err(Arc::from);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(idle_timeout)
            .pool_max_idle_per_host(MAX_IDLE_PER_ORIGIN)
            .http1_read_buf_exact_size(READ_BUFFER)
            .build(Connector {
                https,
                timeout: connect_cap,
            });
        Self { client }
    }

    /// Sends `request` (absolute URI, `Host` header set) on an idle connection
    /// to its origin, or on a new one. Returns the answer and whether a new
    /// connection was opened for it.
    pub async fn send(
        &self,
        mut request: http::Request<WasiBody>,
        timeouts: Timeouts,
    ) -> Result<(http::Response<WasiBody>, bool), HttpError> {
        let mut taken = capture_connection(&mut request);
        let mut answer = self.client.request(request);
        // Connect: until the client hands the request to a connection. (A
        // request a kept connection handed back unsent goes out on a new one
        // under the first-byte timeout, the connector's own still bounding it.)
        let connected = async { taken.wait_for_connection_metadata().await.is_some() };
        let early = tokio::time::timeout(timeouts.connect, async {
            tokio::select! {
                biased;
                answer = &mut answer => Some(answer),
                _ = connected => None,
            }
        })
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?;
        let answer = match early {
            Some(answer) => answer,
            None => tokio::time::timeout(timeouts.first_byte, answer)
                .await
                .map_err(|_| HttpError::ConnectionReadTimeout)?,
        }
        .map_err(client_error)?;
        let opened = answer
            .extensions()
            .get::<FirstUse>()
            .is_some_and(FirstUse::take);
        let answer = answer.map(|incoming| {
            BetweenBytes {
                incoming,
                timer: Box::pin(tokio::time::sleep(timeouts.between_bytes)),
                between_bytes: timeouts.between_bytes,
            }
            .boxed_unsync()
        });
        Ok((answer, opened))
    }
}

/// The wasi-http error of a request that got no answer: the connector's own,
/// or — as wasi-http maps a hyper error on a request by default — a protocol
/// error (a connection closed or broken before the answer's head).
fn client_error(e: hyper_util::client::legacy::Error) -> HttpError {
    let cause = e.source();
    if let Some(failed) = cause.and_then(|c| c.downcast_ref::<ConnectFailed>())
        && let Some(error) = failed.take()
    {
        return error;
    }
    if let Some(code) = cause
        .and_then(|c| c.downcast_ref::<hyper::Error>())
        .and_then(|h| h.source())
        .and_then(|c| c.downcast_ref::<ErrorCode>())
    {
        return code.clone().into();
    }
    tracing::warn!("upstream request failed: {e:?}");
    HttpError::HttpProtocolError
}

/// Opens a connection (TCP, and TLS for `https`) within a timeout, marked as
/// not used yet.
#[derive(Clone)]
struct Connector {
    https: Result<HttpsConnector<HttpConnector>, Arc<str>>,
    timeout: Duration,
}

type Connecting = Pin<Box<dyn Future<Output = Result<Conn, ConnectFailed>> + Send>>;

impl tower_service::Service<http::Uri> for Connector {
    type Response = Conn;
    type Error = ConnectFailed;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectFailed>> {
        match &mut self.https {
            Ok(https) => https
                .poll_ready(cx)
                .map_err(|e| ConnectFailed::new(connect_error(e))),
            Err(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, uri: http::Uri) -> Connecting {
        let connecting = match &mut self.https {
            Ok(https) => https.call(uri),
            Err(setup) => {
                let e = HttpError::Tls(io::Error::other(setup.to_string()));
                return Box::pin(async { Err(ConnectFailed::new(e)) });
            }
        };
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Err(_) => Err(ConnectFailed::new(HttpError::ConnectionTimeout)),
                Ok(Err(e)) => Err(ConnectFailed::new(connect_error(e))),
                Ok(Ok(io)) => Ok(Conn {
                    io,
                    first_use: FirstUse(Arc::new(AtomicBool::new(true))),
                }),
            }
        })
    }
}

/// hyper-rustls' connect error as wasi-http's: the TLS handshake's (an
/// `io::Error` of its own), the server name's, or the TCP connection's (name
/// resolution included; its I/O error is rebuilt with the same kind and
/// message, which is what wasi-http reads).
fn connect_error(e: Box<dyn StdError + Send + Sync>) -> HttpError {
    let e = match e.downcast::<io::Error>() {
        Ok(tls) => return HttpError::Tls(*tls),
        Err(e) => e,
    };
    let e = match e.downcast::<rustls::pki_types::InvalidDnsNameError>() {
        Ok(name) => return HttpError::InvalidDnsNameError(*name),
        Err(e) => e,
    };
    let mut cause: Option<&(dyn StdError + 'static)> = Some(&*e);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            return HttpError::Connect(io::Error::new(io.kind(), io.to_string()));
        }
        cause = c.source();
    }
    HttpError::Connect(io::Error::other(e))
}

/// A connect failure, carried whole through hyper-util's error (which lends
/// its cause only by reference) to [`client_error`].
#[derive(Debug)]
struct ConnectFailed(Mutex<Option<HttpError>>);

impl ConnectFailed {
    fn new(e: HttpError) -> Self {
        Self(Mutex::new(Some(e)))
    }

    fn take(&self) -> Option<HttpError> {
        self.0.lock().ok()?.take()
    }
}

impl std::fmt::Display for ConnectFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.lock().as_deref() {
            Ok(Some(e)) => write!(f, "{e}"),
            _ => f.write_str("connect failed"),
        }
    }
}

impl StdError for ConnectFailed {}

/// Whether a connection has carried no request yet: set by [`Connector`],
/// copied by hyper-util into every answer's extensions, taken by the first.
#[derive(Clone)]
struct FirstUse(Arc<AtomicBool>);

impl FirstUse {
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }
}

/// A connection, with its [`FirstUse`] mark.
struct Conn {
    io: MaybeHttpsStream<TokioIo<TcpStream>>,
    first_use: FirstUse,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.io.connected().extra(self.first_use.clone())
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// An answer's body with the between-bytes timeout, as wasmtime-wasi-http's
/// default sender applies it (its hook leaves that to the sender): the timer
/// starts with the answer, restarts on every frame, and fails a read that
/// waits past it.
struct BetweenBytes {
    incoming: Incoming,
    timer: Pin<Box<tokio::time::Sleep>>,
    between_bytes: Duration,
}

impl Body for BetweenBytes {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Ok(frame))) => {
                let deadline = tokio::time::Instant::now() + this.between_bytes;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                HttpError::HttpResponseTimeout
            } else {
                e.into()
            }))),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use http_body_util::{BodyExt, Empty};
    use hyper::service::service_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// What a test server saw.
    #[derive(Default)]
    struct Seen {
        accepted: AtomicU64,
        requests: AtomicU64,
        closed: AtomicU64,
    }

    impl Seen {
        fn get(&self) -> [u64; 3] {
            [&self.accepted, &self.requests, &self.closed].map(|n| n.load(Ordering::SeqCst))
        }
    }

    /// A loopback HTTP/1.1 server answering "ok" after `delay`.
    async fn server(delay: Duration) -> (String, Arc<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                s.accepted.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let service = service_fn(|_req| {
                        s.requests.fetch_add(1, Ordering::SeqCst);
                        async move {
                            tokio::time::sleep(delay).await;
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(Bytes::from_static(b"ok")),
                            ))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                    s.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (url, seen)
    }

    /// A loopback server that reads each connection's first request and
    /// answers with `answer` (raw bytes), then keeps the connection open for
    /// `hold`, then closes it.
    async fn raw_server(answer: &'static [u8], hold: Duration) -> (String, Arc<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let s = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                s.accepted.fetch_add(1, Ordering::SeqCst);
                let s = s.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    if matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {
                        s.requests.fetch_add(1, Ordering::SeqCst);
                        let _ = stream.write_all(answer).await;
                    }
                    tokio::time::sleep(hold).await;
                    s.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (format!("http://{addr}"), seen)
    }

    fn timeouts(t: Duration) -> Timeouts {
        Timeouts {
            connect: t,
            first_byte: t,
            between_bytes: t,
        }
    }

    /// `GET {url}/v1/events` through the pool: the answer and whether it opened a connection.
    async fn send(
        pool: &ConnectionPool,
        url: &str,
        t: Timeouts,
    ) -> Result<(http::Response<WasiBody>, bool), HttpError> {
        let body = Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        let host = url.split("://").nth(1).unwrap_or_default().to_string();
        let req = http::Request::get(format!("{url}/v1/events"))
            .header(http::header::HOST, host)
            .body(body)
            .unwrap();
        pool.send(req, t).await
    }

    /// As [`send`], reading the answer to its end.
    async fn get(pool: &ConnectionPool, url: &str) -> (String, bool) {
        let (answer, opened) = send(pool, url, timeouts(5 * SECOND)).await.unwrap();
        let bytes = answer.into_body().collect().await.unwrap().to_bytes();
        (String::from_utf8_lossy(&bytes).into_owned(), opened)
    }

    #[tokio::test]
    async fn requests_share_a_connection_until_it_has_been_idle_too_long() {
        let (url, seen) = server(Duration::ZERO).await;
        let pool = ConnectionPool::with_idle_timeout(SECOND, Duration::from_millis(300));
        let mut opened = Vec::new();
        for _ in 0..3 {
            let (text, new) = get(&pool, &url).await;
            assert_eq!(text, "ok");
            opened.push(new);
        }
        assert_eq!(opened, [true, false, false]);
        assert_eq!(seen.get(), [1, 3, 0]);
        // Past the idle limit (and the pool timer's next round) the
        // connection is closed without a new request.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert_eq!(seen.get(), [1, 3, 1]);
        assert!(get(&pool, &url).await.1, "a new connection");
        assert_eq!(seen.get()[0], 2);
    }

    #[tokio::test]
    async fn three_answers_at_once_leave_two_idle_connections() {
        let (url, seen) = server(Duration::from_millis(100)).await;
        let pool = ConnectionPool::new(SECOND);
        let (a, b, c) = tokio::join!(get(&pool, &url), get(&pool, &url), get(&pool, &url));
        assert!(a.1 && b.1 && c.1, "three connections");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(
            seen.get(),
            [3, 3, 1],
            "one closed, {MAX_IDLE_PER_ORIGIN} kept"
        );
        let (d, e) = tokio::join!(get(&pool, &url), get(&pool, &url));
        assert!(!d.1 && !e.1, "both kept ones reused");
        assert_eq!(seen.get()[0], 3);
    }

    #[tokio::test]
    async fn an_answer_dropped_mid_body_does_not_return_its_connection() {
        let (url, seen) = raw_server(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf",
            5 * SECOND,
        )
        .await;
        let pool = ConnectionPool::new(SECOND);
        let (answer, opened) = send(&pool, &url, timeouts(SECOND)).await.unwrap();
        assert!(opened);
        drop(answer);
        let (_, opened) = send(&pool, &url, timeouts(SECOND)).await.unwrap();
        assert!(opened, "a new connection");
        assert_eq!(seen.get()[..2], [2, 2]);
    }

    #[tokio::test]
    async fn a_kept_connection_the_server_closed_is_not_used_and_nothing_is_sent_twice() {
        // Answers without `Connection: close`, then closes 50 ms later (as a
        // server's own idle timeout would).
        let (url, seen) = raw_server(
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Duration::from_millis(50),
        )
        .await;
        let pool = ConnectionPool::new(SECOND);
        assert_eq!(get(&pool, &url).await, ("ok".to_string(), true));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(get(&pool, &url).await, ("ok".to_string(), true));
        assert_eq!(
            seen.get()[..2],
            [2, 2],
            "two connections, each request once"
        );
    }

    #[tokio::test]
    async fn a_late_first_byte_and_a_stalled_body_time_out() {
        let t = Duration::from_millis(200);
        let pool = ConnectionPool::new(SECOND);
        // Reads the request, answers nothing.
        let (url, _) = raw_server(b"", 5 * SECOND).await;
        let started = std::time::Instant::now();
        let e = send(&pool, &url, timeouts(t)).await.unwrap_err();
        assert!(matches!(e, HttpError::ConnectionReadTimeout), "{e:?}");
        assert!(started.elapsed() < SECOND);
        // Half a body, then nothing.
        let (url, _) = raw_server(
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf",
            5 * SECOND,
        )
        .await;
        let (answer, _) = send(&pool, &url, timeouts(t)).await.unwrap();
        let e = answer.into_body().collect().await.unwrap_err();
        assert!(matches!(e, HttpError::ConnectionReadTimeout), "{e:?}");
    }

    #[tokio::test]
    async fn a_tls_handshake_that_never_ends_is_a_connect_timeout() {
        // Accepts TCP, never answers the client hello.
        let (url, seen) = raw_server(b"", 5 * SECOND).await;
        let url = url.replace("http://", "https://");
        let pool = ConnectionPool::new(SECOND);
        let started = std::time::Instant::now();
        let e = send(&pool, &url, timeouts(Duration::from_millis(200)))
            .await
            .unwrap_err();
        assert!(matches!(e, HttpError::ConnectionTimeout), "{e:?}");
        assert!(started.elapsed() < SECOND);
        assert_eq!(seen.get()[0], 1);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let pool = ConnectionPool::new(SECOND);
        let e = send(&pool, &url, timeouts(SECOND)).await.unwrap_err();
        assert!(
            matches!(&e, HttpError::Connect(io) if io.kind() == io::ErrorKind::ConnectionRefused),
            "{e:?}"
        );
    }
}
