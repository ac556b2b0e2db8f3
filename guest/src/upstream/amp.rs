//! Cisco Secure Endpoint: events, event types, computers, groups, isolation.

use base64::Engine as _;
use mssp_contract::civil;
use serde_json::{Value, json};

use super::{CallError, ErrorKind, Reply, Upstream, encode};
use crate::event::{self, EventPage};
use crate::ports::{Method, Request};
use crate::retry::Service;

/// The events API pages by 500 at most.
pub const PAGE_LIMIT: u64 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsolationSupport {
    pub can_start: bool,
    pub can_stop: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    /// `not_isolated | pending_start | isolated | pending_stop`.
    pub status: String,
    pub unlock_code: Option<String>,
}

impl Upstream<'_, '_> {
    fn amp_request(&self, method: Method, path_and_query: &str) -> Request {
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            self.cfg.amp_client_id,
            self.cfg.amp_api_key.expose()
        ));
        Request::new(method, format!("{}{path_and_query}", self.cfg.amp_base_url))
            .header("authorization", format!("Basic {basic}"))
    }

    fn amp(&mut self, req: &Request) -> Result<Reply, CallError> {
        self.send(Service::Amp, req, true)
    }

    fn invalid(&self, req: &Request, detail: String) -> CallError {
        self.error(Service::Amp, req, ErrorKind::Invalid, detail)
    }

    /// One page of `GET /v1/events` newer than `start` (Unix seconds): newest first,
    /// `limit` items from `offset`. The caller pages by offset (see `poll`).
    pub fn amp_events_page(
        &mut self,
        start: i64,
        event_types: &[u64],
        offset: u64,
        limit: u64,
    ) -> Result<EventPage, CallError> {
        let mut query = format!(
            "/v1/events?start_date={}&limit={limit}",
            encode(&civil::iso_offset(start))
        );
        if offset > 0 {
            query.push_str(&format!("&offset={offset}"));
        }
        for id in event_types {
            query.push_str(&format!("&event_type%5B%5D={id}"));
        }
        let req = self.amp_request(Method::Get, &query);
        let reply = self.amp(&req)?;
        let page = event::page_from_value(&reply.json).map_err(|e| self.invalid(&req, e))?;
        if page.next.is_some() && page.total.is_none() {
            return Err(self.invalid(
                &req,
                "events page has a next link but no metadata.results.total".into(),
            ));
        }
        Ok(page)
    }

    /// `GET /v1/event_types` → `(id, name)`.
    pub fn amp_event_types(&mut self) -> Result<Vec<(u64, String)>, CallError> {
        let req = self.amp_request(Method::Get, "/v1/event_types");
        let reply = self.amp(&req)?;
        event::event_types_from_value(&reply.json).map_err(|e| self.invalid(&req, e))
    }

    /// `GET /v1/computers/{guid}` → its `data`.
    pub fn amp_computer(&mut self, guid: &str) -> Result<Value, CallError> {
        let req = self.amp_request(Method::Get, &format!("/v1/computers/{}", encode(guid)));
        let reply = self.amp(&req)?;
        match reply.json.get("data") {
            Some(d) if d.is_object() => Ok(d.clone()),
            _ => Err(self.invalid(&req, "computer answer has no \"data\" object".into())),
        }
    }

    /// `PATCH /v1/computers/{guid}` `{"group_guid": …}` (200 or 202).
    pub fn amp_move(&mut self, guid: &str, group_guid: &str) -> Result<(), CallError> {
        let req = self
            .amp_request(Method::Patch, &format!("/v1/computers/{}", encode(guid)))
            .json(&json!({ "group_guid": group_guid }));
        self.send(Service::Amp, &req, false).map(|_| ())
    }

    fn isolation_path(guid: &str) -> String {
        format!("/v1/computers/{}/isolation", encode(guid))
    }

    /// `OPTIONS …/isolation`: which isolation actions the policy allows. A 2xx answer
    /// without an `Allow` header, or with a body that is not JSON, is damaged: retried,
    /// never read as "not allowed".
    pub fn amp_isolation_options(&mut self, guid: &str) -> Result<IsolationSupport, CallError> {
        let req = self.amp_request(Method::Options, &Self::isolation_path(guid));
        let check = |r: &Reply| match (r.header("allow"), r.garbled) {
            (_, true) => Err("the body is not JSON".to_string()),
            (None, _) => Err("no Allow header".to_string()),
            (Some(_), false) => Ok(()),
        };
        match self.send_checked(Service::Amp, &req, false, &check) {
            Ok(reply) => {
                let allow = reply.header("allow").unwrap_or("").to_ascii_uppercase();
                let has = |m: &str| allow.split(',').any(|a| a.trim() == m);
                Ok(IsolationSupport {
                    can_start: has("PUT"),
                    can_stop: has("DELETE"),
                })
            }
            Err(e) if e.status() == Some(405) => Ok(IsolationSupport {
                can_start: false,
                can_stop: false,
            }),
            Err(e) => Err(e),
        }
    }

    /// `GET …/isolation`.
    pub fn amp_isolation(&mut self, guid: &str) -> Result<Isolation, CallError> {
        let req = self.amp_request(Method::Get, &Self::isolation_path(guid));
        let reply = self.amp(&req)?;
        let data = reply.json.get("data").cloned().unwrap_or(Value::Null);
        let status = data
            .get("status")
            .and_then(Value::as_str)
            .map(|s| s.trim().to_ascii_lowercase())
            .ok_or_else(|| self.invalid(&req, "isolation answer has no status".into()))?;
        Ok(Isolation {
            status,
            unlock_code: data
                .get("unlock_code")
                .and_then(Value::as_str)
                .map(String::from),
        })
    }

    /// `PUT …/isolation` with a comment and the recorded unlock code.
    pub fn amp_isolate(
        &mut self,
        guid: &str,
        comment: &str,
        unlock_code: &str,
    ) -> Result<(), CallError> {
        let req = self
            .amp_request(Method::Put, &Self::isolation_path(guid))
            .json(&json!({ "comment": comment, "unlock_code": unlock_code }));
        self.send_once(Service::Amp, &req, false).map(|_| ())
    }

    /// `DELETE …/isolation`. A 2xx answer whose body is not JSON is damaged: retried
    /// (a repeated stop of a host already released answers 409, which the close reads
    /// by looking at the isolation status).
    pub fn amp_stop_isolation(&mut self, guid: &str, comment: &str) -> Result<(), CallError> {
        let req = self
            .amp_request(Method::Delete, &Self::isolation_path(guid))
            .json(&json!({ "comment": comment }));
        let check = |r: &Reply| {
            if r.garbled {
                Err("the body is not JSON".to_string())
            } else {
                Ok(())
            }
        };
        self.send_checked(Service::Amp, &req, false, &check)
            .map(|_| ())
    }
}

/// The bridge's writes to the Secure Endpoint host (group, isolation) leave alone what
/// someone else changed: each reads the host first.
#[cfg(test)]
mod host_write_tests {
    use crate::incident::{IncidentRecord, State};
    use crate::ports::Method;
    use crate::testkit::{NOW, World, amp_event};

    const TD: u64 = 1_090_519_054;
    const GUID: &str = "guid-host-a";

    fn world(policy: &str) -> World {
        let mut w = World::new();
        w.up.events = vec![amp_event(81, NOW - 100, TD, Some("d81"), "host-a")];
        w.set("containment", policy);
        if policy == "move" {
            w.set("triage_group_guid", "group-triage");
        }
        w
    }

    fn only(w: &World) -> IncidentRecord {
        let all = w.incidents();
        assert_eq!(all.len(), 1);
        all.into_iter().next().unwrap()
    }

    fn close(w: &mut World) -> IncidentRecord {
        let sys_id = only(w).snow.unwrap().sys_id;
        w.up.snow_set_state(&sys_id, "7");
        w.clock.advance(60_000);
        w.tick();
        let rec = only(w);
        assert_eq!(rec.state, State::Closed, "{:?}", rec.audit);
        rec
    }

    fn audit_has(rec: &IncidentRecord, needle: &str) -> bool {
        rec.audit.iter().any(|a| a.outcome.contains(needle))
    }

    #[test]
    fn an_analyst_isolated_host_is_already_isolated_not_unavailable_and_stays_isolated() {
        let mut w = world("isolate");
        let c = w.up.computers.entry(GUID.into()).or_default();
        c.isolation = "isolated".into();
        c.unlock_code = Some("ANALYST1".into());
        w.tick();
        let rec = only(&w);
        assert_eq!(rec.state, State::Open);
        let outcome = rec.containment.as_ref().unwrap().outcome.clone().unwrap();
        assert!(
            outcome.contains("already isolated, not by the bridge"),
            "{outcome}"
        );
        assert!(!outcome.contains("not available"));
        assert_eq!(w.up.calls(Method::Put, "/v1/computers"), 0);
        let note = &w.up.snow_notes[&rec.snow.unwrap().sys_id][0];
        assert!(
            note.contains("already isolated, not by the bridge"),
            "{note}"
        );
        close(&mut w);
        assert_eq!(w.up.computers[GUID].isolation, "isolated");
        assert_eq!(w.up.calls(Method::Delete, "/v1/computers"), 0);
    }

    #[test]
    fn isolation_an_analyst_already_stopped_is_not_stopped_again() {
        let mut w = world("isolate");
        w.tick();
        assert!(only(&w).containment.unwrap().isolated);
        w.up.computers.get_mut(GUID).unwrap().isolation = "not_isolated".into();
        let rec = close(&mut w);
        assert_eq!(w.up.calls(Method::Delete, "/v1/computers"), 0);
        assert!(audit_has(&rec, "stopped by someone else; nothing to stop"));
    }

    #[test]
    fn a_host_re_isolated_under_another_unlock_code_is_left_isolated() {
        let mut w = world("isolate");
        w.tick();
        w.up.computers.get_mut(GUID).unwrap().unlock_code = Some("ANALYST2".into());
        let rec = close(&mut w);
        assert_eq!(w.up.calls(Method::Delete, "/v1/computers"), 0);
        assert_eq!(w.up.computers[GUID].isolation, "isolated");
        assert!(audit_has(&rec, "another unlock code"));
    }

    #[test]
    fn the_bridges_own_isolation_is_stopped_after_reading_it() {
        let mut w = world("isolate");
        w.tick();
        let rec = close(&mut w);
        assert_eq!(w.up.computers[GUID].isolation, "not_isolated");
        assert_eq!(w.up.calls(Method::Delete, "/v1/computers"), 1);
        assert!(audit_has(&rec, "isolation stopped"));
    }

    #[test]
    fn a_host_an_analyst_moved_out_of_triage_is_not_moved_back() {
        let mut w = world("move");
        w.tick();
        assert_eq!(w.up.computers[GUID].group_guid, "group-triage");
        w.up.computers.get_mut(GUID).unwrap().group_guid = "group-forensics".into();
        let rec = close(&mut w);
        assert_eq!(w.up.computers[GUID].group_guid, "group-forensics");
        assert_eq!(w.up.calls(Method::Patch, "/v1/computers"), 1);
        assert!(audit_has(&rec, "by someone else"), "{:?}", rec.audit);
    }

    #[test]
    fn a_host_still_in_triage_is_moved_back() {
        let mut w = world("move");
        w.tick();
        let rec = close(&mut w);
        assert_eq!(w.up.computers[GUID].group_guid, "group-original");
        assert!(audit_has(&rec, "moved back to group group-original"));
        assert_eq!(
            rec.containment.unwrap().triage_group_guid.as_deref(),
            Some("group-triage")
        );
    }

    #[test]
    fn no_connector_guid_means_the_ticket_says_the_host_could_not_be_identified() {
        let mut w = world("isolate");
        let mut e = amp_event(82, NOW - 100, TD, Some("d82"), "host-a");
        e.as_object_mut().unwrap().remove("connector_guid");
        e["computer"]
            .as_object_mut()
            .unwrap()
            .remove("connector_guid");
        w.up.events = vec![e];
        w.tick();
        let rec = only(&w);
        assert_eq!(rec.state, State::Open);
        let note = &w.up.snow_notes[&rec.snow.unwrap().sys_id][0];
        assert!(note.contains("could not be identified"), "{note}");
        assert!(!note.contains("none (policy)"), "{note}");
        assert_eq!(w.up.calls(Method::Put, "/v1/computers"), 0);
    }
}
