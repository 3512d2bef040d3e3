//! Scoring: each `open` event is matched to an expected finding of its kind and subject whose time range holds
//! it; an open that matches none is a false alarm. A required finding is timely when its first matching open
//! comes by its deadline, late when after, missed when none comes.

use std::collections::BTreeMap;

use memdrift_exporter::anomaly::parse_rfc3339;
use memdrift_exporter::{AnomalyRecord, AnomalyState};
use serde::Serialize;

use super::{About, Expectation, Key, Kind};

/// An `open` event, reduced to what scoring reads.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Open {
    pub kind: Kind,
    pub key: Key,
    /// Seconds after T0.
    pub t_s: f64,
    pub class: Option<String>,
    /// When the finding resolved (seconds after T0), if it did.
    pub resolved_s: Option<f64>,
}

/// The subject of an event: its instance, or for a spread finding the canary cohort it names.
pub fn key_of(r: &AnomalyRecord) -> Key {
    match (&r.instance, &r.cohorts) {
        (Some(instance), _) => Key::Instance {
            service: r.service.clone(),
            instance: instance.clone(),
        },
        (None, Some(c)) => Key::Cohort {
            service: r.service.clone(),
            cohort: c.canary.clone(),
        },
        (None, None) => Key::Cohort {
            service: r.service.clone(),
            cohort: String::new(),
        },
    }
}

/// The open events of a replay's output, times relative to `t0` (Unix nanoseconds), each with the time its
/// finding resolved (the next `resolved` event of the same kind, subject and signal).
pub fn opens(records: &[AnomalyRecord], t0: u64) -> Vec<Open> {
    let secs = |r: &AnomalyRecord| {
        parse_rfc3339(&r.detected_at).map_or(f64::NAN, |t| (t as f64 - t0 as f64) / 1e9)
    };
    records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.state == AnomalyState::Open)
        .map(|(i, r)| {
            let key = key_of(r);
            let resolved_s = records[i + 1..]
                .iter()
                .find(|x| {
                    x.state == AnomalyState::Resolved
                        && x.kind == r.kind
                        && x.signal == r.signal
                        && key_of(x) == key
                })
                .map(secs);
            Open {
                kind: Kind::of(r.kind),
                key,
                t_s: secs(r),
                class: r.classification.clone(),
                resolved_s,
            }
        })
        .collect()
}

/// Required findings of one kind, by outcome.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Tally {
    pub expected: u64,
    pub timely: u64,
    pub late: u64,
    pub missed: u64,
    /// Found (timely or late) with another leak class than the data shows.
    pub wrong_class: u64,
}

impl Tally {
    pub fn add(&mut self, o: &Tally) {
        self.expected += o.expected;
        self.timely += o.timely;
        self.late += o.late;
        self.missed += o.missed;
        self.wrong_class += o.wrong_class;
    }
}

/// What a detector (memdrift or the baseline) said in one or more scenarios, against the truth.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Score {
    pub opens: u64,
    pub false_alarms: u64,
    pub false_alarms_by_kind: BTreeMap<Kind, u64>,
    /// By "kind: what the subject does" (e.g. "leak: warm-up ramp / spikes").
    pub false_alarms_by_shape: BTreeMap<String, u64>,
    /// Required findings, per kind.
    pub required: BTreeMap<Kind, Tally>,
    /// Findings that may be said (slow leaks' leak findings, forecasts without a known limit) and were.
    pub optional_said: u64,
    pub optional: u64,
    /// Further opens of a finding already opened (a warning that resolved and opened again).
    pub reopens: u64,
    /// Required findings credited to a warning opened before the onset (itself a false alarm) and still open at
    /// the deadline: counted as said at the onset.
    pub carried_over: u64,
    /// Growth: seconds from the first matching open to the limit crossing.
    pub growth_leads_s: Vec<f64>,
    /// Leak: seconds from the leak's onset to the first matching open.
    pub leak_delays_s: Vec<f64>,
    /// Spread: seconds from the change to the first matching open.
    pub spread_delays_s: Vec<f64>,
    /// For people: the false alarms, misses and late findings (first few of each).
    pub examples: Vec<String>,
    /// Every expected finding and what became of it.
    pub outcomes: Vec<Outcome>,
}

/// One expected finding and what became of it.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    /// "family#seed".
    pub scenario: String,
    pub kind: Kind,
    pub subject: String,
    pub what: String,
    pub required: bool,
    pub onset_s: f64,
    pub deadline_s: Option<f64>,
    pub crossing_s: Option<f64>,
    /// When it was first said (seconds after T0), if it was.
    pub said_s: Option<f64>,
    pub class: Option<String>,
}

/// Examples kept per score.
const EXAMPLES: usize = 12;

impl Score {
    pub fn add(&mut self, o: &Score) {
        self.opens += o.opens;
        self.false_alarms += o.false_alarms;
        for (k, n) in &o.false_alarms_by_kind {
            *self.false_alarms_by_kind.entry(*k).or_default() += n;
        }
        for (k, n) in &o.false_alarms_by_shape {
            *self.false_alarms_by_shape.entry(k.clone()).or_default() += n;
        }
        for (k, t) in &o.required {
            self.required.entry(*k).or_default().add(t);
        }
        self.optional_said += o.optional_said;
        self.optional += o.optional;
        self.reopens += o.reopens;
        self.carried_over += o.carried_over;
        self.growth_leads_s.extend(&o.growth_leads_s);
        self.leak_delays_s.extend(&o.leak_delays_s);
        self.spread_delays_s.extend(&o.spread_delays_s);
        for e in &o.examples {
            if self.examples.len() < EXAMPLES {
                self.examples.push(e.clone());
            }
        }
        self.outcomes.extend(o.outcomes.iter().cloned());
    }

    fn example(&mut self, s: String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(s);
        }
    }
}

fn minutes(s: f64) -> String {
    format!("{:.1} min", s / 60.0)
}

/// Scores `opens` against `truth`; `tag` ("family#seed") prefixes the examples, `about` describes subjects.
pub fn score(
    truth: &[Expectation],
    opens: &[Open],
    tag: &str,
    about: &BTreeMap<Key, About>,
) -> Score {
    let detail = |k: &Key| {
        about
            .get(k)
            .map_or(String::new(), |a| format!(" ({})", a.detail))
    };
    let shape = |k: &Key| about.get(k).map_or("?", |a| a.shape.as_str());
    let mut out = Score {
        opens: opens.len() as u64,
        ..Score::default()
    };
    let mut first: Vec<Option<&Open>> = vec![None; truth.len()];
    for o in opens {
        let matched = truth.iter().position(|e| {
            e.kind == o.kind && e.key == o.key && o.t_s >= e.onset_s && o.t_s <= e.until_s
        });
        match matched {
            Some(i) if first[i].is_none() => first[i] = Some(o),
            Some(_) => out.reopens += 1,
            None => {
                out.false_alarms += 1;
                *out.false_alarms_by_kind.entry(o.kind).or_default() += 1;
                *out.false_alarms_by_shape
                    .entry(format!("{}: {}", o.kind.name(), shape(&o.key)))
                    .or_default() += 1;
                out.example(format!(
                    "{tag}: false alarm: {} {}{} at {}",
                    o.kind.name(),
                    o.key,
                    detail(&o.key),
                    minutes(o.t_s)
                ));
            }
        }
    }
    // A finding already open when the trouble began, and still open at its deadline, said it (at the onset).
    let carried: Vec<Option<Open>> = truth
        .iter()
        .zip(&first)
        .map(|(e, got)| {
            if got.is_some() {
                return None;
            }
            let until = e.deadline_s.unwrap_or(e.onset_s);
            opens
                .iter()
                .find(|o| {
                    o.kind == e.kind
                        && o.key == e.key
                        && o.t_s < e.onset_s
                        && o.resolved_s.is_none_or(|r| r > until)
                })
                .map(|o| Open {
                    t_s: e.onset_s,
                    ..o.clone()
                })
        })
        .collect();
    out.carried_over = carried.iter().flatten().count() as u64;
    let first: Vec<Option<&Open>> = first
        .iter()
        .zip(&carried)
        .map(|(f, c)| f.or(c.as_ref()))
        .collect();
    for (e, got) in truth.iter().zip(first) {
        out.outcomes.push(Outcome {
            scenario: tag.to_string(),
            kind: e.kind,
            subject: e.key.to_string(),
            what: e.what.clone(),
            required: e.deadline_s.is_some(),
            onset_s: e.onset_s,
            deadline_s: e.deadline_s,
            crossing_s: e.crossing_s,
            said_s: got.map(|o| o.t_s),
            class: got.and_then(|o| o.class.clone()),
        });
        if let Some(o) = got {
            match e.kind {
                Kind::Growth => {
                    if let Some(c) = e.crossing_s {
                        out.growth_leads_s.push(c - o.t_s);
                    }
                }
                Kind::Leak => out.leak_delays_s.push(o.t_s - e.onset_s),
                Kind::SpreadDrift => out.spread_delays_s.push(o.t_s - e.onset_s),
                Kind::GcGoal => {}
            }
        }
        let Some(deadline) = e.deadline_s else {
            out.optional += 1;
            out.optional_said += u64::from(got.is_some());
            continue;
        };
        let tally = out.required.entry(e.kind).or_default();
        tally.expected += 1;
        match got {
            None => {
                tally.missed += 1;
                out.example(format!(
                    "{tag}: missed: {} {} ({}, from {})",
                    e.kind.name(),
                    e.key,
                    e.what,
                    minutes(e.onset_s)
                ));
            }
            Some(o) => {
                if o.t_s <= deadline {
                    tally.timely += 1;
                } else {
                    tally.late += 1;
                }
                let wrong_class = e.class.is_some() && o.class != e.class;
                if wrong_class {
                    tally.wrong_class += 1;
                }
                if o.t_s > deadline || wrong_class {
                    out.example(format!(
                        "{tag}: {}: {} {} ({}) at {}, due by {}{}",
                        if o.t_s > deadline { "late" } else { "timely" },
                        e.kind.name(),
                        e.key,
                        e.what,
                        minutes(o.t_s),
                        minutes(deadline),
                        if wrong_class {
                            format!(
                                ", class {} not {}",
                                o.class.as_deref().unwrap_or("none"),
                                e.class.as_deref().unwrap_or("none")
                            )
                        } else {
                            String::new()
                        }
                    ));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: &str) -> Key {
        Key::Instance {
            service: "s".into(),
            instance: i.into(),
        }
    }

    fn open(kind: Kind, i: &str, t_s: f64) -> Open {
        Open {
            kind,
            key: key(i),
            t_s,
            class: Some("heap".into()),
            resolved_s: None,
        }
    }

    #[test]
    fn opens_are_matched_by_kind_subject_and_time() {
        let truth = vec![
            Expectation {
                kind: Kind::Growth,
                key: key("a"),
                what: "leak".into(),
                onset_s: 1000.0,
                until_s: 5000.0,
                deadline_s: Some(4100.0),
                class: None,
                crossing_s: Some(5000.0),
            },
            Expectation {
                kind: Kind::Leak,
                key: key("a"),
                what: "leak".into(),
                onset_s: 1000.0,
                until_s: 5000.0,
                deadline_s: Some(1900.0),
                class: Some("off_heap".into()),
                crossing_s: Some(5000.0),
            },
        ];
        let opens = vec![
            open(Kind::Growth, "a", 900.0),  // before the onset: false
            open(Kind::Growth, "a", 3000.0), // timely, 2000 s ahead
            open(Kind::Growth, "a", 3500.0), // a reopen
            open(Kind::Leak, "a", 2000.0),   // late, wrong class
            open(Kind::Leak, "b", 2000.0),   // another instance: false
        ];
        let s = score(&truth, &opens, "t", &BTreeMap::new());
        assert_eq!(s.false_alarms, 2);
        assert_eq!(s.reopens, 1);
        let g = &s.required[&Kind::Growth];
        assert_eq!((g.expected, g.timely, g.late, g.missed), (1, 1, 0, 0));
        let l = &s.required[&Kind::Leak];
        assert_eq!((l.timely, l.late, l.wrong_class), (0, 1, 1));
        assert_eq!(s.growth_leads_s, vec![2000.0]);
        assert_eq!(s.leak_delays_s, vec![1000.0]);
        // A warning opened before the onset and still open at the deadline says it, though it was a false alarm.
        let early = vec![open(Kind::Growth, "a", 900.0)];
        let s = score(&truth[..1], &early, "t", &BTreeMap::new());
        assert_eq!((s.false_alarms, s.carried_over), (1, 1));
        assert_eq!(s.required[&Kind::Growth].timely, 1);
        assert_eq!(s.growth_leads_s, vec![4000.0]);
        let resolved = vec![Open {
            resolved_s: Some(2000.0),
            ..open(Kind::Growth, "a", 900.0)
        }];
        let s = score(&truth[..1], &resolved, "t", &BTreeMap::new());
        assert_eq!(s.required[&Kind::Growth].missed, 1);
    }
}
