//! The component's reports about its own work, taken as data from its key-value
//! writes (the keys and types of [`mssp_contract::report`]) — never from its log.
//!
//! During one invocation the key-value capability keeps the bytes the component
//! writes to [`LAST_TICK_KEY`] and [`COUNTERS_KEY`] in its `default` bucket (and, on
//! the first counters write, the value stored before it). After the invocation
//! [`ReportWrites::parse`] turns them into a [`GuestReport`]: the tick report and the
//! invocation's share of the counters (what it added).

use mssp_contract::report::{BUCKET, COUNTERS_KEY, Counters, LAST_TICK_KEY, TickReport};

/// Which report a key-value write carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportKey {
    LastTick,
    Counters,
}

impl ReportKey {
    /// The report `key` in `bucket` is, if any.
    pub fn of(bucket: &str, key: &str) -> Option<ReportKey> {
        if bucket != BUCKET {
            return None;
        }
        match key {
            LAST_TICK_KEY => Some(ReportKey::LastTick),
            COUNTERS_KEY => Some(ReportKey::Counters),
            _ => None,
        }
    }
}

/// The report bytes one invocation wrote.
#[derive(Debug, Default)]
pub struct ReportWrites {
    /// The last [`TickReport`] written.
    pub last_tick: Option<Vec<u8>>,
    /// The [`Counters`] stored before the invocation's first write of them (`None`:
    /// none were stored) and the last value it wrote.
    pub counters: Option<(Option<Vec<u8>>, Vec<u8>)>,
}

/// What one invocation reported, typed.
#[derive(Debug, Default, PartialEq)]
pub struct GuestReport {
    /// The tick's report (ticks only; a callback writes none).
    pub tick: Option<TickReport>,
    /// What this invocation added to the cumulative counters.
    pub added: Option<Counters>,
}

impl ReportWrites {
    /// Notes a successful write of `value` to a report key; `before` is the value
    /// stored before it (only asked for on the first counters write).
    pub fn record(&mut self, key: ReportKey, before: Option<Vec<u8>>, value: &[u8]) {
        match key {
            ReportKey::LastTick => self.last_tick = Some(value.to_vec()),
            ReportKey::Counters => match &mut self.counters {
                Some((_, after)) => *after = value.to_vec(),
                None => self.counters = Some((before, value.to_vec())),
            },
        }
    }

    /// Whether the value stored before a write of `key` is still to be read.
    pub fn wants_before(&self, key: ReportKey) -> bool {
        key == ReportKey::Counters && self.counters.is_none()
    }

    /// The typed reports; a record that does not parse is left out (logged at debug:
    /// a component that writes something else under these keys loses only metrics).
    pub fn parse(self, tenant: &str) -> GuestReport {
        fn read<T: serde::de::DeserializeOwned>(
            tenant: &str,
            what: &str,
            bytes: &[u8],
        ) -> Option<T> {
            serde_json::from_slice(bytes)
                .map_err(|e| tracing::debug!(tenant, "{what} unreadable: {e}"))
                .ok()
        }
        let tick = self
            .last_tick
            .and_then(|b| read::<TickReport>(tenant, "tick report", &b));
        let added = self.counters.and_then(|(before, after)| {
            let after: Counters = read(tenant, "counters", &after)?;
            let before: Counters = before
                .and_then(|b| read(tenant, "counters stored before", &b))
                .unwrap_or_default();
            Some(after.since(&before))
        });
        GuestReport { tick, added }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_report_keys_of_the_default_bucket_are_reports() {
        assert_eq!(
            ReportKey::of("default", "status/last_tick"),
            Some(ReportKey::LastTick)
        );
        assert_eq!(
            ReportKey::of("default", "status/counters"),
            Some(ReportKey::Counters)
        );
        assert_eq!(ReportKey::of("other", "status/counters"), None);
        assert_eq!(ReportKey::of("default", "status/cursor"), None);
    }

    #[test]
    fn an_invocation_reports_what_it_added_to_the_counters() {
        let mut w = ReportWrites::default();
        assert!(w.wants_before(ReportKey::Counters));
        w.record(
            ReportKey::Counters,
            Some(br#"{"events_seen": 10, "failed": {"amp": 1, "xdr": 0, "snow": 0}}"#.to_vec()),
            br#"{"events_seen": 12, "failed": {"amp": 1, "xdr": 2, "snow": 0}}"#,
        );
        assert!(!w.wants_before(ReportKey::Counters));
        w.record(ReportKey::Counters, None, br#"{"events_seen": 13}"#);
        w.record(
            ReportKey::LastTick,
            None,
            br#"{"started_at": "", "outcome": "ok", "events_fetched": 3, "events_new": 3,
                "events_rejected": 0, "incidents_new": 1, "incidents_updated": 0,
                "incidents_opened": 1, "incidents_closed": 0, "deferred": 0,
                "calls": {"amp": 2, "xdr": 1, "snow": 1}, "errors": []}"#,
        );
        let r = w.parse("acme");
        let added = r.added.expect("counters parse");
        // The last write counts, against the value stored before the first.
        assert_eq!(added.events_seen, 3);
        assert_eq!(added.failed.amp, 0);
        let tick = r.tick.expect("tick report parses");
        assert_eq!((tick.outcome.as_str(), tick.events_new), ("ok", 3));
    }

    #[test]
    fn first_counters_ever_count_whole_and_damaged_ones_count_nothing() {
        let mut w = ReportWrites::default();
        w.record(ReportKey::Counters, None, br#"{"incidents_opened": 2}"#);
        assert_eq!(w.parse("acme").added.map(|c| c.incidents_opened), Some(2));
        let mut w = ReportWrites::default();
        w.record(ReportKey::Counters, None, b"not json");
        w.record(ReportKey::LastTick, None, b"{}");
        assert_eq!(w.parse("acme"), GuestReport::default());
    }
}
