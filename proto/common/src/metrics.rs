//! Figures both sides report the same way (a node's metrics line, the control plane's
//! `/stats`).

/// Hit rate in percent with one decimal; 0 when nothing was looked up yet.
pub fn hit_rate_pct(hits: u64, misses: u64) -> f64 {
    let total = hits.saturating_add(misses);
    if total == 0 {
        return 0.0;
    }
    (hits as f64 * 1000.0 / total as f64).round() / 10.0
}

#[cfg(test)]
mod tests {
    #[test]
    fn hit_rate_is_rounded_and_safe_on_zero() {
        assert_eq!(super::hit_rate_pct(0, 0), 0.0);
        assert_eq!(super::hit_rate_pct(2, 1), 66.7);
        assert_eq!(super::hit_rate_pct(5, 0), 100.0);
    }
}
