//! ISO-8601 formatting and parsing of UTC times, without a date crate.

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
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
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// `2020-02-20T18:20:38Z` for Unix seconds.
pub fn iso_seconds(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `2020-02-20T18:20:38.123Z` for Unix milliseconds.
pub fn iso_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let base = iso_seconds(secs);
    format!("{}.{:03}Z", &base[..base.len() - 1], ms.rem_euclid(1000))
}

/// `2020-02-20T18:20:38+00:00`, the form Secure Endpoint itself uses for `start_date`.
pub fn iso_offset(secs: i64) -> String {
    let base = iso_seconds(secs);
    format!("{}+00:00", &base[..base.len() - 1])
}

fn digits(s: &str) -> Option<i64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM|±HHMM)` (or a space instead of `T`)
/// into Unix seconds. Fractions are dropped.
pub fn parse_iso(s: &str) -> Option<i64> {
    let s = s.trim();
    if s.len() < 19 || !s.is_ascii() {
        return None;
    }
    let (date, rest) = s.split_at(10);
    let mut dp = date.split('-');
    let y = digits(dp.next()?)?;
    let mo = digits(dp.next()?)?;
    let d = digits(dp.next()?)?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) {
        return None;
    }
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let (clock, mut zone) = rest.split_at(8);
    let mut cp = clock.split(':');
    let h = digits(cp.next()?)?;
    let mi = digits(cp.next()?)?;
    let se = digits(cp.next()?)?;
    if h > 23 || mi > 59 || se > 60 {
        return None;
    }
    if let Some(frac) = zone.strip_prefix('.') {
        let end = frac
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(frac.len());
        zone = &frac[end..];
    }
    let offset = match zone {
        "" | "Z" | "z" => 0,
        _ => {
            let sign = match zone.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let z = zone[1..].replace(':', "");
            if z.len() != 4 {
                return None;
            }
            let zh = digits(&z[..2])?;
            let zm = digits(&z[2..])?;
            sign * (zh * 3600 + zm * 60)
        }
    };
    Some(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se - offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        assert_eq!(iso_seconds(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_seconds(1_582_222_838), "2020-02-20T18:20:38Z");
        assert_eq!(iso_offset(1_582_222_838), "2020-02-20T18:20:38+00:00");
        assert_eq!(iso_millis(1_582_222_838_007), "2020-02-20T18:20:38.007Z");
        assert_eq!(parse_iso("2020-02-20T18:20:38+00:00"), Some(1_582_222_838));
        assert_eq!(
            parse_iso("2020-02-20T19:20:38.5+01:00"),
            Some(1_582_222_838)
        );
        assert_eq!(parse_iso(" 2020-02-20 18:20:38Z "), Some(1_582_222_838));
        assert_eq!(parse_iso("2024-02-29T00:00:00Z"), Some(1_709_164_800));
        for s in [0, 951_782_400, 1_709_164_800, 4_102_444_800] {
            assert_eq!(parse_iso(&iso_seconds(s)), Some(s));
        }
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "yesterday",
            "2020-13-01T00:00:00Z",
            "2020-02-20T18:20",
            "2020-02-20X18:20:38Z",
            "2020-02-20T18:20:38+0",
        ] {
            assert_eq!(parse_iso(bad), None, "{bad}");
        }
    }
}
