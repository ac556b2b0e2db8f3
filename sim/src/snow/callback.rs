//! The business rule that calls the bridge when an incident is resolved, closed or canceled:
//! one signed POST, no retry (ServiceNow's `RESTMessageV2` has none), outcome recorded.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Serialize;
use serde_json::json;
use sha2::Sha256;

use crate::SimError;
use crate::clock::now_secs;

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Where and how one ServiceNow user's (tenant's) business rule calls back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallbackSpec {
    pub url: String,
    /// Base64 HMAC key (the bridge's `callback_key`).
    pub key_b64: String,
    /// Extra headers the rule adds (custom auth, tenant hints...).
    pub headers: Vec<(String, String)>,
    /// Added to the signed timestamp, to exercise the receiver's freshness check.
    pub timestamp_skew_secs: i64,
}

impl CallbackSpec {
    pub fn new(url: impl Into<String>, key_b64: impl Into<String>) -> CallbackSpec {
        CallbackSpec {
            url: url.into(),
            key_b64: key_b64.into(),
            headers: Vec::new(),
            timestamp_skew_secs: 0,
        }
    }

    pub fn with_header(
        mut self,
        name: impl Into<String>,
        value: impl Into<String>,
    ) -> CallbackSpec {
        self.headers.push((name.into(), value.into()));
        self
    }
}

/// What a callback attempt produced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallbackOutcome {
    /// The rule did not fire (no callback configured, or the state did not change).
    NotFired { reason: String },
    /// The receiver answered with this status.
    Delivered { status: u16 },
    /// No answer: connection refused, timeout, bad key...
    Failed { error: String },
}

impl CallbackOutcome {
    /// The receiver's status, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            CallbackOutcome::Delivered { status } => Some(*status),
            _ => None,
        }
    }
}

/// One recorded callback attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CallbackRecord {
    pub sys_id: String,
    pub number: String,
    /// `analyst` (control API) or `api` (a Table API update changed the state).
    pub trigger: String,
    pub url: String,
    /// Headers sent, signature included.
    pub headers: Vec<(String, String)>,
    /// The exact body sent.
    pub body: String,
    pub outcome: CallbackOutcome,
}

/// `v1=<base64(HMAC-SHA256(base64-decode(key_b64), "<timestamp>.<body>"))>`, as in the
/// shared contract.
pub fn sign(key_b64: &str, timestamp: i64, body: &[u8]) -> Result<String, SimError> {
    let key = STANDARD
        .decode(key_b64.trim())
        .map_err(|e| SimError::Invalid(format!("callback key is not valid base64: {e}")))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key)
        .map_err(|e| SimError::Invalid(format!("callback key rejected by HMAC: {e}")))?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1={}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// A callback decided under the lock, sent after it is released.
#[derive(Clone, Debug)]
pub(crate) struct PendingCallback {
    pub spec: CallbackSpec,
    pub sys_id: String,
    pub number: String,
    pub state: String,
    pub correlation_id: String,
    pub close_code: String,
    pub trigger: &'static str,
}

/// Sends one callback, without retry, and describes what happened.
pub(crate) async fn deliver(
    client: &HttpClient,
    pending: PendingCallback,
    timeout: Duration,
) -> CallbackRecord {
    let body = json!({
        "sys_id": pending.sys_id,
        "number": pending.number,
        "state": pending.state,
        "correlation_id": pending.correlation_id,
        "close_code": pending.close_code,
    })
    .to_string();
    let timestamp = now_secs() + pending.spec.timestamp_skew_secs;
    let mut headers = vec![
        ("Content-Type".to_string(), "application/json".to_string()),
        ("X-Bridge-Timestamp".to_string(), timestamp.to_string()),
    ];
    let mut record = CallbackRecord {
        sys_id: pending.sys_id.clone(),
        number: pending.number.clone(),
        trigger: pending.trigger.to_string(),
        url: pending.spec.url.clone(),
        headers: Vec::new(),
        body: body.clone(),
        outcome: CallbackOutcome::NotFired {
            reason: String::new(),
        },
    };
    match sign(&pending.spec.key_b64, timestamp, body.as_bytes()) {
        Ok(signature) => headers.push(("X-Bridge-Signature".to_string(), signature)),
        Err(e) => {
            record.outcome = CallbackOutcome::Failed {
                error: e.to_string(),
            };
            return record;
        }
    }
    headers.extend(pending.spec.headers.iter().cloned());
    record.headers = headers.clone();
    let mut builder = http::Request::post(&pending.spec.url);
    for (name, value) in &headers {
        builder = builder.header(name, value);
    }
    let request = match builder.body(Full::new(Bytes::from(body))) {
        Ok(r) => r,
        Err(e) => {
            record.outcome = CallbackOutcome::Failed {
                error: format!("building callback request to {}: {e}", pending.spec.url),
            };
            return record;
        }
    };
    record.outcome = match tokio::time::timeout(timeout, client.request(request)).await {
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            // Drain the answer so the connection can be reused; its content does not matter.
            let _ = tokio::time::timeout(timeout, response.into_body().collect()).await;
            CallbackOutcome::Delivered { status }
        }
        Ok(Err(e)) => CallbackOutcome::Failed {
            error: format!("POST {}: {e}", pending.spec.url),
        },
        Err(_) => CallbackOutcome::Failed {
            error: format!("POST {}: no answer within {timeout:?}", pending.spec.url),
        },
    };
    record
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // key "secret", message "1700000000.{}"
        let sig = sign("c2VjcmV0", 1_700_000_000, b"{}").unwrap();
        assert_eq!(sig, "v1=uFabeHmf+ePL/w/C1jozorV/MoKr0Hw3rl6OfXml8WM=");
        assert!(sign("not base64!", 1, b"").is_err());
    }
}
