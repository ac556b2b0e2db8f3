//! The wall clock, and its text in the three dialects the simulated services speak: each
//! dialect is one of the forms of `mssp_contract::civil`, which the bridge writes too.
//! The simulators read date-times with `mssp_contract::civil::parse_nanos`.

use std::time::{SystemTime, UNIX_EPOCH};

use mssp_contract::civil;

/// Current unix time as (seconds, nanoseconds).
pub(crate) fn now_unix() -> (i64, u32) {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => (
            i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            d.subsec_nanos(),
        ),
        Err(_) => (0, 0),
    }
}

pub(crate) fn now_secs() -> i64 {
    now_unix().0
}

/// Secure Endpoint style: `2020-02-20T18:20:38+00:00`.
pub(crate) fn amp_date(secs: i64) -> String {
    civil::iso_offset(secs)
}

/// CTIA style: `2020-02-20T18:20:38.123Z`.
pub(crate) fn ctia_time(secs: i64, nanos: u32) -> String {
    civil::iso_millis(
        secs.saturating_mul(1000)
            .saturating_add(i64::from(nanos / 1_000_000)),
    )
}

/// ServiceNow glide date-time style (UTC): `2020-02-20 18:20:38`.
pub(crate) fn glide_time(secs: i64) -> String {
    civil::glide(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_match_each_dialect() {
        assert_eq!(amp_date(1_582_222_838), "2020-02-20T18:20:38+00:00");
        assert_eq!(glide_time(1_582_222_838), "2020-02-20 18:20:38");
        assert_eq!(
            ctia_time(1_582_222_838, 279_000_000),
            "2020-02-20T18:20:38.279Z"
        );
        assert_eq!(amp_date(0), "1970-01-01T00:00:00+00:00");
    }
}
