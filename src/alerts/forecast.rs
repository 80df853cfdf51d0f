//! Support-load forecast: new fault episodes per day, per fault and per owner (who acts:
//! remote, customer, installer, rma, …), for the next days, with an interval — and the
//! model's own back-test against the naive seasonal baseline ("same weekday last week"),
//! so a planner can see whether to trust it.
//!
//! The model is additive Holt-Winters with a weekly season (support load follows the week)
//! and a damped trend, its three smoothing constants fitted by grid search on one-step
//! errors. With less than two weeks of history there is no season to fit: the forecast is
//! then the recent mean rate, and says so.

use std::collections::BTreeMap;

use crate::rules::Finding;

const DAY_MS: i64 = 86_400_000;
/// The season: a week of days.
pub const SEASON: usize = 7;
/// Trend damping: a trend fitted on weeks is not extended unchanged for months.
const PHI: f64 = 0.98;
/// z for an 80 % interval.
const Z80: f64 = 1.2816;

/// A fitted model.
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    pub alpha: f64,
    pub beta: f64,
    pub gamma: f64,
    level: f64,
    trend: f64,
    season: Vec<f64>,
    /// Standard deviation of the one-step errors.
    pub sigma: f64,
}

/// One day's forecast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub mean: f64,
    pub lo: f64,
    pub hi: f64,
}

/// Runs the recursion over `y`; returns the final state and the one-step squared errors.
fn run(y: &[f64], a: f64, b: f64, g: f64) -> (f64, f64, Vec<f64>, f64, usize) {
    let m = SEASON;
    let first: f64 = y[..m].iter().sum::<f64>() / m as f64;
    let second: f64 = y[m..2 * m].iter().sum::<f64>() / m as f64;
    let mut level = first;
    let mut trend = (second - first) / m as f64;
    let mut season: Vec<f64> = y[..m].iter().map(|v| v - first).collect();
    let mut sse = 0.0;
    let mut n = 0;
    for (t, &v) in y.iter().enumerate().skip(m) {
        let s = season[t % m];
        let pred = level + PHI * trend + s;
        let err = v - pred;
        sse += err * err;
        n += 1;
        let prev = level;
        level = a * (v - s) + (1.0 - a) * (prev + PHI * trend);
        trend = b * (level - prev) + (1.0 - b) * PHI * trend;
        season[t % m] = g * (v - level) + (1.0 - g) * s;
    }
    (level, trend, season, sse, n)
}

/// Fits the model to a daily series of at least two seasons; `None` when shorter.
pub fn fit(y: &[f64]) -> Option<Fit> {
    if y.len() < 2 * SEASON {
        return None;
    }
    let grid: Vec<f64> = (1..10).map(|i| i as f64 / 10.0).collect();
    let mut best: Option<(f64, f64, f64, f64)> = None;
    for &a in &grid {
        for &b in &[0.01, 0.05, 0.1, 0.2, 0.3] {
            for &g in &grid {
                let (_, _, _, sse, _) = run(y, a, b, g);
                if best.is_none_or(|x| sse < x.3) {
                    best = Some((a, b, g, sse));
                }
            }
        }
    }
    let (alpha, beta, gamma, sse) = best?;
    let (level, trend, season, _, n) = run(y, alpha, beta, gamma);
    Some(Fit {
        alpha,
        beta,
        gamma,
        level,
        trend,
        season,
        sigma: (sse / n.max(1) as f64).sqrt(),
    })
}

impl Fit {
    /// The next `h` days after the series the model was fitted to (`len` = its length).
    pub fn forecast(&self, len: usize, h: usize) -> Vec<Point> {
        let mut out = Vec::with_capacity(h);
        let mut damp = 0.0;
        for k in 1..=h {
            damp += PHI.powi(k as i32);
            let mean =
                (self.level + damp * self.trend + self.season[(len + k - 1) % SEASON]).max(0.0);
            // The h-step error grows with the level's smoothing (Hyndman et al., class 1).
            let sd = self.sigma * (1.0 + (k as f64 - 1.0) * self.alpha * self.alpha).sqrt();
            // Counts are at least Poisson-noisy, whatever the fit says.
            let sd = sd.max(mean.sqrt());
            out.push(Point {
                mean,
                lo: (mean - Z80 * sd).max(0.0),
                hi: mean + Z80 * sd,
            });
        }
        out
    }
}

/// Back-test: fit on all but the last `h` days, forecast them; mean absolute error of the
/// model and of the naive seasonal forecast (the same weekday of the last week before the
/// held-out days). `None` when the series is too short for a fit and `h` held-out days.
pub fn backtest(y: &[f64], h: usize) -> Option<(f64, f64)> {
    if h == 0 || y.len() < 2 * SEASON + h {
        return None;
    }
    let (train, test) = y.split_at(y.len() - h);
    let f = fit(train)?;
    let pred = f.forecast(train.len(), h);
    let model = pred
        .iter()
        .zip(test)
        .map(|(p, v)| (p.mean - v).abs())
        .sum::<f64>()
        / h as f64;
    let naive = test
        .iter()
        .enumerate()
        .map(|(k, v)| (train[train.len() - SEASON + k % SEASON] - v).abs())
        .sum::<f64>()
        / h as f64;
    Some((model, naive))
}

/// One series' forecast.
#[derive(Debug, Clone)]
pub struct Series {
    /// `fault F07`, `owner installer`, or `all`.
    pub group: String,
    /// Complete days of history.
    pub days: usize,
    pub history_total: f64,
    pub points: Vec<Point>,
    /// `holt-winters` or `mean` (too little history for a season).
    pub model: &'static str,
    /// (model MAE, naive seasonal MAE) on the last `horizon` days, when long enough.
    pub backtest: Option<(f64, f64)>,
}

/// Daily counts of new episodes (by their first evidence) per group, over the complete
/// days from the first finding's day up to `until_ms` (exclusive; a partial last day would
/// read as a drop in load).
pub fn daily_counts(findings: &[Finding], until_ms: i64) -> (i64, BTreeMap<String, Vec<f64>>) {
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let Some(first) = findings.iter().map(|f| f.first_ms).min() else {
        return (0, out);
    };
    let day0 = first.div_euclid(DAY_MS);
    let days = (until_ms.div_euclid(DAY_MS) - day0).max(0) as usize;
    for f in findings {
        let d = (f.first_ms.div_euclid(DAY_MS) - day0) as usize;
        if d >= days {
            continue;
        }
        for g in [
            "all".to_string(),
            format!("fault {}", f.fault),
            format!("owner {}", f.owner),
        ] {
            out.entry(g).or_insert_with(|| vec![0.0; days])[d] += 1.0;
        }
    }
    (day0 * DAY_MS, out)
}

/// Forecasts every group's next `horizon` days.
pub fn forecast(findings: &[Finding], until_ms: i64, horizon: usize) -> Vec<Series> {
    let (_, counts) = daily_counts(findings, until_ms);
    let mut out = Vec::new();
    for (group, y) in counts {
        let total: f64 = y.iter().sum();
        let (model, points) = match fit(&y) {
            Some(f) => ("holt-winters", f.forecast(y.len(), horizon)),
            None => {
                // Too short for a season: the mean rate of what there is, Poisson interval.
                let mean = if y.is_empty() {
                    0.0
                } else {
                    total / y.len() as f64
                };
                let sd = mean.sqrt();
                let p = Point {
                    mean,
                    lo: (mean - Z80 * sd).max(0.0),
                    hi: mean + Z80 * sd,
                };
                ("mean", vec![p; horizon])
            }
        };
        out.push(Series {
            backtest: backtest(&y, horizon.min(y.len() / 3).max(1)),
            group,
            days: y.len(),
            history_total: total,
            points,
            model,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daily series with a known upward trend and a weekly pattern, Poisson noise.
    fn synthetic(days: usize, seed: u64) -> Vec<f64> {
        let mut s = seed;
        let mut uniform = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let weekly = [1.3, 1.2, 1.1, 1.0, 0.9, 0.6, 0.5];
        (0..days)
            .map(|d| {
                let lambda = (8.0 + 0.15 * d as f64) * weekly[d % 7];
                // Knuth's Poisson sampler (lambda is small).
                let (l, mut k, mut p) = ((-lambda).exp(), 0.0, 1.0);
                loop {
                    p *= uniform();
                    if p <= l {
                        break k;
                    }
                    k += 1.0;
                }
            })
            .collect()
    }

    #[test]
    fn beats_the_naive_seasonal_baseline_on_a_trend() {
        let mut wins = 0;
        for seed in 1..=10u64 {
            let y = synthetic(91, seed * 7919);
            let (model, naive) = backtest(&y, 14).unwrap();
            if model < naive {
                wins += 1;
            }
        }
        // Not every noisy draw, but clearly more often than not.
        assert!(wins >= 8, "model beat naive in {wins}/10 series");
    }

    #[test]
    fn follows_the_season_and_the_trend() {
        let y: Vec<f64> = (0..56)
            .map(|d| 10.0 + 0.5 * d as f64 + [3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0][d % 7])
            .collect();
        let f = fit(&y).unwrap();
        let p = f.forecast(y.len(), 7);
        for (k, pt) in p.iter().enumerate() {
            let d = 56 + k;
            let truth = 10.0 + 0.5 * d as f64 + [3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0][d % 7];
            assert!(
                (pt.mean - truth).abs() < 1.5,
                "day {d}: {} vs {truth}",
                pt.mean
            );
            assert!(pt.lo <= pt.mean && pt.mean <= pt.hi);
        }
    }

    #[test]
    fn short_history_is_no_fit() {
        assert!(fit(&[1.0; 13]).is_none());
        assert!(backtest(&[1.0; 20], 14).is_none());
    }
}
