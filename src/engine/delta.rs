//! The algebra of counter deltas, shared by the flush's SQL, the journal's fold and the
//! read-back: a delta `(start, amount)` applied to a row `(last_reset, usage)` keeps the later
//! window and adds the amounts of the same window. Deltas therefore commute, and any number of
//! them (from any commits and replicas) merge into one.

use crate::domain::Micros;

/// A counter delta: the window it belongs to and the amount (a flush item without the reset
/// flag, which the database infers).
pub type Delta = (Micros, i64);

/// A row `(last_reset, usage)` after taking `delta`, as the flush's SQL does it: a newer
/// window replaces the row's, the same window adds, an older one is dropped.
pub fn apply(row: Delta, delta: Delta) -> Delta {
    match delta.0.cmp(&row.0) {
        std::cmp::Ordering::Greater => delta,
        std::cmp::Ordering::Equal => (row.0, row.1.saturating_add(delta.1)),
        std::cmp::Ordering::Less => row,
    }
}

/// Two deltas as one: applying the result equals applying both, in either order.
pub fn merge(a: Delta, b: Delta) -> Delta {
    apply(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn deltas() -> impl Strategy<Value = Vec<Delta>> {
        prop::collection::vec((0i64..4, -5i64..50), 0..12)
    }

    proptest! {
        /// Folding merged deltas gives the row that applying them one by one, in the order
        /// they were committed, gives: the fold may batch and reorder entries.
        #[test]
        fn merged_deltas_fold_to_what_applying_them_in_turn_gives(
            row in (0i64..4, 0i64..100),
            ops in deltas(),
            cut in 0usize..12,
        ) {
            let one_by_one = ops.iter().fold(row, |r, d| apply(r, *d));
            if let Some((first, rest)) = ops.split_first() {
                let merged = rest.iter().fold(*first, |m, d| merge(m, *d));
                prop_assert_eq!(apply(row, merged), one_by_one);
            }
            let mut reversed = ops.clone();
            reversed.reverse();
            prop_assert_eq!(reversed.iter().fold(row, |r, d| apply(r, *d)), one_by_one);
            // Two batches folded one after the other.
            let cut = cut.min(ops.len());
            let (a, b) = ops.split_at(cut);
            let half = b.iter().fold(a.iter().fold(row, |r, d| apply(r, *d)), |r, d| apply(r, *d));
            prop_assert_eq!(half, one_by_one);
        }
    }

    #[test]
    fn a_delta_applies_as_the_flush_sql_does() {
        assert_eq!(apply((10, 7), (10, 3)), (10, 10), "same window adds");
        assert_eq!(apply((10, 7), (20, 3)), (20, 3), "a newer window resets");
        assert_eq!(
            apply((20, 7), (10, 3)),
            (20, 7),
            "an ended window's delta is dropped"
        );
    }
}
