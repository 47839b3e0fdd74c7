//! Wall-clock time as plain numbers: Unix milliseconds for session records and leases (shared
//! with Redis, so they must agree between replicas), Unix seconds for token `exp`/`nbf`, and
//! fractional seconds for the timestamp gauges. Monotonic deadlines use `Instant` instead.
//!
//! A clock set before 1970 reads as 0 rather than failing: every caller compares against it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    since_epoch().map_or(0, millis)
}

/// Whole seconds since the Unix epoch (the unit of JWT `exp`, `nbf` and `iat`).
pub fn unix_secs() -> u64 {
    since_epoch().map_or(0, |d| d.as_secs())
}

/// Seconds since the Unix epoch with their fraction (timestamp gauges).
pub fn unix_secs_f64() -> f64 {
    since_epoch().map_or(0.0, |d| d.as_secs_f64())
}

/// The milliseconds of `d`, saturating at `u64::MAX` (for Unix-millisecond arithmetic).
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn since_epoch() -> Option<Duration> {
    SystemTime::now().duration_since(UNIX_EPOCH).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_units_agree() {
        let (ms, s) = (unix_ms(), unix_secs());
        assert!(ms / 1000 >= s && ms / 1000 <= s + 1, "{ms} ms vs {s} s");
        assert!((unix_secs_f64() - s as f64).abs() < 2.0);
        assert_eq!(millis(Duration::from_secs(3)), 3_000);
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
