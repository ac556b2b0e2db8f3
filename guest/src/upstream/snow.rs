//! ServiceNow Table API, `incident` table.

use base64::Engine as _;
use serde_json::{Value, json};

use super::{CallError, ErrorKind, Reply, Upstream, encode};
use crate::config::SnowAuth;
use crate::incident::SnowRef;
use crate::ports::{Method, Request};
use crate::retry::Service;

const TABLE: &str = "/api/now/table/incident";

/// An incident ServiceNow reports in a closing state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnowClosed {
    pub sys_id: String,
    pub number: String,
    pub state: String,
    pub close_code: Option<String>,
    pub correlation_id: Option<String>,
}

/// A field that may be a plain value or a reference `{"link":…,"value":…}`.
pub fn field(record: &Value, name: &str) -> Option<String> {
    let v = record.get(name)?;
    let s = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        Value::Object(_) => v.get("value")?.as_str()?.trim().to_string(),
        _ => return None,
    };
    (!s.is_empty()).then_some(s)
}

fn snow_ref(record: &Value) -> Option<SnowRef> {
    Some(SnowRef {
        sys_id: field(record, "sys_id")?,
        number: field(record, "number").unwrap_or_default(),
    })
}

impl Upstream<'_, '_> {
    fn snow_request(&self, method: Method, path_and_query: &str) -> Request {
        let auth = match &self.cfg.snow_auth {
            SnowAuth::Bearer(t) => format!("Bearer {}", t.expose()),
            SnowAuth::Basic { user, password } => format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{user}:{}", password.expose()))
            ),
        };
        Request::new(
            method,
            format!("{}{path_and_query}", self.cfg.snow_base_url),
        )
        .header("authorization", auth)
    }

    fn snow_invalid(&self, req: &Request, detail: &str) -> CallError {
        let mut e = self.error(Service::Snow, req, ErrorKind::Invalid, detail.into());
        e.maybe_sent = true;
        e
    }

    fn snow_query(
        &mut self,
        query: &str,
        fields: &str,
        limit: usize,
    ) -> Result<Vec<Value>, CallError> {
        let req = self.snow_request(
            Method::Get,
            &format!(
                "{TABLE}?sysparm_query={}&sysparm_fields={fields}&sysparm_limit={limit}",
                encode(query)
            ),
        );
        let reply: Reply = self.send(Service::Snow, &req, true)?;
        match reply.json.get("result") {
            Some(Value::Array(items)) => Ok(items.clone()),
            _ => Err(self.snow_invalid(&req, "query answer has no \"result\" list")),
        }
    }

    /// `POST /api/now/table/incident` (one attempt).
    pub fn snow_create(&mut self, body: &Value) -> Result<SnowRef, CallError> {
        let req = self
            .snow_request(
                Method::Post,
                &format!("{TABLE}?sysparm_fields=sys_id,number"),
            )
            .json(body);
        let reply = self.send_once(Service::Snow, &req, true)?;
        reply
            .json
            .get("result")
            .and_then(snow_ref)
            .ok_or_else(|| self.snow_invalid(&req, "create answer has no result.sys_id"))
    }

    /// `GET …?sysparm_query=correlation_id=<key>`: the incident already carrying our key.
    pub fn snow_find(&mut self, key: &str) -> Result<Option<SnowRef>, CallError> {
        let found = self.snow_query(&format!("correlation_id={key}"), "sys_id,number,state", 1)?;
        Ok(found.iter().find_map(snow_ref))
    }

    /// `PATCH …/{sys_id}` `{"work_notes": …}`: appends a journal entry.
    pub fn snow_work_note(&mut self, sys_id: &str, note: &str) -> Result<(), CallError> {
        let req = self
            .snow_request(
                Method::Patch,
                &format!("{TABLE}/{}?sysparm_fields=sys_id", encode(sys_id)),
            )
            .json(&json!({ "work_notes": note }));
        self.send(Service::Snow, &req, false).map(|_| ())
    }

    /// One query for many incidents: which of them are in a closing state.
    pub fn snow_closed_among(
        &mut self,
        sys_ids: &[String],
        close_states: &[String],
    ) -> Result<Vec<SnowClosed>, CallError> {
        let query = format!(
            "sys_idIN{}^stateIN{}",
            sys_ids.join(","),
            close_states.join(",")
        );
        let found = self.snow_query(
            &query,
            "sys_id,number,state,close_code,correlation_id",
            sys_ids.len(),
        )?;
        Ok(found
            .iter()
            .filter_map(|r| {
                Some(SnowClosed {
                    sys_id: field(r, "sys_id")?,
                    number: field(r, "number").unwrap_or_default(),
                    state: field(r, "state")?,
                    close_code: field(r, "close_code"),
                    correlation_id: field(r, "correlation_id"),
                })
            })
            .filter(|c| close_states.contains(&c.state))
            .collect())
    }
}
