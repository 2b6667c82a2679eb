//! Logs that peers cannot flood: events a remote party can trigger at will (refused
//! invitations, rejected gossip, refused authorizations) pass at most a few times per window
//! for each kind, and every field they echo from the remote party is escaped and cut short.
//! Nothing is lost: each such event is also counted in a metric, and the next line that
//! passes says how many were left out.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

/// Lines of one kind let through per window.
const BURST: u32 = 5;
/// The window.
const WINDOW: Duration = Duration::from_secs(10);
/// Longest text echoed from a remote party, in characters (after escaping).
const MAX_ECHO: usize = 200;

/// Counts lines per kind within a window.
#[derive(Debug, Default)]
pub struct LogLimiter {
    kinds: Mutex<HashMap<&'static str, Window>>,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    passed: u32,
    suppressed: u64,
}

impl LogLimiter {
    /// Whether a line of `kind` may be logged at `now`: `Some(n)` with the number of lines of
    /// that kind left out since the last one that passed, or `None` to leave this one out.
    pub fn allow_at(&self, kind: &'static str, now: Instant) -> Option<u64> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let w = kinds.entry(kind).or_insert(Window {
            started: now,
            passed: 0,
            suppressed: 0,
        });
        if now.duration_since(w.started) >= WINDOW {
            w.started = now;
            w.passed = 0;
        }
        if w.passed < BURST {
            w.passed += 1;
            Some(std::mem::take(&mut w.suppressed))
        } else {
            w.suppressed += 1;
            None
        }
    }
}

static LIMITER: LazyLock<LogLimiter> = LazyLock::new(LogLimiter::default);

/// Whether a line of `kind` may be logged now (see [`LogLimiter::allow_at`]).
pub fn allow(kind: &'static str) -> Option<u64> {
    LIMITER.allow_at(kind, Instant::now())
}

/// Text from a remote party as a log field: control characters and quotes escaped, at most
/// [`MAX_ECHO`] characters, with the original length when cut.
pub fn echo(text: &str) -> String {
    let escaped: String = text.escape_debug().collect();
    if escaped.chars().count() <= MAX_ECHO {
        escaped
    } else {
        let cut: String = escaped.chars().take(MAX_ECHO).collect();
        format!("{cut}… ({} bytes)", text.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_lines_are_counted_until_the_window_ends() {
        let limiter = LogLimiter::default();
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert_eq!(limiter.allow_at("a", t0), Some(0));
        }
        for _ in 0..1000 {
            assert_eq!(limiter.allow_at("a", t0 + Duration::from_secs(1)), None);
        }
        // Another kind has its own budget.
        assert_eq!(limiter.allow_at("b", t0), Some(0));
        // The next window says how many were left out, once.
        let t1 = t0 + WINDOW;
        assert_eq!(limiter.allow_at("a", t1), Some(1000));
        assert_eq!(limiter.allow_at("a", t1), Some(0));
    }

    #[test]
    fn echoed_text_is_escaped_and_bounded() {
        assert_eq!(echo("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        let long = "x".repeat(10_000);
        let e = echo(&long);
        assert!(e.chars().count() < MAX_ECHO + 30, "{}", e.len());
        assert!(e.ends_with("(10000 bytes)"));
    }
}
