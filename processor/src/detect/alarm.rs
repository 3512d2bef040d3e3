//! One lifecycle for every finding: open when the evidence is there, update while it holds, resolve after
//! enough clean looks. Detectors decide what a look says ([`Look`]); when an event is due is decided here, once.
//!
//! ```text
//!            Alarm x confirm                    Alarm | Hold (every update_every-th: update)
//!   closed ------------------> open (episode) ------------------------------+
//!     ^                          |  Clear (resolve_after in a row)          |
//!     +------- resolved <--------+  (Stale: no fresh data, counts nothing)  |
//!                                ^------------------------------------------+
//! ```

use memdrift_anomaly::{AnomalyState, Episode};

/// What one look at the evidence says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Look {
    /// Evidence enough to open a finding (after `confirm` in a row) or keep one open.
    Alarm,
    /// Not enough to open, enough to keep an open finding open (hysteresis).
    Hold,
    /// A fresh look that found nothing: counts toward resolving.
    Clear,
    /// Nothing new to judge by (no fresh sample): counts neither way.
    Stale,
}

/// How a detector's findings open, update and resolve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    /// Alarms in a row before a finding opens.
    pub confirm: u32,
    /// Clear looks in a row before an open finding resolves.
    pub resolve_after: u32,
    /// An open finding emits an update on every this many looks that keep it open.
    pub update_every: u32,
    /// Whether a `Hold` look between alarms keeps the streak (not counted, not reset): evidence that flickers
    /// between enough to open and enough to hold is one finding forming, not several false starts.
    pub hold_keeps_streak: bool,
}

/// The state of one finding's lifecycle (one per key a detector watches).
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Alarm {
    episode: Option<Episode>,
    streak: u32,
    clean: u32,
    since_update: u32,
}

impl Alarm {
    pub fn is_open(&self) -> bool {
        self.episode.is_some()
    }

    /// The open finding's episode.
    pub fn episode(&self) -> Option<Episode> {
        self.episode
    }

    /// Takes one look. Returns the event due, if any, with the finding's episode; `open` makes the episode of
    /// a finding that opens now.
    pub fn look(
        &mut self,
        look: Look,
        rules: &Rules,
        open: impl FnOnce() -> Episode,
    ) -> Option<(AnomalyState, Episode)> {
        self.streak = match look {
            Look::Alarm => self.streak.saturating_add(1),
            Look::Hold if rules.hold_keeps_streak => self.streak,
            _ => 0,
        };
        match (self.episode, look) {
            (None, Look::Alarm) if self.streak >= rules.confirm => {
                let episode = open();
                *self = Alarm {
                    episode: Some(episode),
                    streak: self.streak,
                    clean: 0,
                    since_update: 0,
                };
                Some((AnomalyState::Open, episode))
            }
            (Some(episode), Look::Alarm | Look::Hold) => {
                self.clean = 0;
                self.since_update += 1;
                (self.since_update >= rules.update_every).then(|| {
                    self.since_update = 0;
                    (AnomalyState::Update, episode)
                })
            }
            (Some(episode), Look::Clear) => {
                self.clean += 1;
                (self.clean >= rules.resolve_after).then(|| {
                    *self = Alarm::default();
                    (AnomalyState::Resolved, episode)
                })
            }
            _ => None,
        }
    }

    /// Ends the finding at once (the instance restarted or went away): the episode to resolve, if one was open.
    pub fn reset(&mut self) -> Option<Episode> {
        std::mem::take(self).episode
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use memdrift_anomaly::{AnomalyKind, Identity};

    /// An episode of a leak finding, for the detectors' simulations of the lifecycle.
    pub(crate) fn episode() -> Episode {
        let id = Identity {
            kind: AnomalyKind::Leak,
            service: "s",
            instance: Some("i"),
            signal: "memspan.rss.end",
            cohort: None,
        };
        Episode::new(id, 1, 2)
    }

    fn run(rules: Rules, looks: &[Look]) -> Vec<Option<AnomalyState>> {
        let mut a = Alarm::default();
        looks
            .iter()
            .map(|l| a.look(*l, &rules, episode).map(|(s, _)| s))
            .collect()
    }

    use AnomalyState::{Open, Resolved, Update};
    use Look::{Alarm as A, Clear as C, Hold as H, Stale as S};

    #[test]
    fn opens_after_confirm_alarms_in_a_row() {
        let rules = Rules {
            confirm: 3,
            resolve_after: 2,
            update_every: 1,
            hold_keeps_streak: false,
        };
        assert_eq!(
            run(rules, &[A, A, C, A, A, A, A, C, C]),
            [
                None,
                None,
                None,
                None,
                None,
                Some(Open),
                Some(Update),
                None,
                Some(Resolved)
            ]
        );
    }

    #[test]
    fn a_hold_between_alarms_keeps_the_streak_only_when_asked() {
        let looks = [A, A, H, A, C, C, H, H, A, A, S, A];
        let keeps = Rules {
            confirm: 3,
            resolve_after: 2,
            update_every: 1,
            hold_keeps_streak: true,
        };
        // A, A, H, A: three alarms, the hold neither counts nor breaks them; a stale look breaks them.
        assert_eq!(
            run(keeps, &looks),
            [
                None,
                None,
                None,
                Some(Open),
                None,
                Some(Resolved),
                None,
                None,
                None,
                None,
                None,
                None
            ]
        );
        let breaks = Rules {
            hold_keeps_streak: false,
            ..keeps
        };
        assert!(run(breaks, &looks).iter().all(Option::is_none));
    }

    #[test]
    fn hold_keeps_open_but_never_opens_and_stale_counts_nothing() {
        let rules = Rules {
            confirm: 1,
            resolve_after: 2,
            update_every: 2,
            hold_keeps_streak: false,
        };
        assert_eq!(
            run(rules, &[H, A, H, H, C, S, H, C, S, C]),
            [
                None,
                Some(Open),
                None,
                Some(Update),
                None,
                None,
                None,
                None,
                None,
                Some(Resolved)
            ]
        );
    }

    #[test]
    fn reset_hands_back_the_open_episode() {
        let mut a = Alarm::default();
        let rules = Rules {
            confirm: 1,
            resolve_after: 1,
            update_every: 1,
            hold_keeps_streak: false,
        };
        assert_eq!(a.reset(), None);
        a.look(Look::Alarm, &rules, episode);
        assert!(a.is_open());
        assert_eq!(a.reset(), Some(episode()));
        assert!(!a.is_open());
    }
}
