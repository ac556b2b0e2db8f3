//! Upstream connections of one tenant, kept open between requests.
//!
//! wasmtime-wasi-http's default sender opens a new TCP connection — and for
//! `https` a new TLS session, with a root store built anew — for every
//! request. A tick calls each service several times (the events page, the
//! computer, the isolation probe and request…), and against the real APIs
//! every handshake costs round trips and CPU. [`ConnectionPool`] keeps a
//! tenant's HTTP/1.1 connections per origin and gives a finished one to the
//! next request to that origin:
//! - a connection goes back to the pool only after its answer was read to
//!   the end, and is taken only when hyper says it can carry another request
//!   (a `Connection: close`, an error, a timeout or a body the guest dropped
//!   closes it);
//! - it is used again only within [`IDLE_TIMEOUT`] (below the 60 s keep-alive
//!   of common servers and load balancers), at most [`MAX_IDLE_PER_ORIGIN`]
//!   are kept per origin;
//! - a pooled connection the server closed meanwhile is noticed before the
//!   request is written (hyper hands the request back) and the request goes
//!   out on a new connection: nothing is sent twice by the pool;
//! - pools are per tenant: no connection is shared between customers.
//!
//! Timeouts are those of the default sender: connect (TCP, TLS and HTTP
//! handshake), first byte of the answer, and between two body frames.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Scheme;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// How long an idle connection is used again.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Idle connections kept per origin.
pub const MAX_IDLE_PER_ORIGIN: usize = 2;
/// How long a pooled connection may take to become ready for its next
/// request (it is pooled once its answer was read to the end; the connection
/// task only has to notice that).
const READY_WAIT: Duration = Duration::from_secs(1);
/// A connection's read buffer, fixed: hyper's adaptive buffer grows to
/// ~400 KiB on large answers (an events page) and a kept connection would
/// hold that while idle.
const READ_BUFFER: usize = 16 * 1024;

/// The timeouts of one request.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub first_byte: Duration,
    pub between_bytes: Duration,
}

/// TLS or not, host, port.
type Key = (bool, String, u16);

struct Idle {
    sender: SendRequest<WasiBody>,
    since: Instant,
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

/// One tenant's idle upstream connections, by origin.
pub struct ConnectionPool {
    idle: Mutex<HashMap<Key, Vec<Idle>>>,
    idle_timeout: Duration,
    /// An eviction timer is pending (at most one per pool).
    sweeping: AtomicBool,
}

impl Default for ConnectionPool {
    fn default() -> Self {
        Self {
            idle: Mutex::default(),
            idle_timeout: IDLE_TIMEOUT,
            sweeping: AtomicBool::new(false),
        }
    }
}

impl ConnectionPool {
    /// Sends `request` (absolute URI, `Host` header set) on an idle connection
    /// to its origin, or on a new one. Returns the answer and whether a new
    /// connection was opened for it.
    pub async fn send(
        self: &Arc<Self>,
        request: http::Request<WasiBody>,
        timeouts: Timeouts,
    ) -> Result<(http::Response<WasiBody>, bool), HttpError> {
        let key = key_of(request.uri())?;
        let mut request = origin_form(request)?;
        while let Some(mut sender) = self.take(&key) {
            if !matches!(
                tokio::time::timeout(READY_WAIT, sender.ready()).await,
                Ok(Ok(()))
            ) {
                continue;
            }
            match tokio::time::timeout(timeouts.first_byte, sender.try_send_request(request)).await
            {
                Err(_) => return Err(HttpError::ConnectionReadTimeout),
                Ok(Ok(answer)) => {
                    return Ok((self.answer(answer, sender, key, timeouts), false));
                }
                Ok(Err(mut e)) => match e.take_message() {
                    // Closed before anything was written: try the next one.
                    Some(unsent) => request = unsent,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let mut sender = connect(&key, timeouts.connect).await?;
        let answer = tokio::time::timeout(timeouts.first_byte, sender.send_request(request))
            .await
            .map_err(|_| HttpError::ConnectionReadTimeout)??;
        Ok((self.answer(answer, sender, key, timeouts), true))
    }

    /// Idle connections kept now (all origins).
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .map(|m| m.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    fn take(&self, key: &Key) -> Option<SendRequest<WasiBody>> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(key)?;
        while let Some(c) = list.pop() {
            if c.since.elapsed() < self.idle_timeout && !c.sender.is_closed() {
                return Some(c.sender);
            }
        }
        None
    }

    fn put(self: &Arc<Self>, key: Key, sender: SendRequest<WasiBody>) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        let list = idle.entry(key).or_default();
        list.push(Idle {
            sender,
            since: Instant::now(),
        });
        if list.len() > MAX_IDLE_PER_ORIGIN {
            list.remove(0);
        }
        drop(idle);
        self.sweep_after(self.idle_timeout);
    }

    /// Closes idle connections when they expire, not when this tenant next
    /// calls out (a tenant ticking less often than the idle limit holds no
    /// socket between ticks): one timer per pool, re-armed for the next
    /// expiry while connections are kept.
    fn sweep_after(self: &Arc<Self>, after: Duration) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(pool) = pool.upgrade() {
                pool.sweeping.store(false, Ordering::Release);
                if let Some(next) = pool.evict_expired() {
                    pool.sweep_after(next);
                }
            }
        });
    }

    /// Drops (closes) the idle connections past the idle limit or closed;
    /// returns how long until the oldest one left expires.
    fn evict_expired(&self) -> Option<Duration> {
        let mut idle = self.idle.lock().ok()?;
        idle.retain(|_, list| {
            list.retain(|c| c.since.elapsed() < self.idle_timeout && !c.sender.is_closed());
            !list.is_empty()
        });
        idle.values()
            .flatten()
            .map(|c| self.idle_timeout.saturating_sub(c.since.elapsed()))
            .min()
    }

    fn answer(
        self: &Arc<Self>,
        answer: http::Response<Incoming>,
        sender: SendRequest<WasiBody>,
        key: Key,
        timeouts: Timeouts,
    ) -> http::Response<WasiBody> {
        use http_body_util::BodyExt;
        let (parts, incoming) = answer.into_parts();
        let ended = incoming.is_end_stream();
        let mut body = PooledBody {
            incoming,
            timer: Box::pin(tokio::time::sleep(timeouts.between_bytes)),
            between_bytes: timeouts.between_bytes,
            give_back: Some((sender, self.clone(), key)),
        };
        if ended {
            body.release();
        }
        http::Response::from_parts(parts, body.boxed_unsync())
    }
}

/// `(tls, host, port)` of an absolute `http`/`https` URI.
fn key_of(uri: &http::Uri) -> Result<Key, HttpError> {
    let tls = match uri.scheme() {
        Some(s) if *s == Scheme::HTTPS => true,
        Some(s) if *s == Scheme::HTTP => false,
        _ => return Err(HttpError::HttpRequestUriInvalid),
    };
    let host = uri
        .host()
        .ok_or(HttpError::HttpRequestUriInvalid)?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Ok((tls, host, port))
}

/// The request with its URI in origin form (`/path?query`), as HTTP/1.1
/// sends it to the server itself (the `Host` header carries the authority).
fn origin_form(mut request: http::Request<WasiBody>) -> Result<http::Request<WasiBody>, HttpError> {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    Ok(request)
}

async fn connect(key: &Key, timeout: Duration) -> Result<SendRequest<WasiBody>, HttpError> {
    let (tls, host, port) = key;
    let open = async {
        let tcp = TcpStream::connect((host.as_str(), *port))
            .await
            .map_err(HttpError::Connect)?;
        let _ = tcp.set_nodelay(true);
        if !*tls {
            return handshake(tcp).await;
        }
        let config = tls_config().map_err(|e| HttpError::Tls(std::io::Error::other(e)))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(HttpError::InvalidDnsNameError)?;
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(HttpError::Tls)?;
        handshake(stream).await
    };
    tokio::time::timeout(timeout, open)
        .await
        .map_err(|_| HttpError::ConnectionTimeout)?
}

async fn handshake<S>(io: S) -> Result<SendRequest<WasiBody>, HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .read_buf_exact_size(Some(READ_BUFFER))
        .handshake(TokioIo::new(io))
        .await?;
    // The connection lives as long as its sender (in use or in the pool).
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("upstream connection ended: {e}");
        }
    });
    Ok(sender)
}

/// An answer's body: the between-bytes timeout, and the connection handed
/// back to the pool once the body has been read to its end.
struct PooledBody {
    incoming: Incoming,
    timer: Pin<Box<tokio::time::Sleep>>,
    between_bytes: Duration,
    give_back: Option<(SendRequest<WasiBody>, Arc<ConnectionPool>, Key)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((sender, pool, key)) = self.give_back.take() {
            pool.put(key, sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(None) => {
                this.release();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                let deadline = tokio::time::Instant::now() + this.between_bytes;
                this.timer.as_mut().reset(deadline);
                if this.incoming.is_end_stream() {
                    this.release();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.give_back = None;
                Poll::Ready(Some(Err(if e.is_timeout() {
                    HttpError::HttpResponseTimeout
                } else {
                    e.into()
                })))
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.give_back = None;
                    Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
                }
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

    use super::*;

    /// A loopback HTTP/1.1 server answering "ok"; counts accepted connections.
    async fn server() -> (String, Arc<AtomicU64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let service = service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"ok")),
                        ))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (url, accepted)
    }

    /// `GET {url}{path}` through the pool: the answer and whether it opened a connection.
    async fn send(
        pool: &Arc<ConnectionPool>,
        url: &str,
        path: &str,
    ) -> (http::Response<WasiBody>, bool) {
        let body = Empty::<Bytes>::new()
            .map_err(|never| match never {})
            .boxed_unsync();
        let host = url.trim_start_matches("http://").to_string();
        let req = http::Request::get(format!("{url}{path}"))
            .header(http::header::HOST, host)
            .body(body)
            .unwrap();
        let t = Duration::from_secs(5);
        let timeouts = Timeouts {
            connect: t,
            first_byte: t,
            between_bytes: t,
        };
        pool.send(req, timeouts).await.unwrap()
    }

    /// As [`send`], reading the answer to its end.
    async fn get(pool: &Arc<ConnectionPool>, url: &str) -> (String, bool) {
        let (answer, opened) = send(pool, url, "/v1/events").await;
        let bytes = answer.into_body().collect().await.unwrap().to_bytes();
        (String::from_utf8_lossy(&bytes).into_owned(), opened)
    }

    #[tokio::test]
    async fn requests_share_a_connection_until_it_has_been_idle_too_long() {
        let (url, accepted) = server().await;
        let pool = Arc::new(ConnectionPool {
            idle_timeout: Duration::from_millis(300),
            ..ConnectionPool::default()
        });
        let mut opened = Vec::new();
        for _ in 0..3 {
            let (text, new) = get(&pool, &url).await;
            assert_eq!(text, "ok");
            opened.push(new);
        }
        assert_eq!(opened, [true, false, false]);
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
        // Past the idle limit the connection is closed without a new request.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(pool.idle_count(), 0);
        assert!(get(&pool, &url).await.1, "a new connection");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_answer_not_read_to_its_end_does_not_return_its_connection() {
        let (url, accepted) = server().await;
        let pool = Arc::new(ConnectionPool::default());
        let (answer, _) = send(&pool, &url, "/").await;
        drop(answer);
        assert_eq!(pool.idle_count(), 0);
        let _ = get(&pool, &url).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }
}
