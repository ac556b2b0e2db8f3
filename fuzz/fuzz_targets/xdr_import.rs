//! CTIA's answer to `POST /ctia/bundle/import`, as the guest reads it: never
//! a panic; an incident taken only with a non-empty id and a `created` or
//! `exists` result; every other refused entity accounted for.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mssp_guest::upstream::{ImportProblem, read_import_answer};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let results = v["results"].as_array().map_or(&[][..], Vec::as_slice);
    match read_import_answer(&v) {
        Ok(answer) => {
            assert!(!answer.incident_id.is_empty());
            assert!(answer.refused.len() < results.len().max(1));
            let incident = results
                .iter()
                .rev()
                .find(|r| r["type"] == "incident")
                .expect("an incident entry was taken");
            assert!(matches!(
                incident["result"].as_str(),
                Some("created" | "exists")
            ));
            assert_eq!(answer.existed, incident["result"] == "exists");
        }
        Err(ImportProblem::Refused(why)) => assert!(why.contains(" refused: ")),
        Err(ImportProblem::Unusable(_)) => {}
    }
});
