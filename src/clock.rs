//! Wall-clock time as unix seconds/milliseconds, in one place. The pure core
//! (policy, token checks, approvals) takes these values as arguments; only
//! the edges read the clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix seconds of `t` (0 before 1970).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Unix milliseconds of `t` (0 before 1970).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    unix_secs(SystemTime::now())
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// The time source of the CA core. The server makes one [`SystemClock`] and
/// hands it down; everything below it asks the clock instead of reading
/// `SystemTime::now()` or `Instant::now()`, so tests can set the time.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time: certificate validity, token expiry, audit records.
    fn now(&self) -> SystemTime;
    /// Monotonic time since a fixed start: rate limits and durations. Never
    /// goes back, whatever the wall clock does.
    fn monotonic(&self) -> std::time::Duration;
}

/// The real clock.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    start: std::time::Instant,
}

impl SystemClock {
    /// A clock whose monotonic time starts now.
    pub fn new() -> SystemClock {
        SystemClock {
            start: std::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn monotonic(&self) -> std::time::Duration {
        self.start.elapsed()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug)]
pub struct ManualClock {
    state: std::sync::Mutex<(SystemTime, std::time::Duration)>,
}

impl ManualClock {
    /// A clock standing at unix second `unix`.
    pub fn at(unix: u64) -> ManualClock {
        ManualClock {
            state: std::sync::Mutex::new((
                UNIX_EPOCH + std::time::Duration::from_secs(unix),
                std::time::Duration::ZERO,
            )),
        }
    }

    /// Moves wall-clock and monotonic time forward by `d`.
    pub fn advance(&self, d: std::time::Duration) {
        let mut g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += d;
        g.1 += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    fn monotonic(&self) -> std::time::Duration {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = ManualClock::at(1_800_000_000);
        assert_eq!(unix_secs(c.now()), 1_800_000_000);
        assert_eq!(c.monotonic(), std::time::Duration::ZERO);
        c.advance(std::time::Duration::from_secs(90));
        assert_eq!(unix_secs(c.now()), 1_800_000_090);
        assert_eq!(c.monotonic(), std::time::Duration::from_secs(90));
    }

    #[test]
    fn the_system_clock_is_monotonic() {
        let c = SystemClock::new();
        let a = c.monotonic();
        assert!(c.monotonic() >= a);
        assert!(unix_secs(c.now()) > 1_700_000_000);
    }
}
