//! Workload traces: messages arriving in each second.
//!
//! Built-in traces are generated from a seed, so a run is reproducible; a CSV trace is read as
//! `time,arrivals` rows.

use std::path::Path;

use super::SimulateError;

/// Messages arriving in each second of the run, from second 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub name: String,
    pub arrivals: Vec<u64>,
}

impl Trace {
    pub fn total(&self) -> u64 {
        self.arrivals.iter().sum()
    }
}

/// Which trace to run.
#[derive(Debug, Clone, PartialEq)]
pub enum TraceKind {
    /// 100 msg/s, ±10 %.
    Steady,
    /// 20 msg/s with random bursts of 150–400 msg/s lasting 30–180 s.
    Bursty,
    /// Nothing at night; a daytime hump peaking at 200 msg/s at 14:00.
    Diurnal,
    /// Every 30 min: 120 s at 200 msg/s, then idle long enough to scale to zero.
    SpikeThenIdle,
    /// `time,arrivals` rows from a file.
    Csv(std::path::PathBuf),
}

pub const BUILT_IN: [&str; 4] = ["steady", "bursty", "diurnal", "spike-then-idle"];

/// The spike-then-idle cycle. The onset is off every poll grid used by default (5 s, 15 s,
/// 30 s), so neither policy gets a poll at the very second the work arrives.
pub const SPIKE_CYCLE: u64 = 1800;
pub const SPIKE_ONSET: u64 = 617;
pub const SPIKE_LENGTH: u64 = 120;
pub const SPIKE_RATE: f64 = 200.0;

impl TraceKind {
    pub fn parse(s: &str) -> Self {
        match s {
            "steady" => Self::Steady,
            "bursty" => Self::Bursty,
            "diurnal" => Self::Diurnal,
            "spike-then-idle" => Self::SpikeThenIdle,
            path => Self::Csv(path.into()),
        }
    }

    /// Length of a run when `--duration` is not given: a day for the diurnal trace, two hours
    /// for the others (four spike cycles).
    pub fn default_duration(&self) -> Option<u64> {
        match self {
            Self::Diurnal => Some(86_400),
            Self::Csv(_) => None,
            _ => Some(7_200),
        }
    }

    /// Builds the trace; `duration` (seconds) cuts or pads a CSV trace with idle seconds.
    pub fn build(&self, duration: Option<u64>, seed: u64) -> Result<Trace, SimulateError> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let len = duration.or(self.default_duration()).unwrap_or(0) as usize;
        let (name, arrivals) = match self {
            Self::Steady => ("steady".to_string(), (0..len).map(|_| noisy(&mut rng, 100.0)).collect()),
            Self::Bursty => ("bursty".to_string(), bursty(&mut rng, len)),
            Self::Diurnal => {
                ("diurnal".to_string(), (0..len).map(|t| noisy(&mut rng, diurnal_rate(t as u64))).collect())
            }
            Self::SpikeThenIdle => ("spike-then-idle".to_string(), (0..len as u64).map(spike_arrivals).collect()),
            Self::Csv(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| SimulateError::Read { path: path.display().to_string(), source })?;
                let mut arrivals = parse_csv(path, &text)?;
                if let Some(d) = duration {
                    arrivals.resize(d as usize, 0);
                }
                (path.display().to_string(), arrivals)
            }
        };
        Ok(Trace { name, arrivals })
    }
}

/// How each second's arrivals come from the trace (`--arrivals`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arrivals {
    /// The trace's counts as they are.
    Trace,
    /// Poisson draws with the trace's count as the mean, so a load exactly at some replicas'
    /// capacity still queues at times.
    Poisson,
}

/// `trace` with each second's count replaced by a Poisson draw of that mean, from `seed`.
pub fn poisson(trace: &Trace, seed: u64) -> Trace {
    // Another stream than the built-in traces' noise, which uses `seed` itself.
    let mut rng = fastrand::Rng::with_seed(seed ^ 0x9e37_79b9_7f4a_7c15);
    let arrivals = trace.arrivals.iter().map(|&mean| poisson_draw(&mut rng, mean as f64)).collect();
    Trace { name: trace.name.clone(), arrivals }
}

/// Knuth's method for small means; above 50 the normal approximation, rounded and never
/// negative (Knuth's loop grows with the mean and `e^-mean` underflows).
fn poisson_draw(rng: &mut fastrand::Rng, mean: f64) -> u64 {
    if mean <= 0.0 {
        return 0;
    }
    if mean > 50.0 {
        return (mean + mean.sqrt() * standard_normal(rng)).round().max(0.0) as u64;
    }
    let limit = (-mean).exp();
    let (mut k, mut p) = (0u64, 1.0);
    loop {
        p *= rng.f64();
        if p <= limit {
            return k;
        }
        k += 1;
    }
}

/// Box–Muller.
fn standard_normal(rng: &mut fastrand::Rng) -> f64 {
    let u = 1.0 - rng.f64(); // in (0, 1]: ln(0) is not finite
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * rng.f64()).cos()
}

/// `rate × U(0.9, 1.1)`, rounded up or down at random in proportion, so the mean is `rate`.
fn noisy(rng: &mut fastrand::Rng, rate: f64) -> u64 {
    let x = rate * (0.9 + 0.2 * rng.f64());
    let whole = x.floor();
    whole as u64 + u64::from(rng.f64() < x - whole)
}

fn bursty(rng: &mut fastrand::Rng, len: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(len);
    let (mut burst_left, mut burst_rate) = (0u64, 0.0);
    for _ in 0..len {
        // One burst every five minutes on average.
        if burst_left == 0 && rng.f64() < 1.0 / 300.0 {
            burst_left = rng.u64(30..=180);
            burst_rate = rng.u64(150..=400) as f64;
        }
        let rate = if burst_left > 0 {
            burst_left -= 1;
            burst_rate
        } else {
            20.0
        };
        out.push(noisy(rng, rate));
    }
    out
}

/// 0 from 22:00 to 06:00; `200 × sin²` in between, peaking at 14:00.
fn diurnal_rate(t: u64) -> f64 {
    let hour = (t % 86_400) as f64 / 3600.0;
    if !(6.0..22.0).contains(&hour) {
        return 0.0;
    }
    200.0 * (std::f64::consts::PI * (hour - 6.0) / 16.0).sin().powi(2)
}

fn spike_arrivals(t: u64) -> u64 {
    let phase = t % SPIKE_CYCLE;
    if (SPIKE_ONSET..SPIKE_ONSET + SPIKE_LENGTH).contains(&phase) { SPIKE_RATE as u64 } else { 0 }
}

/// Most seconds a CSV trace may span (30 days): the run keeps per-second series.
pub const MAX_SECONDS: u64 = 30 * 86_400;

/// Parses `time,arrivals` rows: `time` in seconds from the start (fractional allowed, rows in
/// any order, rows in the same second add up), `arrivals` the messages arriving then
/// (fractional counts carry over to the next second, so totals are kept). Blank lines and
/// `#` comments are skipped; a first row that is not numeric is a header.
pub fn parse_csv(path: &Path, text: &str) -> Result<Vec<u64>, SimulateError> {
    let err = |line: usize, reason: String| SimulateError::Csv { path: path.display().to_string(), line, reason };
    let mut per_second: Vec<f64> = Vec::new();
    let mut seen_row = false;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let row = raw.trim();
        if row.is_empty() || row.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = row.split(',').map(str::trim).collect();
        if fields.len() != 2 {
            return Err(err(line, format!("expected 2 fields `time,arrivals`, found {}", fields.len())));
        }
        let (time, count) = (fields[0].parse::<f64>(), fields[1].parse::<f64>());
        if !seen_row && time.is_err() && count.is_err() {
            seen_row = true;
            continue;
        }
        seen_row = true;
        let time = match time {
            Ok(t) if t.is_finite() && t >= 0.0 && t < MAX_SECONDS as f64 => t,
            _ => {
                return Err(err(
                    line,
                    format!("time {:?} is not a number of seconds in [0, {MAX_SECONDS})", fields[0]),
                ));
            }
        };
        let count = match count {
            Ok(c) if c.is_finite() && c >= 0.0 => c,
            _ => return Err(err(line, format!("arrivals {:?} is not a non-negative number", fields[1]))),
        };
        let second = time.floor() as usize;
        if per_second.len() <= second {
            per_second.resize(second + 1, 0.0);
        }
        per_second[second] += count;
    }
    if per_second.is_empty() {
        return Err(err(text.lines().count().max(1), "no `time,arrivals` rows".into()));
    }
    let mut carry = 0.0;
    Ok(per_second
        .into_iter()
        .map(|c| {
            let x = c + carry;
            // The epsilon keeps 0.1 × 10 from landing a hair under 1.
            let whole = (x + 1e-9).floor();
            carry = x - whole;
            whole as u64
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> Result<Vec<u64>, SimulateError> {
        parse_csv(Path::new("t.csv"), text)
    }

    #[test]
    fn csv_rows_bucket_by_second_with_header_and_comments() {
        let got = csv("time,arrivals\n# a comment\n0,5\n0.5,1\n\n3,2\n2.9,0.5\n2.95,0.5\n").unwrap();
        assert_eq!(got, vec![6, 0, 1, 2]);
    }

    #[test]
    fn fractional_counts_carry_over() {
        let got = csv(&(0..10).map(|t| format!("{t},0.1\n")).collect::<String>()).unwrap();
        assert_eq!(got.iter().sum::<u64>(), 1);
    }

    #[test]
    fn csv_errors_name_the_line() {
        for (text, line, needle) in [
            ("time,arrivals\n0,1\n1,x\n", 3, "arrivals \"x\""),
            ("0,1\n\n-1,2\n", 3, "time \"-1\""),
            ("0,1\n1,2,3\n", 2, "2 fields"),
            ("0,-4\n", 1, "non-negative"),
            ("# nothing\n", 1, "no `time,arrivals` rows"),
        ] {
            let e = csv(text).unwrap_err();
            let SimulateError::Csv { line: got, .. } = &e else { panic!("{e}") };
            assert_eq!(*got, line, "{text:?}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(&format!("t.csv: line {line}: ")) && msg.contains(needle), "{msg}");
        }
    }

    #[test]
    fn poisson_arrivals_are_seeded_and_keep_the_mean() {
        // Means on both sides of the sampler's switch at 50.
        for mean in [3u64, 10, 49, 51, 200] {
            let t = Trace { name: "c".into(), arrivals: vec![mean; 20_000] };
            let a = poisson(&t, 1);
            assert_eq!(a, poisson(&t, 1), "same seed, same draws");
            assert_ne!(a, poisson(&t, 2), "another seed, other draws");
            let got = a.total() as f64 / 20_000.0;
            assert!((got / mean as f64 - 1.0).abs() < 0.03, "mean {mean}: {got}");
            assert!(a.arrivals.iter().any(|&n| n != mean), "not the trace itself");
        }
        let idle = Trace { name: "z".into(), arrivals: vec![0; 100] };
        assert_eq!(poisson(&idle, 1).total(), 0);
    }

    #[test]
    fn built_in_traces_are_deterministic_and_shaped() {
        for name in BUILT_IN {
            let k = TraceKind::parse(name);
            let a = k.build(Some(7200), 7).unwrap();
            assert_eq!(a, k.build(Some(7200), 7).unwrap(), "{name}");
            assert_eq!(a.arrivals.len(), 7200);
        }
        let b1 = TraceKind::Bursty.build(Some(7200), 1).unwrap();
        assert_ne!(b1, TraceKind::Bursty.build(Some(7200), 2).unwrap(), "the seed matters");
        assert!(b1.arrivals.iter().any(|&a| a >= 135), "bursts happen");
        let steady = TraceKind::Steady.build(Some(3600), 1).unwrap();
        assert!(steady.arrivals.iter().all(|&a| (90..=111).contains(&a)));
        assert!((steady.total() as f64 / 3600.0 - 100.0).abs() < 1.0);
        let spike = TraceKind::SpikeThenIdle.build(None, 1).unwrap();
        assert_eq!(spike.total(), 4 * SPIKE_LENGTH * SPIKE_RATE as u64);
        assert_eq!((spike.arrivals[616], spike.arrivals[617]), (0, 200));
        let day = TraceKind::Diurnal.build(None, 1).unwrap();
        assert_eq!(day.arrivals.len(), 86_400);
        assert_eq!(day.arrivals[3 * 3600], 0, "night");
        assert!(day.arrivals[14 * 3600] >= 180, "peak");
    }
}
