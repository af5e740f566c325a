//! Rate limits for log lines about repeated events.
//!
//! A child, a client or a producer can make the same thing happen thousands
//! of times a second (a bogus `ack`, a crash loop, running out of fds).
//! Each such event still updates its counter, but only the first
//! [`RateLimit::burst`] lines per key and window are logged; the rest are
//! counted and summarised once the window ends ("… and 2,941 more in the
//! last 10s"). Pure: time comes in as an argument, and the summary is due
//! at a deadline the event loop waits for (there is no timer of its own,
//! and no deadline at all while nothing is suppressed).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How many lines per key a window lets through by default.
pub const DEFAULT_BURST: u32 = 5;
/// The default window.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

/// Lines suppressed for one key during a window that has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppressed {
    pub key: String,
    pub count: u64,
    pub window: Duration,
}

/// The summary line: "KEY: N more in the last 10s (not logged one by one)".
impl std::fmt::Display for Suppressed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} more in the last {}s (not logged one by one)",
            self.key,
            self.count,
            self.window.as_secs()
        )
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct RateLimit {
    burst: u32,
    window: Duration,
    keys: HashMap<String, Window>,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit::new(DEFAULT_BURST, DEFAULT_WINDOW)
    }
}

impl RateLimit {
    pub fn new(burst: u32, window: Duration) -> RateLimit {
        RateLimit {
            burst: burst.max(1),
            window,
            keys: HashMap::new(),
        }
    }

    /// Whether a line about `key` may be logged at `now`; when not, it is
    /// counted for the summary.
    pub fn allow(&mut self, key: &str, now: Instant) -> bool {
        let window = self.window;
        let entry = match self.keys.get_mut(key) {
            Some(entry) => entry,
            None => self.keys.entry(key.to_owned()).or_insert(Window {
                start: now,
                logged: 0,
                suppressed: 0,
            }),
        };
        if now.saturating_duration_since(entry.start) >= window && entry.suppressed == 0 {
            // A new window; a window with suppressed lines is closed by
            // `due`, so that its summary comes before newer lines.
            *entry = Window {
                start: now,
                logged: 0,
                suppressed: 0,
            };
        }
        if entry.logged < self.burst {
            entry.logged += 1;
            true
        } else {
            entry.suppressed += 1;
            false
        }
    }

    /// When the next summary is due: the end of the earliest window that
    /// suppressed something. `None` when nothing is suppressed.
    pub fn deadline(&self) -> Option<Instant> {
        self.keys
            .values()
            .filter(|w| w.suppressed > 0)
            .map(|w| w.start.checked_add(self.window).unwrap_or(w.start))
            .min()
    }

    /// Summaries of the windows that ended by `now` with suppressed lines;
    /// keys whose window ended quietly are forgotten.
    pub fn due(&mut self, now: Instant) -> Vec<Suppressed> {
        let window = self.window;
        let mut out = Vec::new();
        self.keys.retain(|key, w| {
            if now.saturating_duration_since(w.start) < window {
                return true;
            }
            if w.suppressed > 0 {
                out.push(Suppressed {
                    key: key.clone(),
                    count: w.suppressed,
                    window,
                });
            }
            false
        });
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_a_burst_through_then_counts_and_summarises_once() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(2, Duration::from_secs(10));
        assert!(limit.allow("a", t0));
        assert!(limit.allow("a", t0));
        assert_eq!(limit.deadline(), None, "nothing suppressed yet");
        for _ in 0..1000 {
            assert!(!limit.allow("a", t0 + Duration::from_secs(1)));
        }
        assert!(limit.allow("b", t0), "keys are independent");
        assert_eq!(limit.deadline(), Some(t0 + Duration::from_secs(10)));
        assert!(limit.due(t0 + Duration::from_secs(9)).is_empty());
        let due = limit.due(t0 + Duration::from_secs(10));
        assert_eq!(
            due,
            [Suppressed {
                key: "a".into(),
                count: 1000,
                window: Duration::from_secs(10)
            }]
        );
        assert_eq!(limit.deadline(), None);
        assert!(
            limit.allow("a", t0 + Duration::from_secs(11)),
            "a new window"
        );
    }

    #[test]
    fn a_quiet_window_ends_without_a_summary() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(1, Duration::from_secs(1));
        assert!(limit.allow("a", t0));
        assert!(limit.due(t0 + Duration::from_secs(5)).is_empty());
        assert!(limit.allow("a", t0 + Duration::from_secs(5)));
    }
}
