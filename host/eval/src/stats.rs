//! Small statistics for the report.

/// The mean, or None for no values.
pub fn mean(values: &[f64]) -> Option<f64> {
    // Folding from +0.0 (not `sum`, which starts at -0.0) keeps "-0.000" out of the tables.
    if values.is_empty() { None } else { Some(values.iter().fold(0.0, |a, v| a + v) / values.len() as f64) }
}

/// The `q`-th percentile (0–100) with linear interpolation between closest ranks (NumPy's
/// default), or None for no values.
pub fn percentile(values: &[f64], q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q.clamp(0.0, 100.0) / 100.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64))
}

/// Share of `values` for which `pred` holds, or None for no values.
pub fn share(values: &[f64], pred: impl Fn(f64) -> bool) -> Option<f64> {
    if values.is_empty() { None } else { Some(values.iter().filter(|&&v| pred(v)).count() as f64 / values.len() as f64) }
}

/// A 95 % percentile-bootstrap interval of the mean: `resamples` resamples of `values` with
/// replacement, drawn from a fixed-seed SplitMix64 so a report is reproducible. None for fewer
/// than two values.
pub fn bootstrap_mean_ci95(values: &[f64], resamples: usize, seed: u64) -> Option<[f64; 2]> {
    if values.len() < 2 || resamples == 0 {
        return None;
    }
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let n = values.len();
    let means: Vec<f64> = (0..resamples).map(|_| (0..n).map(|_| values[(next() % n as u64) as usize]).sum::<f64>() / n as f64).collect();
    Some([percentile(&means, 2.5)?, percentile(&means, 97.5)?])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_interval_holds_the_mean_and_narrows_with_more_samples() {
        let few: Vec<f64> = (0..10).map(|i| f64::from(i % 2)).collect();
        let many: Vec<f64> = (0..1000).map(|i| f64::from(i % 2)).collect();
        let [a, b] = bootstrap_mean_ci95(&few, 2000, 1).unwrap();
        let [c, d] = bootstrap_mean_ci95(&many, 2000, 1).unwrap();
        assert!(a < 0.5 && 0.5 < b, "[{a}, {b}]");
        assert!(c < 0.5 && 0.5 < d, "[{c}, {d}]");
        assert!(d - c < (b - a) / 4.0, "1000 samples: [{c}, {d}] vs 10: [{a}, {b}]");
        // About ±1.96·sqrt(0.25/1000) = ±0.031 for 1000 samples.
        assert!((d - c - 0.062).abs() < 0.01, "[{c}, {d}]");
        assert_eq!(bootstrap_mean_ci95(&[1.0], 100, 1), None);
        assert_eq!(bootstrap_mean_ci95(&few, 500, 7), bootstrap_mean_ci95(&few, 500, 7));
    }

    #[test]
    fn percentiles_match_numpy_linear() {
        // numpy.percentile([1, 2, 3, 4], [50, 95]) == [2.5, 3.85]
        let v = [4.0, 1.0, 3.0, 2.0];
        assert!((percentile(&v, 50.0).unwrap() - 2.5).abs() < 1e-12);
        assert!((percentile(&v, 95.0).unwrap() - 3.85).abs() < 1e-12);
        assert_eq!(percentile(&[7.0], 95.0), Some(7.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
        assert_eq!(percentile(&v, 100.0), Some(4.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn mean_and_share() {
        assert_eq!(mean(&[1.0, 2.0, 6.0]), Some(3.0));
        assert_eq!(mean(&[]), None);
        assert!(mean(&[-0.0]).unwrap().is_sign_positive());
        assert_eq!(share(&[0.0, 1.0, 1.0, 0.5], |v| v == 1.0), Some(0.5));
    }
}
