//! What the systemd tests read back from systemd's own tools.

/// The overall exposure level `systemd-analyze security` prints for
/// `unit` (0 = locked down, 10 = unprotected).
pub fn exposure_level(analyze_output: &str, unit: &str) -> Option<f64> {
    let prefix = format!("Overall exposure level for {unit}: ");
    analyze_output
        .lines()
        .find_map(|l| l.split(prefix.as_str()).nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_level() {
        let out = "  NAME  DESCRIPTION\n→ Overall exposure level for upstreamtop-probe.service: 1.3 OK :-)\n";
        assert_eq!(exposure_level(out, "upstreamtop-probe.service"), Some(1.3));
        assert_eq!(exposure_level(out, "other.service"), None);
    }
}
