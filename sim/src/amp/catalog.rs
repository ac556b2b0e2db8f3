//! Secure Endpoint event types as `GET /v1/event_types` lists them (ids and names as a real
//! NAM tenant reports them).

/// (id, name) of every event type the simulator knows.
pub(crate) const EVENT_TYPES: &[(u64, &str)] = &[
    (553_648_130, "Policy Update"),
    (554_696_714, "Scan Started"),
    (554_696_715, "Scan Completed, No Detections"),
    (1_091_567_628, "Scan Completed With Detections"),
    (2_165_309_453, "Scan Failed"),
    (1_090_519_054, "Threat Detected"),
    (553_648_143, "Threat Quarantined"),
    (2_164_260_880, "Quarantine Failure"),
    (570_425_394, "Quarantine Restore Requested"),
    (553_648_149, "Quarantined Item Restored"),
    (2_164_260_884, "Quarantine Restore Failed"),
    (2_181_038_130, "Quarantine Request Failed to be Delivered"),
    (553_648_154, "Cloud Recall Restore from Quarantine"),
    (553_648_155, "Cloud Recall Quarantine Successful"),
    (2_164_260_892, "Cloud Recall Restore from Quarantine Failed"),
    (2_164_260_893, "Cloud Recall Quarantine Attempt Failed"),
    (553_648_158, "Install Started"),
    (2_164_260_895, "Install Failure"),
    (553_648_166, "Uninstall"),
    (2_164_260_903, "Uninstall Failure"),
    (1003, "Email Confirmation"),
    (1004, "Forgotten Password Reset"),
    (1005, "Password Has Been Reset"),
    (2_164_260_866, "Policy Update Failure"),
    (553_648_146, "Cloud Recall Restore of False Positive"),
    (553_648_147, "Cloud Recall Detection"),
    (553_648_168, "Execution Blocked"),
    (553_648_150, "Quarantine Restore Started"),
    (570_425_396, "Application Registered"),
    (570_425_397, "Application Deregistered"),
    (570_425_398, "Application Authorized"),
    (570_425_399, "Application Deauthorized"),
    (1_090_524_040, "APK Threat Detected"),
    (1_090_524_041, "APK Custom Threat Detected"),
    (1_090_519_084, "DFC Threat Detected"),
    (1_107_296_257, "Potential Dropper Infection"),
    (1_107_296_258, "Multiple Infected Files"),
    (1_107_296_261, "Adobe Reader compromise"),
    (1_107_296_262, "Microsoft Word compromise"),
    (1_107_296_263, "Microsoft Excel compromise"),
    (1_107_296_264, "Microsoft PowerPoint compromise"),
    (1_107_296_266, "Adobe Reader launched a shell"),
    (1_107_296_267, "Microsoft Word launched a shell"),
    (1_107_296_268, "Microsoft Excel launched a shell"),
    (1_107_296_269, "Microsoft PowerPoint launched a shell"),
    (1_107_296_270, "Apple QuickTime compromise"),
    (1_107_296_271, "Apple QuickTime launched a shell"),
    (1_107_296_272, "Executed malware"),
    (1_107_296_273, "Suspected botnet connection"),
    (553_648_170, "Reboot Pending"),
    (553_648_171, "Reboot Completed"),
    (1_107_296_274, "Cloud IOC"),
    (1_107_296_275, "Microsoft Calculator compromise"),
    (1_107_296_276, "Microsoft Notepad compromise"),
    (553_648_173, "File Fetch Completed"),
    (2_164_260_910, "File Fetch Failed"),
    (554_696_756, "Endpoint IOC Scan Started"),
    (554_696_757, "Endpoint IOC Scan Completed, No Detections"),
    (1_091_567_670, "Endpoint IOC Scan Completed With Detections"),
    (2_165_309_495, "Endpoint IOC Scan Failed"),
    (2_164_260_914, "Endpoint IOC Definition Update Failure"),
    (553_648_179, "Endpoint IOC Definition Update Success"),
    (2_164_260_911, "Endpoint IOC Configuration Update Failure"),
    (553_648_176, "Endpoint IOC Configuration Update Success"),
    (1_090_519_089, "Endpoint IOC Scan Detection Summary"),
    (1_107_296_277, "Connection to suspicious domain"),
    (
        1_107_296_278,
        "Threat Detected in Low Prevalence Executable",
    ),
    (1_107_296_279, "Vulnerable Application Detected"),
    (1_107_296_280, "Suspicious Download"),
    (1_107_296_281, "Microsoft CHM Compromise"),
    (1_107_296_282, "Suspicious Cscript Launch"),
    (1_090_519_096, "Update: Reboot Required"),
    (1_090_519_097, "Update: Reboot Advised"),
    (2_164_260_922, "Update: Unexpected Reboot Required"),
    (553_648_137, "Product Update Failed"),
    (553_648_135, "Product Update Started"),
    (553_648_136, "Product Update Completed"),
    (1_107_296_285, "Cognitive Incident"),
    (1_107_296_284, "Potential Ransomware"),
    (1_107_296_283, "Possible Webshell"),
    (1_090_519_103, "Exploit Prevention"),
    (2_164_260_931, "Critical Fault Raised"),
    (1_090_519_107, "Major Fault Raised"),
    (553_648_195, "Minor Fault Raised"),
    (553_648_196, "Fault Cleared"),
    (1_090_519_081, "Rootkit Detection"),
    (1_090_519_105, "Malicious Activity Detection"),
    (1_090_519_102, "iOS Network Detection"),
    (553_648_199, "Malicious Activity Block"),
    (1_090_519_112, "System Process Protection"),
    (553_648_202, "Endpoint Isolation Start Success"),
    (2_164_260_939, "Endpoint Isolation Start Failure"),
    (553_648_204, "Endpoint Isolation Stop Success"),
    (2_164_260_941, "Endpoint Isolation Stop Failure"),
    (553_648_206, "Endpoint Isolation Update Success"),
    (2_164_260_943, "Endpoint Isolation Update Failure"),
    (553_648_208, "Orbital Install Success"),
    (2_164_260_945, "Orbital Install Failure"),
    (553_648_210, "Orbital Update Success"),
    (2_164_260_947, "Orbital Update Failure"),
    (553_648_215, "Endpoint Isolation Unlock Limit Reached"),
    (1_107_296_344, "SecureX Threat Hunting Incident"),
];

/// The high-priority ids of the reference workflow (upstream-apis.md).
pub const HIGH_PRIORITY_EVENT_TYPES: &[u64] = &[
    1_090_519_054,
    2_164_260_880,
    2_164_260_893,
    1_090_524_040,
    1_090_524_041,
    1_090_519_084,
    1_107_296_257,
    1_107_296_258,
    1_107_296_261,
    1_107_296_262,
    1_107_296_263,
    1_107_296_264,
    1_107_296_266,
    1_107_296_267,
    1_107_296_268,
    1_107_296_269,
    1_107_296_270,
    1_107_296_271,
    1_107_296_272,
    1_107_296_273,
    1_107_296_274,
    1_107_296_275,
    1_107_296_276,
    1_107_296_277,
    1_107_296_278,
    1_107_296_279,
    1_107_296_280,
    1_107_296_281,
    1_107_296_282,
    1_107_296_283,
    1_107_296_284,
    1_091_567_670,
    2_164_260_931,
    1_090_519_081,
    1_090_519_105,
    1_090_519_102,
    553_648_215,
];

/// Name of an event type id, if known.
pub fn event_type_name(id: u64) -> Option<&'static str> {
    EVENT_TYPES
        .iter()
        .find(|(known, _)| *known == id)
        .map(|(_, name)| *name)
}

pub(crate) fn description(name: &str) -> String {
    format!("Secure Endpoint reported: {name}.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_high_priority_id_has_a_name_and_ids_are_unique() {
        for id in HIGH_PRIORITY_EVENT_TYPES {
            assert!(event_type_name(*id).is_some(), "{id}");
        }
        let mut ids: Vec<u64> = EVENT_TYPES.iter().map(|(id, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), EVENT_TYPES.len());
        assert!(EVENT_TYPES.len() >= 100);
    }
}
