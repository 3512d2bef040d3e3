//! Which cohort is the baseline, when the pipeline does not say (DESIGN.md): the older of version-like labels
//! (semver order: "1.4.2" is the baseline of "1.5.0"), else a label named like baseline / stable / control /
//! primary, else the cohort seen first, then the one with more instances. Events name both cohorts, so a wrong
//! guess is visible.

use std::cmp::Ordering;

/// What is known of one cohort of a (service, signal).
#[derive(Clone, Debug, PartialEq)]
pub struct CohortInfo<'a> {
    pub label: &'a str,
    /// Event time of the first window it appeared in.
    pub first_seen: u64,
    pub instances: usize,
}

/// A version label as numbers, with a pre-release sorting before its release ("1.5.0-rc1" < "1.5.0").
fn version(label: &str) -> Option<(Vec<u64>, bool)> {
    let s = label.strip_prefix(['v', 'V']).unwrap_or(label);
    let (core, pre) = match s.split_once(['-', '+']) {
        Some((c, rest)) => (c, !rest.is_empty() && s.as_bytes()[c.len()] == b'-'),
        None => (s, false),
    };
    let parts: Option<Vec<u64>> = core.split('.').map(|p| p.parse().ok()).collect();
    let parts = parts?;
    (!parts.is_empty() && parts.len() <= 4).then_some((parts, pre))
}

fn version_cmp(a: &(Vec<u64>, bool), b: &(Vec<u64>, bool)) -> Ordering {
    let n = a.0.len().max(b.0.len());
    for i in 0..n {
        let (x, y) = (
            a.0.get(i).copied().unwrap_or(0),
            b.0.get(i).copied().unwrap_or(0),
        );
        if x != y {
            return x.cmp(&y);
        }
    }
    // Pre-release first.
    b.1.cmp(&a.1)
}

const BASELINE_NAMES: [&str; 4] = ["baseline", "stable", "control", "primary"];

/// The index of the baseline among `cohorts`, or `None` with fewer than two.
pub fn choose_baseline(cohorts: &[CohortInfo<'_>], configured: Option<&str>) -> Option<usize> {
    if cohorts.len() < 2 {
        return None;
    }
    if let Some(name) = configured {
        return cohorts.iter().position(|c| c.label == name);
    }
    let versions: Option<Vec<_>> = cohorts.iter().map(|c| version(c.label)).collect();
    if let Some(v) = versions {
        return (0..cohorts.len()).min_by(|&a, &b| version_cmp(&v[a], &v[b]));
    }
    if let Some(i) = cohorts
        .iter()
        .position(|c| BASELINE_NAMES.contains(&c.label.to_ascii_lowercase().as_str()))
    {
        return Some(i);
    }
    (0..cohorts.len()).min_by(|&a, &b| {
        let (x, y) = (&cohorts[a], &cohorts[b]);
        x.first_seen
            .cmp(&y.first_seen)
            .then(y.instances.cmp(&x.instances))
            .then(x.label.cmp(y.label))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(label: &str, first_seen: u64, instances: usize) -> CohortInfo<'_> {
        CohortInfo {
            label,
            first_seen,
            instances,
        }
    }

    fn pick<'a>(cohorts: &'a [CohortInfo<'a>], configured: Option<&str>) -> Option<&'a str> {
        choose_baseline(cohorts, configured).map(|i| cohorts[i].label)
    }

    #[test]
    fn older_version_is_the_baseline() {
        assert_eq!(
            pick(&[c("1.5.0", 0, 1), c("1.4.2", 9, 1)], None),
            Some("1.4.2")
        );
        assert_eq!(
            pick(&[c("1.10.0", 0, 1), c("1.9.3", 9, 1)], None),
            Some("1.9.3")
        );
        assert_eq!(pick(&[c("v2", 0, 1), c("v1.9", 9, 1)], None), Some("v1.9"));
        assert_eq!(
            pick(&[c("1.5.0", 0, 1), c("1.5.0-rc1", 0, 1)], None),
            Some("1.5.0-rc1")
        );
        assert_eq!(
            pick(
                &[c("1.5.0", 0, 1), c("1.4.2", 0, 1), c("1.6.0", 0, 1)],
                None
            ),
            Some("1.4.2")
        );
    }

    #[test]
    fn named_baselines_then_first_seen_then_more_instances() {
        assert_eq!(
            pick(&[c("canary", 0, 1), c("Stable", 5, 1)], None),
            Some("Stable")
        );
        assert_eq!(
            pick(&[c("treatment", 0, 1), c("control", 5, 1)], None),
            Some("control")
        );
        assert_eq!(
            pick(&[c("blue", 10, 1), c("green", 5, 1)], None),
            Some("green")
        );
        assert_eq!(
            pick(&[c("blue", 5, 1), c("green", 5, 4)], None),
            Some("green")
        );
    }

    #[test]
    fn configured_wins_and_one_cohort_has_no_baseline() {
        assert_eq!(
            pick(&[c("1.5.0", 0, 1), c("1.4.2", 0, 1)], Some("1.5.0")),
            Some("1.5.0")
        );
        assert_eq!(
            pick(&[c("1.5.0", 0, 1), c("1.4.2", 0, 1)], Some("nope")),
            None
        );
        assert_eq!(pick(&[c("1.5.0", 0, 1)], None), None);
    }
}
