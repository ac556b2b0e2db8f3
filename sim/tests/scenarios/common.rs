//! Test helpers: a tiny HTTP client and a callback receiver.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mssp_sim::{Sim, SimConfig};
use serde_json::Value;

pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl Http {
    /// Sends a request; the body is sent as JSON when it is a JSON value.
    pub async fn try_send(
        &self,
        method: &str,
        url: &str,
        auth: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Resp, String> {
        let mut builder = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(url);
        if let Some(auth) = auth {
            builder = builder.header("Authorization", auth);
        }
        let bytes = match body {
            Some(v) => {
                builder = builder.header("Content-Type", "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        self.raw(builder.body(Full::new(bytes)).unwrap()).await
    }

    pub async fn raw(&self, req: Request<Full<Bytes>>) -> Result<Resp, String> {
        let response = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| "timeout".to_string())?
            .map_err(|e| format!("request: {e:?}"))?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e:?}"))?
            .to_bytes();
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    pub async fn send(
        &self,
        method: &str,
        url: &str,
        auth: Option<&str>,
        body: Option<&Value>,
    ) -> Resp {
        self.try_send(method, url, auth, body).await.unwrap()
    }

    pub async fn get(&self, url: &str, auth: &str) -> Resp {
        self.send("GET", url, Some(auth), None).await
    }

    /// Form POST (the XDR token request).
    pub async fn post_form(&self, url: &str, auth: &str, form: &str) -> Resp {
        let req = Request::post(url)
            .header("Authorization", auth)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form.to_string())))
            .unwrap();
        self.raw(req).await.unwrap()
    }
}

/// A simulator with short delays for tests.
pub async fn sim() -> Sim {
    sim_with(SimConfig {
        isolation_delay: Duration::from_millis(150),
        callback_timeout: Duration::from_secs(3),
        ..SimConfig::default()
    })
    .await
}

pub async fn sim_with(config: SimConfig) -> Sim {
    Sim::start(config).await.unwrap()
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A bridge stand-in that records callbacks and answers `status`.
pub struct Receiver {
    pub url: String,
    pub received: Arc<Mutex<Vec<Received>>>,
}

pub async fn receiver(status: u16) -> Receiver {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let store = Arc::clone(&received);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let store = Arc::clone(&store);
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        store.lock().unwrap().push(Received {
                            path: parts.uri.path().to_string(),
                            headers: parts.headers,
                            body,
                        });
                        let mut response = Response::new(Full::new(Bytes::from_static(b"{}")));
                        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Receiver { url, received }
}

/// Polls `check` until it holds (or panics after 3 s).
pub async fn eventually<F: Fn() -> bool>(what: &str, check: F) {
    for _ in 0..300 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}
