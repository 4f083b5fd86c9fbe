//! Hourly usage rollups: how a flush adds its rows to `usage_rollups`.

use std::fmt::Write as _;

use uuid::Uuid;

use super::rows::{text_literal, uuid_text};
use crate::engine::rollup::{RollupKey, RollupSums};

fn opt_id(id: Option<Uuid>) -> String {
    id.map(uuid_text).unwrap_or_default()
}

/// How a rollup row already there takes the new one's sums.
pub(super) const ROLLUP_ADD: &str =
    "on conflict (bucket_start, virtual_key_id, team_id, customer_id, \
    user_id, provider, model) do update set requests = usage_rollups.requests + excluded.requests, \
    tokens = usage_rollups.tokens + excluded.tokens, cost = usage_rollups.cost + excluded.cost";

/// Adds hourly rollups. Values are inlined as literals: thousands of bind parameters in one
/// statement cost SQLite quadratic time to resolve. Rows go in key order: two replicas adding
/// to the same rows lock them in the same order, where opposite orders deadlock on PostgreSQL
/// (flushes that change counters are serialised by the clock row anyway; rollup-only flushes,
/// from usage that no limit governs, are not).
pub(super) fn rollups_sql(
    rows: &[(RollupKey, RollupSums)],
    chunk_rows: usize,
    mut out: impl FnMut(String),
) {
    let rows = sorted_rollups(rows);
    for chunk in rows.chunks(chunk_rows) {
        let mut sql = String::from(
            "insert into usage_rollups (bucket_start, virtual_key_id, team_id, customer_id, \
             user_id, provider, model, requests, tokens, cost) values ",
        );
        for (i, (k, v)) in chunk.iter().enumerate() {
            if i > 0 {
                sql.push(',');
            }
            let _ = write!(
                sql,
                "({}, '{}', '{}', '{}', {}, {}, {}, {}, {}, {})",
                k.bucket_start,
                opt_id(k.virtual_key_id),
                opt_id(k.team_id),
                opt_id(k.customer_id),
                text_literal(&k.user_id),
                text_literal(&k.provider),
                text_literal(&k.model),
                v.requests,
                v.tokens,
                v.cost
            );
        }
        sql.push(' ');
        sql.push_str(ROLLUP_ADD);
        out(sql);
    }
}

pub(super) fn sorted_rollups(rows: &[(RollupKey, RollupSums)]) -> Vec<&(RollupKey, RollupSums)> {
    let mut rows: Vec<&(RollupKey, RollupSums)> = rows.iter().collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    rows
}
