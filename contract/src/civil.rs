//! UTC date-times as text, for the component, the host and the simulators alike: each
//! form the project writes is here once, and so is the one grammar it reads.
//!
//! The calendar (Unix time to date and back, which dates and times exist) and the
//! reading are the `time` crate's, with its `parsing` feature and its `macros` (the
//! format description is built at compile time). Of the well-kept date crates it costs
//! the component least: 32 KB of wasm here, where `chrono` cost 49 KB and `jiff` 210 KB
//! in the guest's place (issue 15). The writing is plain `format!` of the crate's
//! fields: the crate's own formatter would add 26 KB more for four fixed forms.
//!
//! Times are Unix seconds or milliseconds (`i64`). The crate covers the years -9999 to
//! 9999; a time outside them is written as the nearest end of that range, never a panic.

use std::fmt;

use time::UtcDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::parsing::Parsed;

/// What [`parse_nanos`] reads: a date, then optionally a time (after `T`, `t` or a
/// space) with an optional fraction and an optional zone (`Z`, `z`, `±HH:MM`, `±HHMM`,
/// `±HH`).
const READ: &[BorrowedFormatItem<'_>] = format_description!(
    version = 2,
    "[year]-[month]-[day]\
     [optional [\
         [first [T][t][ ]][hour]:[minute]:[second][optional [.[subsecond]]]\
         [optional [[first [Z][z][\
             [offset_hour sign:mandatory][optional [[optional [:]][offset_minute]]]\
         ]]]]\
     ]]"
);

fn at_nanos(nanos: i128) -> UtcDateTime {
    UtcDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(if nanos < 0 {
        UtcDateTime::MIN
    } else {
        UtcDateTime::MAX
    })
}

fn at_seconds(secs: i64) -> UtcDateTime {
    at_nanos(i128::from(secs) * 1_000_000_000)
}

/// `2020-02-20`, then `sep`, then `18:20:38`.
struct DateTime(UtcDateTime, char);

impl fmt::Display for DateTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, m, d) = self.0.to_calendar_date();
        let (h, mi, s) = self.0.as_hms();
        let (m, sep) = (u8::from(m), self.1);
        write!(f, "{y:04}-{m:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}")
    }
}

/// `2020-02-20T18:20:38Z` for Unix seconds.
pub fn iso_seconds(secs: i64) -> String {
    format!("{}Z", DateTime(at_seconds(secs), 'T'))
}

/// `2020-02-20T18:20:38.123Z` for Unix milliseconds (always three digits).
pub fn iso_millis(ms: i64) -> String {
    let at = at_nanos(i128::from(ms) * 1_000_000);
    format!("{}.{:03}Z", DateTime(at, 'T'), at.millisecond())
}

/// `2020-02-20T18:20:38+00:00`, the form Secure Endpoint uses (`date`, `start_date`).
pub fn iso_offset(secs: i64) -> String {
    format!("{}+00:00", DateTime(at_seconds(secs), 'T'))
}

/// `2020-02-20 18:20:38`, a ServiceNow glide date-time (UTC).
pub fn glide(secs: i64) -> String {
    DateTime(at_seconds(secs), ' ').to_string()
}

/// Unix seconds and the nanoseconds past them of an ISO-8601 date-time:
/// `YYYY-MM-DD[(T|t| )HH:MM:SS[.fraction][Z|z|±HH:MM|±HHMM|±HH]]`, surrounding
/// whitespace ignored. No zone means UTC, a bare date its midnight UTC. Digits of the
/// fraction past nanoseconds are dropped. `None` for anything else, an impossible date
/// (`2020-02-30`) or time (`24:00:00`, a leap second `…:60`) included; a `+` decoded
/// into a space (`…18:20:38 00:00`, the unencoded-query bug) does not parse.
pub fn parse_nanos(text: &str) -> Option<(i64, u32)> {
    let midnight = Parsed::new().with_hour_24(0)?;
    let at = UtcDateTime::parse_with_defaults(text.trim().as_bytes(), &READ, midnight).ok()?;
    Some((at.unix_timestamp(), at.nanosecond()))
}

/// [`parse_nanos`] to whole Unix seconds (the fraction dropped).
pub fn parse(text: &str) -> Option<i64> {
    parse_nanos(text).map(|(secs, _)| secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_each_form() {
        assert_eq!(iso_seconds(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso_seconds(1_582_222_838), "2020-02-20T18:20:38Z");
        assert_eq!(iso_offset(1_582_222_838), "2020-02-20T18:20:38+00:00");
        assert_eq!(iso_offset(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(iso_millis(1_582_222_838_007), "2020-02-20T18:20:38.007Z");
        assert_eq!(iso_millis(1_582_222_838_279), "2020-02-20T18:20:38.279Z");
        assert_eq!(iso_millis(1_582_222_838_000), "2020-02-20T18:20:38.000Z");
        assert_eq!(glide(1_582_222_838), "2020-02-20 18:20:38");
        assert_eq!(iso_seconds(-1), "1969-12-31T23:59:59Z");
        assert_eq!(iso_millis(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(iso_seconds(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn out_of_range_times_write_the_range_ends() {
        assert_eq!(iso_seconds(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(iso_millis(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(iso_seconds(i64::MIN), "-9999-01-01T00:00:00Z");
        assert_eq!(iso_millis(i64::MIN), "-9999-01-01T00:00:00.000Z");
    }

    #[test]
    fn parses_each_form() {
        let t = 1_582_222_838;
        assert_eq!(parse("2020-02-20T18:20:38+00:00"), Some(t));
        assert_eq!(parse("2020-02-20T19:20:38.5+01:00"), Some(t));
        assert_eq!(parse(" 2020-02-20 18:20:38Z "), Some(t));
        assert_eq!(parse("2020-02-20t18:20:38z"), Some(t));
        assert_eq!(parse("2020-02-20T18:20:38"), Some(t));
        assert_eq!(parse("2020-02-20T18:20:38.123Z"), Some(t));
        assert_eq!(parse("2024-02-29T00:00:00Z"), Some(1_709_164_800));
        assert_eq!(parse("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse("1969-12-31T23:59:59.5Z"), Some(-1));
        assert_eq!(parse_nanos("2020-02-20T18:20:38+00:00"), Some((t, 0)));
        assert_eq!(
            parse_nanos("2020-02-20T20:20:38.5+02:00"),
            Some((t, 500_000_000))
        );
        assert_eq!(parse_nanos("2020-02-20T18:20:38Z"), Some((t, 0)));
        assert_eq!(parse_nanos("2020-02-20T13:20:38-0500"), Some((t, 0)));
        assert_eq!(parse_nanos("2020-02-20T13:20:38-05"), Some((t, 0)));
        assert_eq!(parse_nanos("2020-02-20"), Some((1_582_156_800, 0)));
        // The crate reads a sign before the year.
        assert_eq!(parse("+2020-02-20T18:20:38Z"), Some(t));
        assert_eq!(
            parse_nanos("2020-02-20T18:20:38.1234567891234Z"),
            Some((t, 123_456_789))
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "yesterday",
            "garbage",
            "2020-13-01T00:00:00Z",
            "2020-02-30T00:00:00Z",
            "2020-02-20T24:00:00Z",
            "2020-02-20T18:20",
            "2020-02-20T18:20Z",
            "2020-02-20X18:20:38Z",
            "2020-02-20T18:20:38+0",
            "2020-02-20T18:20:38+00:",
            "2020-02-20T18:20:38.Z",
            "2020-02-20T18:20:38Zjunk",
            "2020-02-20T18:20:38 00:00",
            "20200220T182038Z",
            "2020-2-20T18:20:38Z",
            "２０２０-02-20T18:20:38Z",
        ] {
            assert_eq!(parse_nanos(bad), None, "{bad}");
        }
    }

    #[test]
    fn round_trips_many_days() {
        for secs in (0..4_102_444_800i64).step_by(86_399 * 97) {
            assert_eq!(parse(&iso_seconds(secs)), Some(secs));
            assert_eq!(parse_nanos(&iso_offset(secs)), Some((secs, 0)));
            assert_eq!(parse(&iso_millis(secs * 1000 + 7)), Some(secs));
        }
    }
}
