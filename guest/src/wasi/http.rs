//! A small blocking HTTP client over wasi:http/outgoing-handler.

use super::wasi::http::outgoing_handler;
use super::wasi::http::types::{
    ErrorCode, Fields, IncomingBody, Method as WasiMethod, OutgoingBody, OutgoingRequest,
    RequestOptions, Scheme,
};
use super::wasi::io::streams::StreamError;
use crate::ports::{Http, HttpError, Method, Request, Response};

/// Largest upstream response body read.
const MAX_RESPONSE: usize = 8 * 1024 * 1024;
/// wasi:io output streams accept at most 4096 bytes per blocking write.
const WRITE_CHUNK: usize = 4096;
const READ_CHUNK: u64 = 64 * 1024;

pub struct WasiHttp {
    timeout_ns: u64,
}

impl WasiHttp {
    pub fn new(timeout_ms: u64) -> Self {
        WasiHttp {
            timeout_ns: timeout_ms.saturating_mul(1_000_000),
        }
    }
}

fn map_error(e: &ErrorCode) -> HttpError {
    let text = format!("{e:?}");
    match e {
        ErrorCode::ConnectionTimeout
        | ErrorCode::ConnectionReadTimeout
        | ErrorCode::ConnectionWriteTimeout
        | ErrorCode::HttpResponseTimeout
        | ErrorCode::DnsTimeout => HttpError::Timeout(text),
        ErrorCode::HttpRequestDenied => {
            HttpError::Denied("the host refused this destination (HttpRequestDenied)".into())
        }
        ErrorCode::DestinationIpProhibited => {
            HttpError::Denied("the host refused this address (DestinationIpProhibited)".into())
        }
        ErrorCode::DnsError(_)
        | ErrorCode::DestinationNotFound
        | ErrorCode::DestinationUnavailable
        | ErrorCode::DestinationIpUnroutable
        | ErrorCode::ConnectionRefused
        | ErrorCode::ConnectionTerminated
        | ErrorCode::ConnectionLimitReached
        | ErrorCode::HttpResponseIncomplete
        | ErrorCode::HttpProtocolError => HttpError::Connection(text),
        _ => HttpError::Other(text),
    }
}

/// Splits `http(s)://authority/path?query`.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), HttpError> {
    let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
        (Scheme::Https, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (Scheme::Http, r)
    } else {
        return Err(HttpError::Other(format!("unsupported URL scheme in {url}")));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(HttpError::Other(format!("URL without host: {url}")));
    }
    Ok((scheme, authority, path))
}

fn wasi_method(m: Method) -> WasiMethod {
    match m {
        Method::Get => WasiMethod::Get,
        Method::Post => WasiMethod::Post,
        Method::Put => WasiMethod::Put,
        Method::Patch => WasiMethod::Patch,
        Method::Delete => WasiMethod::Delete,
        Method::Options => WasiMethod::Options,
    }
}

/// Reads a whole incoming body, refusing more than `cap` bytes.
pub fn read_body(body: IncomingBody, cap: usize) -> Result<Vec<u8>, HttpError> {
    let stream = body
        .stream()
        .map_err(|()| HttpError::Other("response body already taken".into()))?;
    let mut out = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => {
                out.extend_from_slice(&chunk);
                if out.len() > cap {
                    return Err(HttpError::TooLarge(format!("more than {cap} bytes")));
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(HttpError::Connection(format!(
                    "body read failed: {}",
                    e.to_debug_string()
                )));
            }
        }
    }
    drop(stream);
    // Trailers are not used; finishing only releases the body.
    let _ = IncomingBody::finish(body);
    Ok(out)
}

/// Writes a whole outgoing body in chunks and finishes it.
pub fn write_body(body: OutgoingBody, bytes: &[u8]) -> Result<(), String> {
    {
        let stream = body
            .write()
            .map_err(|()| "body stream unavailable".to_string())?;
        for chunk in bytes.chunks(WRITE_CHUNK) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| format!("writing body: {e:?}"))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(|e| format!("finishing body: {e:?}"))
}

impl Http for WasiHttp {
    fn send(&mut self, req: &Request) -> Result<Response, HttpError> {
        let (scheme, authority, path) = split_url(&req.url)?;
        let mut entries: Vec<(String, Vec<u8>)> = req
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.as_bytes().to_vec()))
            .collect();
        if !req.body.is_empty() {
            // A known length instead of chunked encoding: some gateways refuse chunked bodies.
            entries.push((
                "content-length".into(),
                req.body.len().to_string().into_bytes(),
            ));
        }
        let headers = Fields::from_list(&entries)
            .map_err(|e| HttpError::Other(format!("invalid request header: {e:?}")))?;
        let out = OutgoingRequest::new(headers);
        let bad = |what: &str| HttpError::Other(format!("invalid request {what}"));
        out.set_method(&wasi_method(req.method))
            .map_err(|()| bad("method"))?;
        out.set_scheme(Some(&scheme)).map_err(|()| bad("scheme"))?;
        out.set_authority(Some(authority))
            .map_err(|()| bad("authority"))?;
        out.set_path_with_query(Some(path))
            .map_err(|()| bad("path"))?;
        let body = out.body().map_err(|()| bad("body"))?;
        let options = RequestOptions::new();
        let timeout = Some(self.timeout_ns);
        // A host that does not support a timeout keeps its own; that is fine.
        let _ = options.set_connect_timeout(timeout);
        let _ = options.set_first_byte_timeout(timeout);
        let _ = options.set_between_bytes_timeout(timeout);
        let future = outgoing_handler::handle(out, Some(options)).map_err(|e| map_error(&e))?;
        write_body(body, &req.body).map_err(HttpError::Connection)?;
        future.subscribe().block();
        let incoming = match future.get() {
            Some(Ok(Ok(resp))) => resp,
            Some(Ok(Err(e))) => return Err(map_error(&e)),
            Some(Err(())) => return Err(HttpError::Other("response already taken".into())),
            None => return Err(HttpError::Other("response not ready after waiting".into())),
        };
        let status = incoming.status();
        let headers = incoming
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let body = incoming
            .consume()
            .map_err(|()| HttpError::Other("response body unavailable".into()))?;
        let body = read_body(body, MAX_RESPONSE)?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}
