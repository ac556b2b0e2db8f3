//! The signed ServiceNow → bridge callback (contracts.md): its body. The signature is
//! checked by `mssp_contract::access` before this is reached.

use serde_json::Value;

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
mod tests {
    use super::*;

    const BODY: &[u8] = br#"{"sys_id":"0123456789abcdef0123456789abcdef","number":"INC0010001","state":"6","correlation_id":"amp-1-d2","close_code":"Solved (Permanently)"}"#;

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
