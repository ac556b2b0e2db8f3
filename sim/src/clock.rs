//! Wall-clock formatting and parsing in the three dialects the simulated services speak.
//! Pure functions over unix seconds, so no date crate is needed.

use std::time::{SystemTime, UNIX_EPOCH};

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

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

struct Civil {
    y: i64,
    mo: i64,
    d: i64,
    h: i64,
    mi: i64,
    s: i64,
}

fn civil(secs: i64) -> Civil {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    Civil {
        y,
        mo,
        d,
        h: rem / 3600,
        mi: rem % 3600 / 60,
        s: rem % 60,
    }
}

/// Secure Endpoint style: `2020-02-20T18:20:38+00:00`.
pub(crate) fn amp_date(secs: i64) -> String {
    let c = civil(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}+00:00",
        c.y, c.mo, c.d, c.h, c.mi, c.s
    )
}

/// CTIA style: `2020-02-20T18:20:38.123Z`.
pub(crate) fn ctia_time(secs: i64, nanos: u32) -> String {
    let c = civil(secs);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        c.y,
        c.mo,
        c.d,
        c.h,
        c.mi,
        c.s,
        nanos / 1_000_000
    )
}

/// ServiceNow glide date-time style (UTC): `2020-02-20 18:20:38`.
pub(crate) fn glide_time(secs: i64) -> String {
    let c = civil(secs);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        c.y, c.mo, c.d, c.h, c.mi, c.s
    )
}

fn digits(s: &str, at: usize, len: usize) -> Option<i64> {
    let part = s.get(at..at + len)?;
    if part.bytes().all(|b| b.is_ascii_digit()) {
        part.parse().ok()
    } else {
        None
    }
}

/// Parses an ISO-8601 date-time such as `2024-05-01T10:00:00Z`, `2024-05-01T10:00:00.5+02:00`,
/// `2024-05-01T10:00:00+0200` or a bare date `2024-05-01`. Returns unix (seconds, nanoseconds).
/// A `+` decoded into a space (the classic unencoded-query bug) does not parse.
pub(crate) fn parse_iso8601(s: &str) -> Option<(i64, u32)> {
    let s = s.trim_end();
    let y = digits(s, 0, 4)?;
    if s.get(4..5)? != "-" || s.get(7..8)? != "-" {
        return None;
    }
    let mo = digits(s, 5, 2)?;
    let d = digits(s, 8, 2)?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, mo, d);
    if s.len() == 10 {
        return Some((days * 86_400, 0));
    }
    let sep = s.get(10..11)?;
    if sep != "T" && sep != "t" {
        return None;
    }
    let h = digits(s, 11, 2)?;
    let mi = digits(s, 14, 2)?;
    let sec = digits(s, 17, 2)?;
    if s.get(13..14)? != ":" || s.get(16..17)? != ":" || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = s.get(19..)?;
    let mut nanos = 0u32;
    if let Some(frac) = rest.strip_prefix('.') {
        let n = frac.bytes().take_while(u8::is_ascii_digit).count();
        if n == 0 {
            return None;
        }
        let mut scaled = String::from(&frac[..n.min(9)]);
        while scaled.len() < 9 {
            scaled.push('0');
        }
        nanos = scaled.parse().ok()?;
        rest = &frac[n..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        "" => 0,
        _ => {
            let sign = match rest.get(0..1)? {
                "+" => 1,
                "-" => -1,
                _ => return None,
            };
            let body = &rest[1..];
            let (oh, om) = match body.len() {
                5 if body.get(2..3)? == ":" => (digits(body, 0, 2)?, digits(body, 3, 2)?),
                4 => (digits(body, 0, 2)?, digits(body, 2, 2)?),
                2 => (digits(body, 0, 2)?, 0),
                _ => return None,
            };
            sign * (oh * 3600 + om * 60)
        }
    };
    Some((days * 86_400 + h * 3600 + mi * 60 + sec - offset, nanos))
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

    #[test]
    fn parses_iso_forms_and_rejects_space_for_plus() {
        assert_eq!(
            parse_iso8601("2020-02-20T18:20:38+00:00"),
            Some((1_582_222_838, 0))
        );
        assert_eq!(
            parse_iso8601("2020-02-20T20:20:38.5+02:00"),
            Some((1_582_222_838, 500_000_000))
        );
        assert_eq!(
            parse_iso8601("2020-02-20T18:20:38Z"),
            Some((1_582_222_838, 0))
        );
        assert_eq!(
            parse_iso8601("2020-02-20T13:20:38-0500"),
            Some((1_582_222_838, 0))
        );
        assert_eq!(parse_iso8601("2020-02-20"), Some((1_582_156_800, 0)));
        assert_eq!(parse_iso8601("2020-02-20T18:20:38 00:00"), None);
        assert_eq!(parse_iso8601("yesterday"), None);
        assert_eq!(parse_iso8601("2020-13-01T00:00:00Z"), None);
    }

    #[test]
    fn round_trips_many_days() {
        for secs in (0..4_000_000_000i64).step_by(86_399 * 97) {
            assert_eq!(parse_iso8601(&amp_date(secs)), Some((secs, 0)));
        }
    }
}
