//! The signed ServiceNow → bridge callback (contracts.md): verification and parsing.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// Largest accepted clock difference between ServiceNow and the bridge.
pub const MAX_SKEW_SECONDS: i64 = 300;

/// Checks `X-Bridge-Signature: v1=<base64 HMAC-SHA256(key, "<timestamp>.<body>")>` and
/// the timestamp window. The MAC comparison is constant-time.
pub fn verify(
    keys: &[&[u8]],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<(), String> {
    let ts_raw = timestamp.ok_or("missing X-Bridge-Timestamp header")?.trim();
    let ts: i64 = ts_raw
        .parse()
        .map_err(|_| "X-Bridge-Timestamp is not Unix seconds".to_string())?;
    // abs_diff: an extreme timestamp must not overflow past the window.
    if now_secs.abs_diff(ts) > MAX_SKEW_SECONDS.unsigned_abs() {
        return Err(format!(
            "X-Bridge-Timestamp is more than {MAX_SKEW_SECONDS} s away from the bridge's clock"
        ));
    }
    let sig = signature.ok_or("missing X-Bridge-Signature header")?.trim();
    let b64 = sig
        .strip_prefix("v1=")
        .ok_or("X-Bridge-Signature must start with v1=")?;
    let provided = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| "X-Bridge-Signature is not base64".to_string())?;
    // Any of the accepted keys (the current one; the previous one during a rotation).
    for key in keys {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(key).map_err(|_| "callback key unusable".to_string())?;
        mac.update(ts_raw.as_bytes());
        mac.update(b".");
        mac.update(body);
        if mac.verify_slice(&provided).is_ok() {
            return Ok(());
        }
    }
    Err("signature does not match".to_string())
}

/// The body ServiceNow sends when an incident changes state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnowEvent {
    pub sys_id: String,
    pub number: Option<String>,
    pub state: String,
    pub correlation_id: Option<String>,
    pub close_code: Option<String>,
}

fn text(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

pub fn parse(body: &[u8]) -> Result<SnowEvent, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("body is not JSON: {e}"))?;
    if !v.is_object() {
        return Err("body must be a JSON object".into());
    }
    let sys_id = text(&v, "sys_id").ok_or("body has no sys_id")?;
    if sys_id.len() > 64 || !sys_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("sys_id must be alphanumeric (32 hex characters)".into());
    }
    let state = text(&v, "state").ok_or("body has no state")?;
    let correlation_id = text(&v, "correlation_id");
    if let Some(c) = &correlation_id
        && (c.len() > 128
            || !c
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
    {
        return Err("correlation_id is not a bridge incident key".into());
    }
    Ok(SnowEvent {
        sys_id,
        number: text(&v, "number"),
        state,
        correlation_id,
        close_code: text(&v, "close_code"),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn sign(key: &[u8], ts: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
        mac.update(format!("{ts}.").as_bytes());
        mac.update(body);
        format!(
            "v1={}",
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
        )
    }

    const KEY: &[u8] = b"secret-key-12345";
    const BODY: &[u8] = br#"{"sys_id":"0123456789abcdef0123456789abcdef","number":"INC0010001","state":"6","correlation_id":"amp-1-d2","close_code":"Solved (Permanently)"}"#;

    #[test]
    fn accepts_a_good_signature() {
        let sig = sign(KEY, "1000", BODY);
        assert_eq!(verify(&[KEY], Some("1000"), Some(&sig), BODY, 1000), Ok(()));
        assert_eq!(verify(&[KEY], Some("1000"), Some(&sig), BODY, 1300), Ok(()));
    }

    #[test]
    fn during_a_rotation_either_key_is_accepted_and_no_other() {
        let old: &[u8] = b"previous-key-0987";
        let sig_old = sign(old, "1000", BODY);
        let sig_new = sign(KEY, "1000", BODY);
        assert_eq!(
            verify(&[KEY, old], Some("1000"), Some(&sig_old), BODY, 1000),
            Ok(())
        );
        assert_eq!(
            verify(&[KEY, old], Some("1000"), Some(&sig_new), BODY, 1000),
            Ok(())
        );
        assert!(verify(&[KEY], Some("1000"), Some(&sig_old), BODY, 1000).is_err());
        let sig_other = sign(b"somebody-else", "1000", BODY);
        assert!(verify(&[KEY, old], Some("1000"), Some(&sig_other), BODY, 1000).is_err());
    }

    #[test]
    fn rejects_wrong_key_stale_tampered_and_missing() {
        let sig = sign(KEY, "1000", BODY);
        assert!(verify(&[b"other-key"], Some("1000"), Some(&sig), BODY, 1000).is_err());
        assert!(
            verify(&[KEY], Some("1000"), Some(&sig), BODY, 1301)
                .unwrap_err()
                .contains("300")
        );
        assert!(verify(&[KEY], Some("1000"), Some(&sig), BODY, 699).is_err());
        let mut tampered = BODY.to_vec();
        tampered[20] ^= 1;
        assert!(verify(&[KEY], Some("1000"), Some(&sig), &tampered, 1000).is_err());
        // The signature covers the timestamp: a fresh timestamp on an old signature fails.
        assert!(verify(&[KEY], Some("1200"), Some(&sig), BODY, 1200).is_err());
        assert!(verify(&[KEY], None, Some(&sig), BODY, 1000).is_err());
        assert!(verify(&[KEY], Some("1000"), None, BODY, 1000).is_err());
        assert!(verify(&[KEY], Some("1000"), Some(&sig[3..]), BODY, 1000).is_err());
        assert!(verify(&[KEY], Some("1000"), Some("v1=***"), BODY, 1000).is_err());
        assert!(verify(&[KEY], Some("soon"), Some(&sig), BODY, 1000).is_err());
    }

    #[test]
    fn extreme_timestamps_are_stale_not_an_overflow() {
        // Found by the `callback` fuzz target (fuzz/regressions/callback/ts-overflow).
        let now = 1_700_000_000;
        for ts in [i64::MIN, i64::MAX, now + i64::MIN] {
            let t = ts.to_string();
            let sig = sign(KEY, &t, BODY);
            let e = verify(&[KEY], Some(&t), Some(&sig), BODY, now).unwrap_err();
            assert!(e.contains("300"), "{e}");
        }
    }

    #[test]
    fn parses_the_contract_body_and_refuses_malformed_ones() {
        let e = parse(BODY).unwrap();
        assert_eq!(e.sys_id, "0123456789abcdef0123456789abcdef");
        assert_eq!(e.state, "6");
        assert_eq!(e.correlation_id.as_deref(), Some("amp-1-d2"));
        assert_eq!(parse(br#"{"sys_id":"abc","state":7}"#).unwrap().state, "7");
        for bad in [
            &b"not json"[..],
            b"[]",
            br#"{"state":"6"}"#,
            br#"{"sys_id":"a b","state":"6"}"#,
            br#"{"sys_id":"abc"}"#,
            br#"{"sys_id":"abc","state":"6","correlation_id":"../x"}"#,
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
