//! The `wasi:http/incoming-handler` export: buffers the request (with a size cap),
//! routes it through `api::handle`, writes the JSON answer.

use super::exports::wasi::http::incoming_handler::Guest as IncomingHandler;
use super::wasi::http::types::{
    Fields, IncomingRequest, Method as WasiMethod, OutgoingResponse, ResponseOutparam,
};
use super::{Component, Shell};
use crate::api::{self, ApiRequest, ApiResponse};
use crate::ports::HttpError;

fn method_name(m: &WasiMethod) -> String {
    match m {
        WasiMethod::Get => "GET".into(),
        WasiMethod::Head => "HEAD".into(),
        WasiMethod::Post => "POST".into(),
        WasiMethod::Put => "PUT".into(),
        WasiMethod::Delete => "DELETE".into(),
        WasiMethod::Connect => "CONNECT".into(),
        WasiMethod::Options => "OPTIONS".into(),
        WasiMethod::Trace => "TRACE".into(),
        WasiMethod::Patch => "PATCH".into(),
        WasiMethod::Other(s) => s.clone(),
    }
}

fn respond(out: ResponseOutparam, answer: &ApiResponse) {
    let body = answer.body.to_string().into_bytes();
    let headers = Fields::new();
    // Neither header is forbidden by wasi:http; a host that refuses one still gets the body.
    let _ = headers.append("content-type", b"application/json");
    let _ = headers.append("content-length", body.len().to_string().as_bytes());
    let resp = OutgoingResponse::new(headers);
    let _ = resp.set_status_code(answer.status);
    let Ok(out_body) = resp.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(resp));
    // The client has gone if this fails; there is nobody left to tell.
    let _ = super::http::write_body(out_body, &body);
}

fn handle(request: &IncomingRequest) -> ApiResponse {
    let headers: Vec<(String, String)> = request
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let path = request.path_with_query().unwrap_or_else(|| "/".into());
    let (cfg, access) = super::read_config_and_access();
    let limit = api::body_limit(&path, &headers, &access);
    let declared = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return api::error(413, format!("request body larger than {limit} bytes"));
    }
    let body = match request.consume() {
        Ok(b) => match super::http::read_body(b, limit) {
            Ok(bytes) => bytes,
            Err(HttpError::TooLarge(_)) => {
                return api::error(413, format!("request body larger than {limit} bytes"));
            }
            Err(e) => return api::error(400, format!("reading the request body: {e}")),
        },
        Err(()) => Vec::new(),
    };
    let req = ApiRequest {
        method: method_name(&request.method()),
        path,
        headers,
        body,
    };
    let shell = match &cfg {
        Ok(c) => Shell::open(c),
        Err(_) => Shell::open_default(),
    };
    let mut shell = match shell {
        Ok(s) => s,
        Err(e) => return api::error(500, e.to_string()),
    };
    let mut ports = shell.ports();
    api::handle(&req, &mut ports, &cfg, &access)
}

impl IncomingHandler for Component {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let answer = handle(&request);
        drop(request);
        if let Some(report) = &answer.report {
            super::log_report(report);
        }
        respond(response_out, &answer);
    }
}
