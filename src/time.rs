//! Dates as people and protocols read them, formatted with jiff.
//!
//! mayfly stores instants as unix seconds or milliseconds; these functions
//! turn them into the few text forms the CA prints: `YYYY-MM-DD HH:MMZ` in
//! tables and reports, `YYYY-MM-DD` for chart days, and the RFC 7231
//! IMF-fixdate of HTTP `Last-Modified`. The calendar arithmetic is jiff's,
//! so there is one implementation of it in the program, not one per caller.
//!
//! jiff's calendar ends with the year 9999. A later instant (only a damaged
//! or tampered record can hold one) prints as 9999-12-31 23:59:59 rather
//! than panicking.

use jiff::civil::DateTime;
use jiff::SignedDuration;

/// An instant as whole seconds since 1970-01-01 UTC: what OpenSSH
/// certificates, JWT claims and approval requests carry. On the wire and
/// in stored JSON it is the bare number (`serde(transparent)`).
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct UnixSecs(pub u64);

impl UnixSecs {
    /// The latest representable instant.
    pub const MAX: UnixSecs = UnixSecs(u64::MAX);

    /// The unix seconds of `t` (0 before 1970).
    pub fn of(t: std::time::SystemTime) -> UnixSecs {
        UnixSecs(crate::clock::unix_secs(t))
    }

    /// The number of seconds.
    pub fn get(self) -> u64 {
        self.0
    }

    /// `self + d`, stopping at [`UnixSecs::MAX`].
    pub fn saturating_add(self, d: std::time::Duration) -> UnixSecs {
        UnixSecs(self.0.saturating_add(d.as_secs()))
    }

    /// `self - d`, stopping at 1970.
    pub fn saturating_sub(self, d: std::time::Duration) -> UnixSecs {
        UnixSecs(self.0.saturating_sub(d.as_secs()))
    }

    /// Seconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: UnixSecs) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::fmt::Display for UnixSecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<UnixSecs> for u64 {
    fn from(t: UnixSecs) -> u64 {
        t.0
    }
}

/// A certificate lifetime a bot asked for: whole seconds, never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ttl(std::time::Duration);

impl Ttl {
    /// `secs` seconds; `None` for 0, which is no lifetime at all.
    pub fn from_secs(secs: u64) -> Option<Ttl> {
        (secs > 0).then(|| Ttl(std::time::Duration::from_secs(secs)))
    }

    /// The lifetime as a duration.
    pub fn duration(self) -> std::time::Duration {
        self.0
    }

    /// Whole seconds.
    pub fn as_secs(self) -> u64 {
        self.0.as_secs()
    }
}

/// Seconds in a UTC day (no leap seconds in unix time).
const DAY_SECS: u64 = 86_400;

/// 1970-01-01 00:00:00, where unix time starts.
const EPOCH: DateTime = DateTime::constant(1970, 1, 1, 0, 0, 0, 0);

/// `unix` (seconds since 1970-01-01 UTC) as the UTC civil date-time,
/// saturating at 9999-12-31 23:59:59. (A civil date-time, not a
/// `Timestamp`: jiff's timestamps stop a day short of 9999-12-31 UTC.)
fn utc(unix: u64) -> DateTime {
    i64::try_from(unix)
        .ok()
        .and_then(|s| EPOCH.checked_add(SignedDuration::from_secs(s)).ok())
        .unwrap_or(DateTime::MAX)
}

/// `YYYY-MM-DD HH:MMZ` (UTC) of a unix time: e.g. `2024-02-29 12:34Z`.
pub fn utc_minute(unix: u64) -> String {
    utc(unix).strftime("%Y-%m-%d %H:%MZ").to_string()
}

/// RFC 3339 (UTC, seconds) of a unix time: e.g. `2024-02-29T12:34:56Z`.
pub fn rfc3339(unix: u64) -> String {
    utc(unix).strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// `YYYY-MM-DD` (UTC) of a day number (days since 1970-01-01).
pub fn utc_day(day: u64) -> String {
    utc(day.saturating_mul(DAY_SECS))
        .strftime("%Y-%m-%d")
        .to_string()
}

/// RFC 7231 IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) of a unix time,
/// for HTTP `Last-Modified`.
pub fn http_date(unix: u64) -> String {
    utc(unix).strftime("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_prints_as_1970_01_01() {
        assert_eq!(utc_minute(0), "1970-01-01 00:00Z");
        assert_eq!(utc_day(0), "1970-01-01");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_210_096), "2024-02-29T12:34:56Z");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    #[test]
    fn leap_days_and_year_ends_print_as_the_calendar_says() {
        // 2024-02-29 12:34:56 UTC.
        assert_eq!(utc_minute(1_709_210_096), "2024-02-29 12:34Z");
        assert_eq!(utc_day(19_782), "2024-02-29");
        assert_eq!(utc_day(19_783), "2024-03-01");
        // 2000 is a leap year (divisible by 400), 2100 is not.
        assert_eq!(utc_day(11_016), "2000-02-29");
        assert_eq!(utc_day(47_540), "2100-02-28");
        assert_eq!(utc_day(47_541), "2100-03-01");
        // Last second of a year, first of the next.
        assert_eq!(utc_minute(1_704_067_199), "2023-12-31 23:59Z");
        assert_eq!(utc_minute(1_704_067_200), "2024-01-01 00:00Z");
        assert_eq!(http_date(1_709_210_096), "Thu, 29 Feb 2024 12:34:56 GMT");
        // RFC 7231's own example.
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
    }

    #[test]
    fn fields_are_zero_padded() {
        // 2001-02-03 04:05:06 UTC.
        assert_eq!(utc_minute(981_173_106), "2001-02-03 04:05Z");
        assert_eq!(http_date(981_173_106), "Sat, 03 Feb 2001 04:05:06 GMT");
    }

    #[test]
    fn instants_beyond_year_9999_saturate_instead_of_panicking() {
        assert_eq!(utc_minute(u64::MAX), "9999-12-31 23:59Z");
        assert_eq!(utc_day(u64::MAX), "9999-12-31");
        assert_eq!(http_date(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn unix_secs_saturate_and_serialize_as_a_bare_number() {
        use std::time::Duration;
        assert_eq!(
            UnixSecs(5).saturating_sub(Duration::from_secs(9)),
            UnixSecs(0)
        );
        assert_eq!(
            UnixSecs::MAX.saturating_add(Duration::from_secs(1)),
            UnixSecs::MAX
        );
        assert_eq!(UnixSecs(10).since(UnixSecs(4)), 6);
        assert_eq!(UnixSecs(4).since(UnixSecs(10)), 0);
        assert_eq!(
            serde_json::to_string(&UnixSecs(1_800_000_000)).unwrap(),
            "1800000000"
        );
        let back: UnixSecs = serde_json::from_str("42").unwrap();
        assert_eq!(back, UnixSecs(42));
    }

    #[test]
    fn a_ttl_is_never_zero() {
        assert_eq!(Ttl::from_secs(0), None);
        assert_eq!(Ttl::from_secs(300).map(Ttl::as_secs), Some(300));
    }
}
