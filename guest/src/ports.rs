//! The bridge's only view of the outside world: four narrow traits.
//!
//! The WASI shell implements them over wasi:http, wasi:keyvalue and wasi:clocks; the
//! tests implement them with scripted fakes. Everything else in the crate is plain Rust.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
        }
    }
}

/// One outgoing HTTP request, fully buffered.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Request {
            method,
            url: url.into(),
            headers: vec![("accept".into(), "application/json".into())],
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    pub fn json(self, body: &serde_json::Value) -> Self {
        let mut req = self.header("content-type", "application/json");
        req.body = body.to_string().into_bytes();
        req
    }

    pub fn form(self, body: &str) -> Self {
        let mut req = self.header("content-type", "application/x-www-form-urlencoded");
        req.body = body.as_bytes().to_vec();
        req
    }

    /// `GET /v1/events` — method and path without host or query, for messages.
    pub fn describe(&self) -> String {
        let after_scheme = self.url.split_once("://").map_or(&*self.url, |(_, r)| r);
        let path = after_scheme.find('/').map_or("/", |i| &after_scheme[i..]);
        let path = path.split('?').next().unwrap_or(path);
        format!("{} {}", self.method.as_str(), path)
    }
}

/// One HTTP response, body read fully (up to the shell's size cap).
#[derive(Debug, Clone, Default)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The first header of that name, matched case-insensitively, trimmed.
pub fn find_header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// Why a request got no HTTP response at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// Connect, first-byte or between-bytes timeout.
    Timeout(String),
    /// DNS failure, refused, reset or dropped connection, truncated body.
    Connection(String),
    /// The host refused the destination (outbound allowlist).
    Denied(String),
    /// The response body exceeded the size cap.
    TooLarge(String),
    /// Anything else the transport reported.
    Other(String),
}

impl HttpError {
    /// Worth another attempt (the request may or may not have reached the server).
    pub fn is_transient(&self) -> bool {
        matches!(self, HttpError::Timeout(_) | HttpError::Connection(_))
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Timeout(m) => write!(f, "timed out: {m}"),
            HttpError::Connection(m) => write!(f, "connection failed: {m}"),
            HttpError::Denied(m) => write!(f, "denied by the host's outbound policy: {m}"),
            HttpError::TooLarge(m) => write!(f, "response too large: {m}"),
            HttpError::Other(m) => write!(f, "transport error: {m}"),
        }
    }
}

pub trait Http {
    fn send(&mut self, req: &Request) -> Result<Response, HttpError>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvError(pub String);

impl fmt::Display for KvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key-value store: {}", self.0)
    }
}

pub trait Kv {
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), KvError>;
    fn delete(&mut self, key: &str) -> Result<(), KvError>;
    /// Every key starting with `prefix`.
    fn list_keys(&mut self, prefix: &str) -> Result<Vec<String>, KvError>;
    /// Writes `new` only if the current value is `expected` (`None` = absent).
    /// `Ok(false)` when someone else changed it first.
    fn compare_and_swap(
        &mut self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, KvError>;
}

pub trait Clock {
    /// Wall-clock time, Unix milliseconds.
    fn now_ms(&self) -> i64;
    /// Monotonic milliseconds, for budgets and backoff.
    fn monotonic_ms(&self) -> u64;
    /// Monotonic nanoseconds, for measurements (`/v1/bench/pipeline`).
    fn monotonic_ns(&self) -> u64 {
        self.monotonic_ms().saturating_mul(1_000_000)
    }
    fn sleep_ms(&mut self, ms: u64);
    fn random_u64(&mut self) -> u64;
}

/// The three capabilities one invocation works with.
pub struct Ports<'a> {
    pub http: &'a mut dyn Http,
    pub kv: &'a mut dyn Kv,
    pub clock: &'a mut dyn Clock,
}
