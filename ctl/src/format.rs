//! How values read in every output: times (RFC 3339 in UTC: seconds for jobs, tasks and
//! workers, milliseconds for events and log lines, whose order matters), ages relative to
//! an injected `now`, metrics to four significant digits, and rates as their `Display` form (`R<n>`, `linear`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `2025-03-01T12:00:00Z`, or `None` for the protocol's "unset" (0 or negative).
pub fn time_seconds(unix_ms: i64) -> Option<String> {
    system_time(unix_ms).map(|time| humantime::format_rfc3339_seconds(time).to_string())
}

/// `2025-03-01T12:00:00.123Z`, or `None` when unset.
pub fn time_millis(unix_ms: i64) -> Option<String> {
    system_time(unix_ms).map(|time| humantime::format_rfc3339_millis(time).to_string())
}

fn system_time(unix_ms: i64) -> Option<SystemTime> {
    u64::try_from(unix_ms)
        .ok()
        .filter(|ms| *ms > 0)
        .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
}

/// `3s ago`, `5m ago`, `2h ago`, `4d ago`; `-` when unset. A time slightly in the future
/// (clock skew between hosts) reads as `0s ago`.
pub fn ago(unix_ms: i64, now_unix_ms: i64) -> String {
    if unix_ms <= 0 {
        return "-".to_string();
    }
    let seconds = (now_unix_ms - unix_ms).max(0) / 1000;
    match seconds {
        s if s < 60 => format!("{s}s ago"),
        s if s < 3600 => format!("{}m ago", s / 60),
        s if s < 86_400 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86_400),
    }
}

/// Four significant digits: `0.01235`, `1.235`, `123.5`, `1235`; outside 1e-4..1e5,
/// scientific (`1.235e-6`). Trailing zeros stay, so a column of errors lines up.
pub fn sig4(value: f64) -> String {
    if value == 0.0 {
        return "0.000".to_string();
    }
    if !value.is_finite() {
        return value.to_string();
    }
    // Rounding to 4 digits first decides the exponent (9.9996 rounds up to 10.00).
    let scientific = format!("{value:.3e}");
    let exponent: i32 = scientific
        .rsplit_once('e')
        .and_then(|(_, exp)| exp.parse().ok())
        .unwrap_or(0);
    if !(-4..5).contains(&exponent) {
        return scientific;
    }
    let decimals = (3 - exponent).max(0) as usize;
    format!("{value:.decimals$}")
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(time_seconds(1_740_830_400_123).unwrap(), "2025-03-01T12:00:00Z");
        assert_eq!(time_millis(1_740_830_400_123).unwrap(), "2025-03-01T12:00:00.123Z");
        assert_eq!(time_seconds(0), None);
        assert_eq!(time_millis(-5), None);
    }

    #[test]
    fn ages_are_relative() {
        let now = 1_000_000_000;
        assert_eq!(ago(now - 3_400, now), "3s ago");
        assert_eq!(ago(now - 5 * 60_000, now), "5m ago");
        assert_eq!(ago(now - 2 * 3_600_000, now), "2h ago");
        assert_eq!(ago(now - 4 * 86_400_000, now), "4d ago");
        assert_eq!(ago(now + 500, now), "0s ago");
        assert_eq!(ago(0, now), "-");
    }

    #[test]
    fn four_significant_digits() {
        assert_eq!(sig4(0.0123456), "0.01235");
        assert_eq!(sig4(1.23456), "1.235");
        assert_eq!(sig4(123.456), "123.5");
        assert_eq!(sig4(1234.56), "1235");
        assert_eq!(sig4(0.5), "0.5000");
        assert_eq!(sig4(9.9996), "10.00");
        assert_eq!(sig4(0.00012346), "0.0001235");
        assert_eq!(sig4(0.0000012346), "1.235e-6");
        assert_eq!(sig4(123456.0), "1.235e5");
        assert_eq!(sig4(-0.0123456), "-0.01235");
        assert_eq!(sig4(0.0), "0.000");
        assert_eq!(sig4(f64::NAN), "NaN");
    }
}
