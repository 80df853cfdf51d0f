//! The alert lifecycle as a pure function of event time.
//!
//! A rule's condition for one key (a device, a cohort) is a list of [`Condition`]s: stretches
//! of event time during which it held. [`incidents`] folds them into incidents — pending from
//! the first stretch, firing once the incident has lasted `for`, resolved once nothing held
//! for the clear time — and says which of those transitions the data already proves. Being a
//! function of event time only (no wall clock, no evaluation order), the same findings give
//! the same transitions whether they arrive live, from an import, or from a replay at any
//! speed; and recomputing after a restart gives back exactly what was stored before.

/// How a rule's condition becomes an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long an incident must last before it fires (0: fires at once).
    pub for_ms: i64,
    /// How long the condition must stay away before the incident is over. A condition that
    /// comes back sooner continues the incident: a value hovering at a threshold gives one
    /// alert, not a storm (hysteresis in time; rules add hysteresis in value with `hold`).
    pub clear_ms: i64,
    /// A firing alert stays firing at least this long after its condition last held.
    pub keep_firing_ms: i64,
}

impl Policy {
    /// The gap that ends an incident: `clear_ms`, or once it fired, `keep_firing_ms` if
    /// longer.
    fn tolerance_ms(&self, fired: bool) -> i64 {
        if fired {
            self.clear_ms.max(self.keep_firing_ms)
        } else {
            self.clear_ms
        }
    }
}

/// One stretch of event time during which a condition held for a key.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition<T> {
    pub first_ms: i64,
    pub last_ms: i64,
    /// Keeps an incident going but cannot start one: the clear side of a hysteresis band
    /// (a trend rule says `state = 'hold'` when its value is below the firing threshold
    /// but above the clearing one).
    pub hold: bool,
    /// What the condition carries (severity, evidence): the alert shows the latest.
    pub detail: T,
}

/// Where an incident stands, as far as the data shows.
#[derive(Debug, Clone, PartialEq)]
pub struct Incident<'a, T> {
    pub start_ms: i64,
    /// When the condition last held.
    pub end_ms: i64,
    /// When it fired (`start_ms + for_ms`), if it has.
    pub fired_ms: Option<i64>,
    /// When it ended (resolved if it fired, cancelled if not): `end_ms` plus the clear time,
    /// once the key's data has reached that far.
    pub closed_ms: Option<i64>,
    /// The condition that held last (its detail is the alert's evidence).
    pub latest: &'a Condition<T>,
}

impl<T> Incident<'_, T> {
    fn try_fire(&mut self, p: &Policy) {
        if self.fired_ms.is_none() && self.end_ms - self.start_ms >= p.for_ms {
            self.fired_ms = Some(self.start_ms + p.for_ms);
        }
    }
}

/// Folds `conditions` (any order) into incidents. `progress_ms` is how far the key's data
/// has been evaluated: an incident is only closed once the clear time has passed within
/// the data (a device that went quiet keeps its alert until it reports again).
pub fn incidents<'a, T>(
    conditions: &'a [Condition<T>],
    p: &Policy,
    progress_ms: i64,
) -> Vec<Incident<'a, T>> {
    let mut order: Vec<&Condition<T>> = conditions.iter().collect();
    order.sort_by_key(|c| (c.first_ms, c.last_ms));
    let mut out = Vec::new();
    let mut cur: Option<Incident<'a, T>> = None;
    for c in order {
        if let Some(inc) = cur.as_mut() {
            let tol = p.tolerance_ms(inc.fired_ms.is_some());
            // Strictly within: a condition starting when the incident closed is a new one
            // (the stored incident may already be resolved at that time).
            if c.first_ms < inc.end_ms + tol {
                if c.last_ms >= inc.end_ms {
                    inc.end_ms = c.last_ms;
                    inc.latest = c;
                }
                inc.try_fire(p);
                continue;
            }
            if let Some(mut done) = cur.take() {
                done.closed_ms = Some(done.end_ms + tol);
                out.push(done);
            }
        }
        if !c.hold {
            let mut inc = Incident {
                start_ms: c.first_ms,
                end_ms: c.last_ms,
                fired_ms: None,
                closed_ms: None,
                latest: c,
            };
            inc.try_fire(p);
            cur = Some(inc);
        }
    }
    if let Some(mut inc) = cur {
        let close = inc.end_ms + p.tolerance_ms(inc.fired_ms.is_some());
        if progress_ms >= close {
            inc.closed_ms = Some(close);
        }
        out.push(inc);
    }
    out
}

/// A transition's state, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    Pending,
    Firing,
    Resolved,
    /// Pending that ended before it could fire.
    Cancelled,
}

impl State {
    pub const ALL: [State; 4] = [
        State::Pending,
        State::Firing,
        State::Resolved,
        State::Cancelled,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Firing => "firing",
            State::Resolved => "resolved",
            State::Cancelled => "cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<State> {
        State::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl<T> Incident<'_, T> {
    /// The transitions this incident has reached, in order, with their event times. A rule
    /// with no `for` fires at once: no pending row.
    pub fn transitions(&self, p: &Policy) -> Vec<(State, i64)> {
        let mut out = Vec::with_capacity(3);
        if p.for_ms > 0 {
            out.push((State::Pending, self.start_ms));
        }
        if let Some(f) = self.fired_ms {
            out.push((State::Firing, f));
        }
        if let Some(c) = self.closed_ms {
            let s = if self.fired_ms.is_some() {
                State::Resolved
            } else {
                State::Cancelled
            };
            out.push((s, c));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn c(a: i64, b: i64) -> Condition<()> {
        Condition {
            first_ms: a * MIN,
            last_ms: b * MIN,
            hold: false,
            detail: (),
        }
    }

    fn states(conds: &[Condition<()>], p: &Policy, progress_min: i64) -> Vec<Vec<(State, i64)>> {
        incidents(conds, p, progress_min * MIN)
            .iter()
            .map(|i| {
                i.transitions(p)
                    .into_iter()
                    .map(|(s, t)| (s, t / MIN))
                    .collect()
            })
            .collect()
    }

    const P: Policy = Policy {
        for_ms: 10 * MIN,
        clear_ms: 15 * MIN,
        keep_firing_ms: 0,
    };

    #[test]
    fn shorter_than_for_never_fires() {
        let s = states(&[c(0, 5)], &P, 100);
        assert_eq!(s, vec![vec![(State::Pending, 0), (State::Cancelled, 20)]]);
    }

    #[test]
    fn a_lasting_fault_fires_once_and_resolves_once() {
        let s = states(&[c(0, 30)], &P, 100);
        assert_eq!(
            s,
            vec![vec![
                (State::Pending, 0),
                (State::Firing, 10),
                (State::Resolved, 45)
            ]]
        );
        // Before the clear time has passed in the data, it is still firing.
        let s = states(&[c(0, 30)], &P, 44);
        assert_eq!(s, vec![vec![(State::Pending, 0), (State::Firing, 10)]]);
    }

    #[test]
    fn oscillation_is_one_incident() {
        // On 2 min, off 3 min, for two hours: one alert, not a storm.
        let conds: Vec<_> = (0..24).map(|k| c(k * 5, k * 5 + 2)).collect();
        let s = states(&conds, &P, 1000);
        assert_eq!(s.len(), 1);
        assert_eq!(
            s[0],
            vec![
                (State::Pending, 0),
                (State::Firing, 10),
                (State::Resolved, 117 + 15)
            ]
        );
    }

    #[test]
    fn a_long_gap_starts_a_new_incident() {
        let s = states(&[c(0, 30), c(60, 90)], &P, 200);
        assert_eq!(s.len(), 2);
        assert_eq!(s[1][1], (State::Firing, 70));
    }

    #[test]
    fn keep_firing_for_bridges_gaps_once_fired() {
        let p = Policy {
            keep_firing_ms: 60 * MIN,
            ..P
        };
        let s = states(&[c(0, 30), c(60, 90)], &p, 500);
        assert_eq!(
            s,
            vec![vec![
                (State::Pending, 0),
                (State::Firing, 10),
                (State::Resolved, 150)
            ]]
        );
    }

    #[test]
    fn hold_keeps_but_never_starts() {
        let hold = |a, b| Condition {
            hold: true,
            ..c(a, b)
        };
        // A hold alone starts nothing.
        assert!(states(&[hold(0, 60)], &P, 200).is_empty());
        // A hold after a fire keeps the incident going across what would be a clear gap.
        let s = states(&[c(0, 20), hold(30, 80), hold(90, 100)], &P, 200);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].last(), Some(&(State::Resolved, 115)));
    }

    #[test]
    fn order_of_conditions_does_not_matter() {
        let a = states(&[c(0, 30), c(60, 90), c(20, 40)], &P, 300);
        let b = states(&[c(20, 40), c(60, 90), c(0, 30)], &P, 300);
        assert_eq!(a, b);
    }

    #[test]
    fn no_for_fires_at_once() {
        let p = Policy { for_ms: 0, ..P };
        let s = states(&[c(3, 4)], &p, 100);
        assert_eq!(s, vec![vec![(State::Firing, 3), (State::Resolved, 19)]]);
    }
}
