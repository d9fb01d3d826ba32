//! Paired statistics of an arm against the baseline, over queries within seeds.
//!
//! Input: for each seed, the per-query values of a metric (reciprocal rank at 10, or a recall
//! hit 0/1) of the arm and of the baseline, over the same judged queries in the same order. The
//! difference is the mean over seeds of each seed's mean per-query difference.
//!
//! - **Paired bootstrap** ([`paired_bootstrap`]): `resamples` times, draw the judged queries
//!   with replacement (one draw, applied to every seed, so a query keeps its pairing across arms
//!   and seeds), recompute the difference; the 95% interval is the 2.5th and 97.5th percentile
//!   of those differences.
//! - **Paired randomization test** ([`randomization_test`]): under "the arms are exchangeable",
//!   swapping the two arms' values of a query (in every seed at once) is as likely as not, i.e.
//!   each query's mean difference flips sign. `resamples` random flips give the distribution of
//!   the mean difference; the two-sided p-value is `(1 + #{|flipped| >= |observed|}) /
//!   (resamples + 1)`.
//!
//! Both draw from a fixed Philox stream, so a report is reproducible.

use tensor::Rng;

/// Resamples of both procedures in reports.
pub const RESAMPLES: usize = 10_000;

/// The stream the resampling draws from.
const STATS_SEED: u64 = 0x5eed_57a7;

/// A paired comparison of an arm with the baseline.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    /// Mean over seeds of the mean per-query difference (arm minus baseline).
    pub diff: f64,
    /// 95% paired-bootstrap interval of `diff`.
    pub low: f64,
    pub high: f64,
    /// Two-sided paired randomization-test p-value.
    pub p_value: f64,
}

impl Comparison {
    /// Whether the interval excludes 0.
    pub fn excludes_zero(&self) -> bool {
        self.low > 0.0 || self.high < 0.0
    }
}

/// Per-query differences averaged over seeds: `d[q] = mean_s (arm[s][q] - base[s][q])`.
/// Panics unless every seed has the same number of queries (the caller pairs them).
pub fn per_query_diffs(arm: &[Vec<f64>], base: &[Vec<f64>]) -> Vec<f64> {
    assert_eq!(
        arm.len(),
        base.len(),
        "one value list per seed on both sides"
    );
    let n = arm.first().map_or(0, Vec::len);
    let seeds = arm.len() as f64;
    (0..n)
        .map(|q| arm.iter().zip(base).map(|(a, b)| a[q] - b[q]).sum::<f64>() / seeds)
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// The `q`-quantile of sorted `v` (linear interpolation between order statistics).
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// 95% paired-bootstrap interval of the mean of `diffs` (module doc). Resampling queries with
/// the same draw in every seed and averaging over seeds is resampling the seed-averaged
/// per-query differences, which is what this does.
pub fn paired_bootstrap(diffs: &[f64], resamples: usize) -> (f64, f64) {
    let n = diffs.len();
    let mut rng = Rng::new(STATS_SEED);
    let mut means: Vec<f64> = (0..resamples)
        .map(|_| {
            (0..n)
                .map(|_| diffs[rng.below(n as u64) as usize])
                .sum::<f64>()
                / n as f64
        })
        .collect();
    means.sort_by(f64::total_cmp);
    (quantile(&means, 0.025), quantile(&means, 0.975))
}

/// Two-sided paired randomization-test p-value of the mean of `diffs` (module doc).
pub fn randomization_test(diffs: &[f64], resamples: usize) -> f64 {
    let observed = mean(diffs).abs();
    let mut rng = Rng::new(STATS_SEED ^ 1);
    // A tolerance for float rounding, so identical sums count as "as extreme".
    let tol = 1e-12 * (1.0 + observed);
    let extreme = (0..resamples)
        .filter(|_| {
            let flipped = diffs
                .iter()
                .map(|&d| if rng.below(2) == 0 { d } else { -d })
                .sum::<f64>()
                / diffs.len() as f64;
            flipped.abs() >= observed - tol
        })
        .count();
    (1 + extreme) as f64 / (resamples + 1) as f64
}

/// The full comparison of per-seed, per-query values of an arm and the baseline.
pub fn compare(arm: &[Vec<f64>], base: &[Vec<f64>], resamples: usize) -> Comparison {
    let diffs = per_query_diffs(arm, base);
    let (low, high) = paired_bootstrap(&diffs, resamples);
    Comparison {
        diff: mean(&diffs),
        low,
        high,
        p_value: randomization_test(&diffs, resamples),
    }
}

/// Mean and sample standard deviation (n - 1; 0 for one value).
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let m = mean(v);
    if v.len() < 2 {
        return (m, 0.0);
    }
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (v.len() - 1) as f64;
    (m, var.sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reciprocal ranks of 200 queries, a deterministic spread of values.
    fn values(shift: usize, n: usize) -> Vec<f64> {
        (0..n)
            .map(|q| 1.0 / (1 + (q * 7 + shift) % 10) as f64)
            .collect()
    }

    #[test]
    fn identical_arms_differ_by_zero_with_p_one() {
        let a = vec![values(0, 200), values(3, 200)];
        let c = compare(&a, &a, 2000);
        assert_eq!(c.diff, 0.0);
        assert!(c.low <= 0.0 && c.high >= 0.0, "{c:?}");
        assert!(!c.excludes_zero());
        assert!(c.p_value > 0.99, "{c:?}");
    }

    #[test]
    fn a_clearly_better_arm_has_a_small_p_and_an_interval_above_zero() {
        let base = vec![values(0, 200), values(3, 200)];
        let arm: Vec<Vec<f64>> = base
            .iter()
            .map(|s| {
                s.iter()
                    .enumerate()
                    .map(|(q, v)| v + 0.1 + 0.05 * (q % 3) as f64)
                    .collect()
            })
            .collect();
        let c = compare(&arm, &base, 2000);
        // Plain reference: the mean of the added amounts, 0.1 + 0.05 * mean(q % 3).
        let want = 0.1 + 0.05 * (0..200).map(|q| (q % 3) as f64).sum::<f64>() / 200.0;
        assert!((c.diff - want).abs() < 1e-12, "{c:?} vs {want}");
        assert!(c.excludes_zero() && c.low > 0.0, "{c:?}");
        assert!(c.low < c.diff && c.diff < c.high, "{c:?}");
        assert!(c.p_value < 0.001, "{c:?}");
    }

    #[test]
    fn noise_without_shift_is_not_significant() {
        // Per-query differences +-0.5 in a balanced pattern: mean 0, wide interval around 0.
        let base = vec![vec![0.5; 100]];
        let arm = vec![(0..100)
            .map(|q| if q % 2 == 0 { 1.0 } else { 0.0 })
            .collect()];
        let c = compare(&arm, &base, 2000);
        assert_eq!(c.diff, 0.0);
        assert!(c.low < -0.05 && c.high > 0.05, "{c:?}");
        assert!(c.p_value > 0.5, "{c:?}");
    }

    #[test]
    fn bootstrap_interval_matches_the_normal_approximation() {
        // For 400 draws the bootstrap interval of a mean is close to mean +- 1.96 sd / sqrt(n).
        let diffs: Vec<f64> = (0..400)
            .map(|q| ((q * 37) % 11) as f64 / 10.0 - 0.4)
            .collect();
        let (m, sd) = mean_std(&diffs);
        let half = 1.96 * sd / (diffs.len() as f64).sqrt();
        let (low, high) = paired_bootstrap(&diffs, 4000);
        assert!(
            (low - (m - half)).abs() < 0.15 * half,
            "{low} vs {}",
            m - half
        );
        assert!(
            (high - (m + half)).abs() < 0.15 * half,
            "{high} vs {}",
            m + half
        );
    }

    #[test]
    fn mean_and_sample_std() {
        assert_eq!(mean_std(&[1.0, 2.0, 3.0]), (2.0, 1.0));
        assert_eq!(mean_std(&[4.0]), (4.0, 0.0));
        assert_eq!(quantile(&[0.0, 1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(quantile(&[0.0, 10.0], 0.25), 2.5);
    }
}
