//! `policy: backlog`'s sliding window: KEDA's loop (the HPA's scale-down stabilization), the
//! highest recommendation within the window wins. [`super::decision`] runs the backlog rule
//! on it, and `policy: drain` falls back to it while it has no measured throughput.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Recommendations within a window, as a monotonic queue: values strictly decrease from front
/// to back, so the front is the window's maximum.
#[derive(Debug, Clone, Default)]
pub struct Window {
    q: VecDeque<(Instant, u32)>,
}

impl Window {
    /// Adds `rec` taken at `at`, dropping what left the `window` (the latest always stays).
    pub fn push(&mut self, at: Instant, rec: u32, window: Duration) {
        while self.q.back().is_some_and(|&(_, r)| r <= rec) {
            self.q.pop_back();
        }
        self.q.push_back((at, rec));
        let Some(start) = at.checked_sub(window) else { return };
        while self.q.len() > 1 && self.q.front().is_some_and(|&(t, _)| t < start) {
            self.q.pop_front();
        }
    }

    /// The highest recommendation taken at or after `start` (all of them for `None`).
    pub fn max_since(&self, start: Option<Instant>) -> Option<u32> {
        self.q.iter().filter(|(t, _)| start.is_none_or(|w| *t >= w)).map(|&(_, r)| r).max()
    }

    /// When the oldest recommendation above `rec` taken at or after `start` was taken.
    pub fn first_above(&self, start: Option<Instant>, rec: u32) -> Option<Instant> {
        self.q.iter().find(|&&(t, r)| start.is_none_or(|w| t >= w) && r > rec).map(|&(t, _)| t)
    }

    /// How many recommendations the queue holds (at most one per distinct value).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.q.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_window_maximum() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = Window::default();
        for (t, r) in [(0, 5), (10, 9), (20, 3), (30, 4)] {
            w.push(t0 + s(t), r, s(15));
        }
        // 9 at 10 s left the 15 s window at 30 s; 4 and 3 remain, and 3 < 4 was dropped.
        assert_eq!(w.max_since(None), Some(4));
        assert_eq!(w.first_above(None, 3), Some(t0 + s(30)));
    }
}
