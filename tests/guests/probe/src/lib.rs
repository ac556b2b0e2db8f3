//! A test-only component of the bridge world. It does what a test tells it,
//! through its config (`probe_mode`) and HTTP routes, so host tests can check
//! the sandbox from the inside: what a tenant can read, write and reach.
#![cfg(target_arch = "wasm32")]

wit_bindgen::generate!({
    path: "../../../wit",
    world: "mssp:bridge/bridge",
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest as HttpGuest;
use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};
use wasi::keyvalue::{atomics, store};

struct Probe;

fn config(key: &str) -> Option<String> {
    wasi::config::store::get(key).ok().flatten()
}

fn sleep_ms(ms: u64) {
    wasi::clocks::monotonic_clock::subscribe_duration(ms * 1_000_000).block();
}

fn kv_err(e: store::Error) -> String {
    match e {
        store::Error::NoSuchStore => "no-such-store".into(),
        store::Error::AccessDenied => "access-denied".into(),
        store::Error::Other(s) => format!("other: {s}"),
    }
}

/// Misbehaviours selected by `probe_mode`, for sandbox tests.
fn misbehave(mode: &str) {
    match mode {
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "trap" => panic!("probe asked to trap"),
        "keys" => try_key_tricks(),
        "egress" => {
            for url in config("probe_targets").unwrap_or_default().split(',') {
                if !url.is_empty() {
                    let outcome = fetch(url).map(|(status, _)| status.to_string());
                    println!("egress {url}: {outcome:?}");
                }
            }
        }
        "flood" => {
            let line = "x".repeat(1000);
            for _ in 0..100_000 {
                eprintln!("{line}");
                println!("{line}");
            }
        }
        _ => {}
    }
}

/// Every bucket and key trick a hostile tenant might try to reach another
/// tenant's data; each outcome is printed (and must stay inside its own rows).
fn try_key_tricks() {
    let long = "k".repeat(5000);
    for name in [
        "",
        "..",
        "../default",
        "default/..",
        "acme",
        "globex",
        "default\0acme",
        &long,
    ] {
        match store::open(name) {
            Ok(b) => {
                let seen = b.list_keys(None).map(|r| r.keys.len());
                let _ = b.set("planted", b"hostile");
                println!("bucket {:.40?} opened, saw {seen:?} keys", name);
            }
            Err(e) => println!("bucket {:.40?}: {}", name, kv_err(e)),
        }
    }
    if let Ok(b) = store::open("default") {
        for key in [
            "",
            "..",
            "../acme/cursor",
            "acme:cursor",
            "/etc/passwd",
            "\0",
            &long,
        ] {
            let set = b.set(key, b"hostile").map_err(kv_err);
            let got = b.get(key).map_err(kv_err).map(|v| v.map(|v| v.len()));
            println!("key {:.40?}: set {set:?}, get {got:?}", key);
        }
    }
}

impl Guest for Probe {
    fn handle_cron_event(metadata: Metadata) -> Result<(), Error> {
        misbehave(&config("probe_mode").unwrap_or_default());
        let bucket = store::open("default").map_err(|e| Error::Other(kv_err(e)))?;
        let active =
            atomics::increment(&bucket, "active", 1).map_err(|e| Error::Other(kv_err(e)))?;
        if active > 1 {
            bucket
                .set("overlap_seen", b"yes")
                .map_err(|e| Error::Other(kv_err(e)))?;
        }
        if let Some(ms) = config("probe_tick_sleep_ms").and_then(|v| v.parse().ok()) {
            sleep_ms(ms);
        }
        let customer = config("customer_name").unwrap_or_default();
        bucket
            .set("last_run", metadata.timestamp.to_string().as_bytes())
            .map_err(|e| Error::Other(kv_err(e)))?;
        bucket
            .set("customer", customer.as_bytes())
            .map_err(|e| Error::Other(kv_err(e)))?;
        atomics::increment(&bucket, "ticks", 1).map_err(|e| Error::Other(kv_err(e)))?;
        atomics::increment(&bucket, "active", -1).map_err(|e| Error::Other(kv_err(e)))?;
        Ok(())
    }
}

fn query(path: &str, name: &str) -> Option<String> {
    let q = path.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_body(req: &IncomingRequest) -> Vec<u8> {
    let mut out = Vec::new();
    let Ok(body) = req.consume() else { return out };
    let Ok(stream) = body.stream() else {
        return out;
    };
    while let Ok(chunk) = stream.blocking_read(64 * 1024) {
        out.extend_from_slice(&chunk);
    }
    out
}

/// A blocking GET through `wasi:http/outgoing-handler`; the error is the
/// WASI error code's debug text (e.g. `HttpRequestDenied`).
fn fetch(url: &str) -> Result<(u16, usize), String> {
    let (scheme, rest) = url.split_once("://").ok_or("bad url")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let req = OutgoingRequest::new(Fields::new());
    req.set_method(&Method::Get).map_err(|_| "method")?;
    req.set_scheme(Some(&if scheme == "https" {
        Scheme::Https
    } else {
        Scheme::Http
    }))
    .map_err(|_| "scheme")?;
    req.set_authority(Some(authority))
        .map_err(|_| "authority")?;
    req.set_path_with_query(Some(path)).map_err(|_| "path")?;
    let body = req.body().map_err(|_| "body")?;
    OutgoingBody::finish(body, None).map_err(|e| format!("{e:?}"))?;
    let future = wasi::http::outgoing_handler::handle(req, None).map_err(|e| format!("{e:?}"))?;
    future.subscribe().block();
    let resp = future
        .get()
        .ok_or("no response")?
        .map_err(|_| "taken")?
        .map_err(|e| format!("{e:?}"))?;
    let status = resp.status();
    let mut size = 0;
    if let Ok(body) = resp.consume()
        && let Ok(stream) = body.stream()
    {
        loop {
            match stream.blocking_read(64 * 1024) {
                Ok(chunk) => size += chunk.len(),
                Err(wasi::io::streams::StreamError::Closed) => break,
                Err(wasi::io::streams::StreamError::LastOperationFailed(e)) => {
                    return Err(format!("body: {}", e.to_debug_string()));
                }
            }
        }
    }
    Ok((status, size))
}

fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let resp = OutgoingResponse::new(Fields::new());
    let _ = resp.set_status_code(status);
    let Ok(ob) = resp.body() else { return };
    ResponseOutparam::set(out, Ok(resp));
    if let Ok(stream) = ob.write() {
        for chunk in body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                return;
            }
        }
        drop(stream);
    }
    let _ = OutgoingBody::finish(ob, None);
}

fn route(method: &Method, path: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let route = path.split('?').next().unwrap_or("");
    let bucket_name = query(path, "bucket").unwrap_or_else(|| "default".into());
    let key = query(path, "key").unwrap_or_default();
    match (method, route) {
        (Method::Get, "/status") => {
            let b = match store::open("default") {
                Ok(b) => b,
                Err(e) => return (500, kv_err(e).into_bytes()),
            };
            let last = b.get("last_run").ok().flatten().unwrap_or_default();
            let text = format!(
                "customer={} last_run={}",
                config("customer_name").unwrap_or_default(),
                String::from_utf8_lossy(&last)
            );
            (200, text.into_bytes())
        }
        (Method::Get, "/config") => (200, config(&key).unwrap_or_default().into_bytes()),
        (Method::Get, "/kv/get") => match store::open(&bucket_name).and_then(|b| b.get(&key)) {
            Ok(Some(v)) => (200, v),
            Ok(None) => (404, b"absent".to_vec()),
            Err(e) => (403, kv_err(e).into_bytes()),
        },
        (Method::Put, "/kv/set") => {
            match store::open(&bucket_name).and_then(|b| b.set(&key, &body)) {
                Ok(()) => (204, Vec::new()),
                Err(e) => (403, kv_err(e).into_bytes()),
            }
        }
        (Method::Get, "/kv/list") => {
            let b = match store::open(&bucket_name) {
                Ok(b) => b,
                Err(e) => return (403, kv_err(e).into_bytes()),
            };
            let mut keys = Vec::new();
            let mut cursor = None;
            loop {
                match b.list_keys(cursor.as_deref()) {
                    Ok(r) => {
                        keys.extend(r.keys);
                        match r.cursor {
                            Some(c) => cursor = Some(c),
                            None => break,
                        }
                    }
                    Err(e) => return (500, kv_err(e).into_bytes()),
                }
            }
            (200, keys.join("\n").into_bytes())
        }
        (Method::Post, "/kv/cas-race") => {
            // Observe, let a concurrent writer change the key, then swap.
            let b = match store::open("default") {
                Ok(b) => b,
                Err(e) => return (500, kv_err(e).into_bytes()),
            };
            let cas = match atomics::Cas::new(&b, &key) {
                Ok(c) => c,
                Err(e) => return (500, kv_err(e).into_bytes()),
            };
            if b.set(&key, b"concurrent").is_err() {
                return (500, b"set failed".to_vec());
            }
            match atomics::swap(cas, b"mine") {
                Ok(()) => (200, b"swapped".to_vec()),
                Err(atomics::CasError::CasFailed(fresh)) => {
                    let seen = fresh.current().ok().flatten().unwrap_or_default();
                    match atomics::swap(fresh, b"mine") {
                        Ok(()) => (
                            200,
                            [b"cas-failed then swapped after seeing ", &seen[..]].concat(),
                        ),
                        Err(_) => (500, b"second swap failed".to_vec()),
                    }
                }
                Err(atomics::CasError::StoreError(e)) => (500, kv_err(e).into_bytes()),
            }
        }
        (Method::Get, "/fetch") => {
            let url = query(path, "url").unwrap_or_default();
            match fetch(&url) {
                Ok((status, size)) => (200, format!("status={status} bytes={size}").into_bytes()),
                Err(e) => (502, format!("error={e}").into_bytes()),
            }
        }
        (Method::Get, "/big") => {
            let n: usize = query(path, "bytes")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            (200, vec![b'a'; n])
        }
        (Method::Post, "/echo-size") => (200, body.len().to_string().into_bytes()),
        _ => (404, b"no such probe route".to_vec()),
    }
}

impl HttpGuest for Probe {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        misbehave(&config("probe_mode").unwrap_or_default());
        let path = request.path_with_query().unwrap_or_default();
        let method = request.method();
        let body = read_body(&request);
        let (status, body) = route(&method, &path, body);
        respond(response_out, status, &body);
    }
}

export!(Probe);
