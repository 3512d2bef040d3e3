//! The `gc_goal` processor's section of the pipeline file, and its settings with defaults filled in.

use serde::Deserialize;

/// `processors.gc_goal` in the pipeline file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcGoalSection {
    /// A finding opens when the GC goal reaches this fraction of the limit. 1.0 (the default) is the goal above
    /// the limit itself; lower values warn earlier, leaving room for stacks and memory outside the heap.
    pub min_ratio: Option<f64>,
    /// Fresh readings in a row (one per step) with the goal above the limit before a finding opens. Default 3.
    pub confirm: Option<u32>,
    /// Fresh readings in a row with the goal below it before an open finding resolves. Default 6.
    pub resolve_after: Option<u32>,
    /// Instances watched at most; newcomers beyond are ignored (counted). Default 10000.
    pub max_instances: Option<usize>,
}

/// Settings in force.
#[derive(Clone, Debug, PartialEq)]
pub struct GcGoalSettings {
    pub min_ratio: f64,
    pub confirm: u32,
    pub resolve_after: u32,
    pub max_instances: usize,
}

impl Default for GcGoalSettings {
    fn default() -> Self {
        GcGoalSettings {
            min_ratio: 1.0,
            confirm: 3,
            resolve_after: 6,
            max_instances: 10_000,
        }
    }
}

impl GcGoalSettings {
    /// Fills defaults; an error names the key and says what is allowed.
    pub fn from_section(s: &GcGoalSection) -> Result<GcGoalSettings, (&'static str, String)> {
        let d = GcGoalSettings::default();
        let min_ratio = s.min_ratio.unwrap_or(d.min_ratio);
        if !(min_ratio > 0.0 && min_ratio <= 2.0) {
            return Err((
                "min_ratio",
                format!("processors.gc_goal.min_ratio must be in (0, 2], got {min_ratio}"),
            ));
        }
        Ok(GcGoalSettings {
            min_ratio,
            confirm: s.confirm.unwrap_or(d.confirm).max(1),
            resolve_after: s.resolve_after.unwrap_or(d.resolve_after).max(1),
            max_instances: s.max_instances.unwrap_or(d.max_instances).max(1),
        })
    }
}
