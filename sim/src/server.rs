//! HTTP plumbing shared by every simulated service: listeners, a buffered request, a
//! buffered response that faults can rewrite, and a body that can break mid-stream.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Largest request body the simulators read.
const MAX_REQUEST_BODY: usize = 16 * 1024 * 1024;

/// A fully read request.
#[derive(Debug)]
pub(crate) struct Req {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Req {
    async fn read(req: Request<Incoming>) -> Result<Req, String> {
        let (parts, body) = req.into_parts();
        let body = Limited::new(body, MAX_REQUEST_BODY)
            .collect()
            .await
            .map_err(|e| format!("reading request body: {e}"))?
            .to_bytes();
        Ok(Req {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().map(str::to_string),
            headers: parts.headers,
            body,
        })
    }

    /// Decoded query pairs in order (repeated keys kept).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        self.query
            .as_deref()
            .map(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query_pairs()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// HTTP Basic credentials, if the header is present and well formed.
    pub fn basic_auth(&self) -> Option<(String, String)> {
        let value = self.header(AUTHORIZATION.as_str())?;
        let (scheme, rest) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        let decoded = STANDARD.decode(rest.trim()).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (user, password) = text.split_once(':')?;
        Some((user.to_string(), password.to_string()))
    }

    /// Bearer token, if present.
    pub fn bearer(&self) -> Option<String> {
        let value = self.header(AUTHORIZATION.as_str())?;
        let (scheme, rest) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim().to_string())
    }

    /// The body parsed as JSON; `Ok(None)` when the body is empty.
    pub fn json(&self) -> Result<Option<Value>, serde_json::Error> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(&self.body).map(Some)
    }

    /// Path and query as sent, for redirects and links.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }
}

/// A buffered response, so that faults can rewrite it after the service produced it.
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Reply {
    pub fn json(status: u16, value: &Value) -> Reply {
        Reply {
            status,
            headers: vec![(
                CONTENT_TYPE.to_string(),
                "application/json; charset=utf-8".to_string(),
            )],
            body: Bytes::from(value.to_string()),
        }
    }

    pub fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
        }
    }

    pub fn text(status: u16, content_type: &str, body: impl Into<Bytes>) -> Reply {
        Reply {
            status,
            headers: vec![(CONTENT_TYPE.to_string(), content_type.to_string())],
            body: body.into(),
        }
    }

    pub fn with_header(mut self, name: &str, value: impl ToString) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }
}

/// How a reply's body is put on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    Complete,
    /// Announce the full length, send about half the body, then drop the connection.
    BreakMidBody,
}

/// Response body: complete, or one that sends a first chunk and then fails, which makes hyper
/// close the connection after the headers and part of the body went out.
pub(crate) struct SimBody {
    chunk: Option<Bytes>,
    break_after: Option<Pin<Box<tokio::time::Sleep>>>,
    exact_len: u64,
}

impl SimBody {
    fn complete(body: Bytes) -> SimBody {
        SimBody {
            exact_len: body.len() as u64,
            chunk: Some(body),
            break_after: None,
        }
    }

    fn breaking(first: Bytes) -> SimBody {
        SimBody {
            exact_len: 0,
            chunk: Some(first),
            break_after: Some(Box::pin(tokio::time::sleep(Duration::from_millis(30)))),
        }
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if let Some(chunk) = self.chunk.take() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        match self.break_after.as_mut() {
            None => Poll::Ready(None),
            Some(sleep) => match sleep.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    self.break_after = None;
                    Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "simulated connection drop mid-body",
                    ))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunk.is_none() && self.break_after.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.break_after.is_some() {
            SizeHint::default()
        } else {
            SizeHint::with_exact(self.exact_len)
        }
    }
}

pub(crate) fn into_response(reply: Reply, delivery: Delivery) -> Response<SimBody> {
    let full_len = reply.body.len();
    let body = match delivery {
        Delivery::Complete => SimBody::complete(reply.body),
        Delivery::BreakMidBody => SimBody::breaking(reply.body.slice(..full_len / 2)),
    };
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    for (name, value) in reply.headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(n, v);
        }
    }
    if delivery == Delivery::BreakMidBody {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(full_len));
    }
    response
}

/// What a service handler hands back to the listener loop.
pub(crate) enum Outcome {
    Respond(Reply, Delivery),
    /// Close the connection without any response.
    Hangup,
}

/// Binds a loopback listener (`port` 0 picks a free one).
pub(crate) async fn bind(ip: std::net::IpAddr, port: u16) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(SocketAddr::new(ip, port)).await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

/// Serves HTTP/1.1 (keep-alive) on `listener` until `shutdown` flips, calling
/// `handler` per request and `accepted` per connection.
pub(crate) async fn serve<H, F>(
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
    accepted: impl Fn() + Send + 'static,
    handler: H,
) where
    H: Fn(Req) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Outcome> + Send + 'static,
{
    let mut stop = shutdown.clone();
    loop {
        let stream = tokio::select! {
            next = listener.accept() => match next {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            _ = stop.changed() => return,
        };
        accepted();
        let handler = handler.clone();
        let mut conn_stop = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                async move {
                    let outcome = match Req::read(req).await {
                        Ok(req) => handler(req).await,
                        Err(message) => Outcome::Respond(
                            Reply::text(400, "text/plain", message),
                            Delivery::Complete,
                        ),
                    };
                    match outcome {
                        Outcome::Respond(reply, delivery) => {
                            Ok::<_, io::Error>(into_response(reply, delivery))
                        }
                        Outcome::Hangup => Err(io::Error::new(
                            io::ErrorKind::ConnectionAborted,
                            "simulated connection drop",
                        )),
                    }
                }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = conn_stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}
