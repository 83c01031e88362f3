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

#[cfg(test)]
mod tests {
    use super::*;

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
