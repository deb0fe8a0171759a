//! Each trigger's decision log: what every poll saw and what ebb decided, with the rule that
//! bound the decision ([`Why`], returned by the decision functions themselves), bounded in
//! entries and age so 10,000 triggers stay small (the bench measures it).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use super::decision::Why;

/// Entries kept per trigger: an hour at KEDA's default 30 s `pollingInterval`; less time at
/// shorter intervals.
pub const MAX_ENTRIES: usize = 120;
/// Entries older than this are dropped.
pub const MAX_AGE: Duration = Duration::from_secs(3600);

/// One poll of the trigger's source and the decision that followed. Kept small (64 bytes; a
/// test holds it there): 10,000 triggers keep 1.2 million of them. Unknown numbers are NaN,
/// `null` in JSON.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Entry {
    /// When the poll was taken (Unix milliseconds).
    pub at_ms: u64,
    /// The trigger's metric (backlog, lag, query value); NaN when the poll failed.
    pub metric: f32,
    /// The trigger's activity (KEDA's activation rule) at that poll.
    pub active: bool,
    /// `policy: drain`'s arrival rate and per-replica throughput estimates (messages/s).
    pub arrival_rate: f32,
    pub throughput: f32,
    /// The count the measurement alone asks for, before the rule's guards.
    pub recommendation: Option<u32>,
    /// The count ebb decided.
    pub desired: u32,
    /// The rule that bound it.
    pub why: Why,
    /// The poll failed with this error kind: the decision is held from the last good poll.
    pub source_error: Option<&'static str>,
    /// The activity was pushed to KEDA over an open `StreamIsActive` after this poll.
    pub activation_pushed: bool,
}

impl Entry {
    /// The reason as a user reads it, with its deadline in wall-clock time where it has one,
    /// and whether the activity was pushed to KEDA.
    pub fn reason(&self) -> String {
        let mut r = self.rule();
        if self.activation_pushed {
            r.push_str(if self.active { "; activation pushed (active)" } else { "; activation pushed (inactive)" });
        }
        r
    }

    fn rule(&self) -> String {
        if let Some(kind) = self.source_error {
            return format!("source unreadable ({kind}): holding the last decision");
        }
        let at = |secs: f32| clock_time(self.at_ms + (f64::from(secs) * 1e3) as u64);
        match self.why {
            Why::StepLimit { step, recommendation } => {
                format!("scale-up step limit: +{step} at most, toward {recommendation}")
            }
            Why::ScaleDownWindow { remaining_secs, recommendation } => {
                format!("held by scale-down window until {} (recommendation {recommendation})", at(remaining_secs))
            }
            Why::Cooldown { remaining_secs } => {
                format!("cooldown: {:.0} s to zero (at {}) if it stays inactive", remaining_secs, at(remaining_secs))
            }
            Why::AtMaxReplicas { wanted } => format!("at maxReplicaCount (the metric asks for {wanted})"),
            other => other.label().to_owned(),
        }
    }
}

/// `Some` for a known number (not NaN).
pub fn known(v: f32) -> Option<f32> {
    (!v.is_nan()).then_some(v)
}

/// An estimate as the log stores it: NaN when unknown.
pub fn stored(v: Option<f64>) -> f32 {
    v.map_or(f32::NAN, |v| v as f32)
}

/// `HH:MM:SS` UTC of Unix milliseconds.
pub fn clock_time(ms: u64) -> String {
    let s = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// A bounded ring of [`Entry`]s.
#[derive(Debug, Default)]
pub struct DecisionLog {
    entries: Mutex<VecDeque<Entry>>,
}

impl DecisionLog {
    pub fn push(&self, e: Entry) {
        let mut q = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() == MAX_ENTRIES {
            q.pop_front();
        }
        let oldest = e.at_ms.saturating_sub(MAX_AGE.as_millis() as u64);
        while q.front().is_some_and(|f| f.at_ms < oldest) {
            q.pop_front();
        }
        q.push_back(e);
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect()
    }

    pub fn last(&self) -> Option<Entry> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).back().copied()
    }

    /// Marks the latest entry: its activity went to KEDA over `StreamIsActive`.
    pub fn mark_pushed(&self) {
        if let Some(e) = self.entries.lock().unwrap_or_else(|p| p.into_inner()).back_mut() {
            e.activation_pushed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at_ms: u64) -> Entry {
        Entry {
            at_ms,
            metric: 1.0,
            active: true,
            arrival_rate: f32::NAN,
            throughput: f32::NAN,
            recommendation: Some(1),
            desired: 1,
            why: Why::Recommendation,
            source_error: None,
            activation_pushed: false,
        }
    }

    #[test]
    fn entries_stay_small_and_unknowns_are_null() {
        assert!(std::mem::size_of::<Entry>() <= 64, "{} bytes", std::mem::size_of::<Entry>());
        let v = serde_json::to_value(entry(0)).unwrap();
        assert_eq!((v["metric"].as_f64(), v["arrival_rate"].is_null()), (Some(1.0), true));
        assert_eq!((known(f32::NAN), known(2.0), stored(None).is_nan()), (None, Some(2.0), true));
    }

    #[test]
    fn the_log_is_bounded_in_entries_and_age() {
        let log = DecisionLog::default();
        for i in 0..(MAX_ENTRIES as u64 + 50) {
            log.push(entry(i * 1000));
        }
        let e = log.entries();
        assert_eq!(e.len(), MAX_ENTRIES);
        assert_eq!(e.last().unwrap().at_ms, (MAX_ENTRIES as u64 + 49) * 1000);
        // An entry an hour and more later leaves only itself.
        log.push(entry(10_000_000));
        assert_eq!(log.entries().len(), 1);
    }

    #[test]
    fn reasons_read_as_sentences_with_their_deadlines() {
        let at_ms = 12 * 3_600_000 + 2 * 60_000 + 5_000; // 12:02:05
        let with = |why, err| Entry { why, source_error: err, ..entry(at_ms) };
        let rows: &[(Entry, &str)] = &[
            (
                with(Why::ScaleDownWindow { remaining_secs: 60.0, recommendation: 3 }, None),
                "held by scale-down window until 12:03:05 (recommendation 3)",
            ),
            (
                with(Why::Cooldown { remaining_secs: 240.0 }, None),
                "cooldown: 240 s to zero (at 12:06:05) if it stays inactive",
            ),
            (with(Why::AtMaxReplicas { wanted: 40 }, None), "at maxReplicaCount (the metric asks for 40)"),
            (with(Why::StepLimit { step: 2, recommendation: 9 }, None), "scale-up step limit: +2 at most, toward 9"),
            (with(Why::Recommendation, Some("timeout")), "source unreadable (timeout): holding the last decision"),
            (
                with(Why::Drain { reason: super::super::drain::Reason::Stalled }, None),
                "consumer stalled: not scaling up",
            ),
            (Entry { activation_pushed: true, ..entry(at_ms) }, "recommendation; activation pushed (active)"),
        ];
        for (e, want) in rows {
            assert_eq!(e.reason(), *want);
        }
    }
}
