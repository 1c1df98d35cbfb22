//! Times on the wire are RFC 3339 strings; inside Sluice they are milliseconds since the
//! Unix epoch (`i64`).

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Formats milliseconds since the epoch as RFC 3339 in UTC with exactly three fraction
/// digits (`2026-11-25T08:00:00.000Z`), so that times of one width sort as strings.
pub fn format_ms(ms: i64) -> String {
    match OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) if (0..=9999).contains(&t.year()) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        // Out of RFC 3339's range: not reachable through the API, whose limits keep
        // times within a year of now.
        _ => format!("@{ms}ms"),
    }
}

/// Parses an RFC 3339 time (any offset) into milliseconds since the epoch.
pub fn parse_ms(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_milliseconds() {
        for ms in [0i64, 1, 999, 1_764_000_000_123, 4_102_444_800_000] {
            assert_eq!(parse_ms(&format_ms(ms)), Some(ms));
        }
        assert_eq!(
            parse_ms("2026-11-25T10:00:00+02:00"),
            parse_ms("2026-11-25T08:00:00Z")
        );
        assert!(parse_ms("2026-11-25T08:00:00.250Z").is_some_and(|ms| ms % 1000 == 250));
        assert_eq!(format_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_ms(1_500), "1970-01-01T00:00:01.500Z");
        assert_eq!(parse_ms("yesterday"), None);
    }
}
