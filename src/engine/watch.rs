//! The worker's look, once per tick, at the limits whose usage changed: each counter's trend
//! takes in what it grew by, and usage that reached an alert threshold in its window is
//! reported once.
//!
//! What was reported is remembered per limit and window, for the limits at or above their
//! lowest threshold only; the database's guard makes a report after a restart, or by another
//! replica, a no-op (`docs/alerts.md`).

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::counter::{Counter, CounterView};
use super::dirty::Dirty;
use super::level::{Level, LimitKind};
use super::store::Snapshot;
use super::trend::Forecast;
use super::Limits;
use crate::domain::{Micros, Money, WindowRule};

/// Usage of a limit that reached `threshold` (a fraction of its max) in the window that
/// started at `window_start`.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    pub threshold: f64,
    pub level: Level,
    pub entity_id: String,
    pub entity_name: String,
    pub limit_id: Uuid,
    pub kind: LimitKind,
    /// Dollars for budgets, tokens or requests for rate limits.
    pub used: f64,
    pub max: f64,
    pub window_start: Micros,
    pub resets_at: Micros,
    pub forecast_exhausted_at: Option<Micros>,
    pub at: Micros,
}

/// Who owns a limit, as alerts name it.
#[derive(Debug, Clone)]
struct Owner {
    level: Level,
    id: String,
    name: String,
}

/// The owner of every limit, by the limit's id.
fn owners(s: &Snapshot) -> HashMap<Uuid, Owner> {
    let mut by_limit = HashMap::new();
    let mut add = |level, id: String, name: String, limits: &Limits| {
        let owner = Owner { level, id, name };
        if let Some(b) = &limits.budget {
            by_limit.insert(b.id, owner.clone());
        }
        if let Some(r) = &limits.rate_limit {
            by_limit.insert(r.id, owner);
        }
    };
    for c in s.customers.values() {
        add(Level::Customer, c.id.to_string(), c.name.clone(), &c.limits);
    }
    for t in s.teams.values() {
        add(Level::Team, t.id.to_string(), t.name.clone(), &t.limits);
    }
    for vk in s.virtual_keys.values() {
        add(
            Level::VirtualKey,
            vk.id.to_string(),
            vk.name.clone(),
            &vk.limits,
        );
        for pc in &vk.provider_configs {
            let name = format!("{} / {}", vk.name, pc.provider);
            add(Level::ProviderConfig, pc.id.to_string(), name, &pc.limits);
        }
    }
    for p in s.providers.values() {
        add(Level::Provider, p.name.clone(), p.name.clone(), &p.limits);
    }
    for m in s.model_configs.values() {
        let name = match &m.provider {
            Some(p) => format!("{} ({p})", m.model_name),
            None => m.model_name.clone(),
        };
        add(Level::Model, m.id.to_string(), name, &m.limits);
    }
    for u in s.users.values() {
        add(Level::User, u.user_id.clone(), u.user_id.clone(), &u.limits);
    }
    by_limit
}

/// One counter of a limit, with what the watch needs to judge it.
struct Dimension<'a> {
    kind: LimitKind,
    limit_id: Uuid,
    counter: &'a Counter,
    rule: &'a WindowRule,
    /// The max, in the counter's units.
    max: i64,
}

fn dimensions(limit: &Dirty) -> impl Iterator<Item = Dimension<'_>> {
    let budget = match limit {
        Dirty::Budget(b) => Some(Dimension {
            kind: LimitKind::Budget,
            limit_id: b.id,
            counter: &b.counter,
            rule: &b.rule,
            max: b.spec.max.nanos(),
        }),
        Dirty::RateLimit(_) => None,
    };
    let rates = match limit {
        Dirty::RateLimit(r) => {
            let tokens = r.spec.tokens.max.map(|max| Dimension {
                kind: LimitKind::Tokens,
                limit_id: r.id,
                counter: &r.tokens,
                rule: r.token_rule(),
                max,
            });
            let requests = r.spec.requests.max.map(|max| Dimension {
                kind: LimitKind::Requests,
                limit_id: r.id,
                counter: &r.requests,
                rule: r.request_rule(),
                max,
            });
            [tokens, requests]
        }
        Dirty::Budget(_) => [None, None],
    };
    budget.into_iter().chain(rates.into_iter().flatten())
}

fn same(a: &Dirty, b: &Dirty) -> bool {
    match (a, b) {
        (Dirty::Budget(a), Dirty::Budget(b)) => a.id == b.id,
        (Dirty::RateLimit(a), Dirty::RateLimit(b)) => a.id == b.id,
        _ => false,
    }
}

/// A counter's units as alerts and views show them (dollars for budgets).
pub fn units(kind: LimitKind, amount: i64) -> f64 {
    match kind {
        LimitKind::Budget => Money::from_nanos(amount).to_usd(),
        LimitKind::Tokens | LimitKind::Requests => amount as f64,
    }
}

/// The forecast of a counter at `now`, in the units of `kind`.
pub fn forecast(
    kind: LimitKind,
    counter: &Counter,
    view: &CounterView,
    max: i64,
    now: Micros,
) -> Option<Forecast> {
    let mut f = Forecast::of(
        &counter.trend(),
        view.used.saturating_add(view.held) as f64,
        max as f64,
        view.resets_at,
        now,
    )?;
    if kind == LimitKind::Budget {
        f.rate_per_hour = units(kind, f.rate_per_hour.round() as i64);
    }
    Some(f)
}

/// The thresholds to watch and what was reported in the current windows.
#[derive(Debug, Default)]
pub struct Watch {
    /// Sorted, each once.
    thresholds: Vec<f64>,
    /// Per limit dimension: the window (start and end) and the thresholds (bits, in
    /// `thresholds` order) reported in it. Entries go once their window ends.
    reported: HashMap<(Uuid, LimitKind), Reported>,
    /// Limits with a crossing `report` did not take: looked at again next tick.
    declined: Vec<Dirty>,
}

#[derive(Debug, Clone, Copy)]
struct Reported {
    start: Micros,
    end: Micros,
    bits: u64,
}

impl Watch {
    /// A watch of `thresholds` (fractions of each max; at most 64 distinct).
    pub fn new(thresholds: impl IntoIterator<Item = f64>) -> Self {
        let mut thresholds: Vec<f64> = thresholds.into_iter().collect();
        thresholds.sort_by(f64::total_cmp);
        thresholds.dedup();
        thresholds.truncate(64);
        Watch {
            thresholds,
            reported: HashMap::new(),
            declined: Vec::new(),
        }
    }

    /// Observes the counters of the limits `touched` since the last tick (written, rolled or
    /// read back: usage only changes there) at `now` — their trends take it in — and offers
    /// each threshold reached and not yet reported in its window to `report`, which says
    /// whether it took it; one it did not take is offered again at the next tick. Work is
    /// proportional to what changed, not to every limit.
    pub fn tick(
        &mut self,
        snapshot: &Snapshot,
        touched: &[Dirty],
        now: Micros,
        mut report: impl FnMut(Crossing) -> bool,
    ) {
        self.reported.retain(|_, r| r.end > now);
        let lowest = self.thresholds.first().copied();
        let mut owners: Option<HashMap<Uuid, Owner>> = None;
        let mut seen: HashSet<(Uuid, LimitKind)> = HashSet::with_capacity(touched.len());
        let retry = std::mem::take(&mut self.declined);
        for (limit, d) in touched
            .iter()
            .chain(&retry)
            .flat_map(|l| dimensions(l).map(move |d| (l, d)))
        {
            if !seen.insert((d.limit_id, d.kind)) {
                continue;
            }
            let view = d.counter.observe(d.rule, now);
            let Some(lowest) = lowest else { continue };
            if d.max <= 0 {
                continue;
            }
            let fraction = view.used as f64 / d.max as f64;
            if fraction < lowest {
                continue;
            }
            let key = (d.limit_id, d.kind);
            let mut bits = match self.reported.get(&key) {
                Some(r) if r.start == view.last_reset => r.bits,
                _ => 0,
            };
            for (i, &t) in self.thresholds.iter().enumerate() {
                if fraction < t || bits & (1 << i) != 0 {
                    continue;
                }
                let owners = owners.get_or_insert_with(|| self::owners(snapshot));
                let Some(owner) = owners.get(&d.limit_id) else {
                    // Deleted since: nobody to tell about it.
                    break;
                };
                let crossing = Crossing {
                    threshold: t,
                    level: owner.level,
                    entity_id: owner.id.clone(),
                    entity_name: owner.name.clone(),
                    limit_id: d.limit_id,
                    kind: d.kind,
                    used: units(d.kind, view.used),
                    max: units(d.kind, d.max),
                    window_start: view.last_reset,
                    resets_at: view.resets_at,
                    forecast_exhausted_at: forecast(d.kind, d.counter, &view, d.max, now)
                        .and_then(|f| f.exhausted_at),
                    at: now,
                };
                if report(crossing) {
                    bits |= 1 << i;
                } else if !self.declined.iter().any(|l| same(l, limit)) {
                    self.declined.push(limit.clone());
                }
            }
            self.reported.insert(
                key,
                Reported {
                    start: view.last_reset,
                    end: view.resets_at,
                    bits,
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::BudgetSpec;
    use crate::engine::dirty::Dirty;
    use crate::engine::{Budget, Team};

    const T0: Micros = 1_800_000_000 * 1_000_000;
    const SEC: Micros = 1_000_000;

    fn snapshot_with_team_budget(max_usd: f64) -> (Snapshot, Arc<Budget>) {
        let spec = BudgetSpec::new(max_usd, "1h", false, None).unwrap();
        let budget = Arc::new(Budget::new(Uuid::new_v4(), spec, 0, T0, T0, T0));
        let mut s = Snapshot::default();
        s.put_team(Team {
            id: Uuid::new_v4(),
            name: "research".into(),
            customer_id: None,
            limits: Limits {
                budget: Some(Arc::clone(&budget)),
                rate_limit: None,
            },
            created_at: T0,
            updated_at: T0,
        });
        (s, budget)
    }

    fn spend(b: &Budget, usd: f64, now: Micros) {
        b.add(now, Money::from_usd(usd).unwrap().nanos(), 0);
    }

    #[test]
    fn each_threshold_is_reported_once_per_window_and_again_in_the_next() {
        let (s, b) = snapshot_with_team_budget(10.0);
        let touched = [Dirty::Budget(Arc::clone(&b))];
        let mut w = Watch::new([0.5, 0.8, 1.0]);
        let mut seen = Vec::new();
        let tick = |w: &mut Watch, now, seen: &mut Vec<(f64, Micros, f64)>| {
            w.tick(&s, &touched, now, |c| {
                seen.push((c.threshold, c.window_start, c.used));
                true
            })
        };
        tick(&mut w, T0 + SEC, &mut seen);
        spend(&b, 4.0, T0 + 2 * SEC);
        tick(&mut w, T0 + 3 * SEC, &mut seen);
        spend(&b, 4.5, T0 + 4 * SEC);
        tick(&mut w, T0 + 5 * SEC, &mut seen);
        tick(&mut w, T0 + 6 * SEC, &mut seen);
        assert_eq!(seen, vec![(0.5, T0, 8.5), (0.8, T0, 8.5)]);
        spend(&b, 2.0, T0 + 7 * SEC);
        tick(&mut w, T0 + 8 * SEC, &mut seen);
        assert_eq!(seen.last(), Some(&(1.0, T0, 10.5)));
        assert_eq!(seen.len(), 3);
        // The next window re-arms every threshold.
        let next = T0 + 3_600 * SEC;
        spend(&b, 6.0, next + SEC);
        tick(&mut w, next + 2 * SEC, &mut seen);
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[3], (0.5, next, 6.0));
    }

    #[test]
    fn a_crossing_not_taken_is_offered_again() {
        let (s, b) = snapshot_with_team_budget(1.0);
        let touched = [Dirty::Budget(Arc::clone(&b))];
        let mut w = Watch::new([0.5]);
        spend(&b, 0.6, T0 + SEC);
        let mut offers = 0;
        w.tick(&s, &touched, T0 + 2 * SEC, |_| {
            offers += 1;
            false
        });
        // Offered again at the next tick, whether or not the limit was touched again.
        w.tick(&s, &[], T0 + 3 * SEC, |c| {
            offers += 1;
            assert_eq!(c.level, Level::Team);
            assert_eq!(c.entity_name, "research");
            assert_eq!(c.kind, LimitKind::Budget);
            true
        });
        w.tick(&s, &touched, T0 + 4 * SEC, |_| {
            offers += 1;
            true
        });
        assert_eq!(offers, 2);
    }

    #[test]
    fn without_thresholds_the_trends_are_still_fed() {
        let (s, b) = snapshot_with_team_budget(10.0);
        let touched = [Dirty::Budget(Arc::clone(&b))];
        let mut w = Watch::new([]);
        w.tick(&s, &touched, T0 + SEC, |_| unreachable!());
        spend(&b, 1.0, T0 + 2 * SEC);
        w.tick(&s, &touched, T0 + 3 * SEC, |_| unreachable!());
        let view = b.view(T0 + 3 * SEC);
        let f = forecast(
            LimitKind::Budget,
            &b.counter,
            &view,
            b.spec.max.nanos(),
            T0 + 3 * SEC,
        )
        .unwrap();
        assert!(f.rate_per_hour > 0.0);
    }
}

#[cfg(test)]
mod untouched {
    use super::*;

    #[test]
    fn limits_not_touched_cost_nothing_and_their_reports_end_with_their_window() {
        let mut w = Watch::new([0.5]);
        let id = Uuid::new_v4();
        w.reported.insert(
            (id, LimitKind::Budget),
            Reported {
                start: 0,
                end: 10,
                bits: 1,
            },
        );
        w.tick(&Snapshot::default(), &[], 5, |_| unreachable!());
        assert_eq!(w.reported.len(), 1);
        w.tick(&Snapshot::default(), &[], 10, |_| unreachable!());
        assert!(w.reported.is_empty());
    }
}
