//! Secure Endpoint `GET /v1/events` pages and `GET /v1/event_types` answers,
//! as the guest parses them: never a panic, every item either taken or
//! rejected with a reason, ids exact.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mssp_guest::event::{event_types_from_value, page_from_value, parse_event};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Ok(page) = page_from_value(&v) {
        let items = v["data"].as_array().map_or(0, Vec::len);
        assert_eq!(
            page.events.len() + page.rejected.len(),
            items,
            "every item is taken or rejected"
        );
        for e in &page.events {
            // A parsed id is exact: it re-reads from the same item.
            let again = v["data"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|item| parse_event(item).ok())
                .any(|p| p.id == e.id);
            assert!(again);
            if let Some(f) = &e.file
                && let Some(sha) = &f.sha256
            {
                assert_eq!(sha.len(), 64);
                assert!(sha.bytes().all(|b| b.is_ascii_hexdigit()));
            }
        }
        if let Some(next) = &page.next {
            assert!(!next.trim().is_empty());
        }
    }
    let _ = event_types_from_value(&v);
    let _ = parse_event(&v);
});
