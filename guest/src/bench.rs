//! The pure per-page work of a tick, as one function, so that the native benchmark and
//! `POST /v1/bench/pipeline` (inside the component) run identical code: parse a Secure
//! Endpoint events page, filter, group by detection, build the XDR incident and the
//! ServiceNow incident body of every group.

use serde::Serialize;

use crate::config::Config;
use crate::detection;
use crate::event;
use crate::incident::IncidentRecord;
use crate::payload::{self, EventTypeNames};

/// What one page produced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Events parsed from the page.
    pub events: usize,
    /// Incident groups among the wanted events.
    pub groups: usize,
    /// Bytes of every XDR incident body (JSON).
    pub xdr_bytes: usize,
    /// Bytes of every ServiceNow incident body (JSON).
    pub snow_bytes: usize,
}

/// Parses `page` (the body of `GET /v1/events`) and builds both payloads per group.
/// Event type names come from the events themselves (no cache lookup).
pub fn process_page(page: &[u8], cfg: &Config) -> Result<Summary, String> {
    let value: serde_json::Value =
        serde_json::from_slice(page).map_err(|e| format!("page is not JSON: {e}"))?;
    let page = event::page_from_value(&value)?;
    let mut out = Summary {
        events: page.events.len(),
        ..Summary::default()
    };
    let wanted = page
        .events
        .into_iter()
        .filter(|e| detection::is_wanted(cfg, e))
        .collect();
    let names = EventTypeNames::new();
    for group in detection::group(cfg, wanted) {
        let mut rec = IncidentRecord::new(&group.key, 0);
        rec.add_events(&group.events, 0);
        let xdr = payload::xdr_incident(cfg, &rec, &names);
        let snow = payload::snow_incident(cfg, &rec, &names, &payload::first_work_note(&rec));
        out.groups += 1;
        out.xdr_bytes += xdr.to_string().len();
        out.snow_bytes += snow.to_string().len();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{NOW, World, amp_event};

    #[test]
    fn a_page_is_parsed_filtered_grouped_and_both_payloads_built() {
        let w = World::new();
        let mut data: Vec<serde_json::Value> = (0..10)
            .map(|i| {
                amp_event(
                    100 + i,
                    NOW - 100,
                    1_090_519_054,
                    Some(&format!("d{}", i % 3)),
                    "h",
                )
            })
            .collect();
        // Not a wanted type: parsed, not grouped.
        data.push(amp_event(200, NOW - 50, 553_648_143, None, "h"));
        let page = serde_json::json!({"metadata": {"results": {"total": 11}}, "data": data});
        let s = process_page(page.to_string().as_bytes(), &w.cfg()).unwrap();
        assert_eq!(s.events, 11);
        assert_eq!(s.groups, 3);
        assert!(s.xdr_bytes > 3 * 200 && s.snow_bytes > 3 * 200, "{s:?}");
        assert!(process_page(b"{\"data\": 5}", &w.cfg()).is_err());
        assert!(process_page(b"not json", &w.cfg()).is_err());
    }
}
