//! The usage report: hourly rollups summed per bucket and per the chosen dimensions.

use sqlx::Row;

use super::{Conn, DbError};
use crate::domain::Micros;

/// A rollup dimension a report can group or filter by, with its column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dimension {
    VirtualKey,
    Team,
    Customer,
    User,
    Provider,
    Model,
}

impl Dimension {
    pub const ALL: [Dimension; 6] = [
        Dimension::VirtualKey,
        Dimension::Team,
        Dimension::Customer,
        Dimension::User,
        Dimension::Provider,
        Dimension::Model,
    ];

    /// The name in `group_by`.
    pub fn name(self) -> &'static str {
        match self {
            Dimension::VirtualKey => "virtual_key",
            Dimension::Team => "team",
            Dimension::Customer => "customer",
            Dimension::User => "user",
            Dimension::Provider => "provider",
            Dimension::Model => "model",
        }
    }

    /// The column, which is also the field name in the report.
    pub fn column(self) -> &'static str {
        match self {
            Dimension::VirtualKey => "virtual_key_id",
            Dimension::Team => "team_id",
            Dimension::Customer => "customer_id",
            Dimension::User => "user_id",
            Dimension::Provider => "provider",
            Dimension::Model => "model",
        }
    }
}

/// What to report.
#[derive(Debug, Clone)]
pub struct ReportQuery {
    pub from: Micros,
    pub to: Micros,
    /// Bucket length: an hour or a day (UTC).
    pub bucket: Micros,
    pub group_by: Vec<Dimension>,
    pub filters: Vec<(Dimension, String)>,
}

/// One row: the bucket, the grouped values ('' = none) and the sums.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportRow {
    pub bucket_start: Micros,
    pub groups: Vec<String>,
    pub requests: i64,
    pub tokens: i64,
    pub cost: i64,
}

pub async fn usage_report(c: &mut Conn, q: &ReportQuery) -> Result<Vec<ReportRow>, DbError> {
    let bucket = format!("(bucket_start - (bucket_start % {}))", q.bucket);
    let groups: Vec<&str> = q.group_by.iter().map(|d| d.column()).collect();
    let mut select = vec![format!("{bucket} as bucket")];
    select.extend(groups.iter().map(|g| g.to_string()));
    let mut sql = format!(
        "select {}, cast(sum(requests) as bigint), cast(sum(tokens) as bigint), \
         cast(sum(cost) as bigint) from usage_rollups where bucket_start >= $1 and bucket_start < $2",
        select.join(", ")
    );
    for (i, (dim, _)) in q.filters.iter().enumerate() {
        sql.push_str(&format!(" and {} = ${}", dim.column(), i + 3));
    }
    let mut group = vec![bucket.clone()];
    group.extend(groups.iter().map(|g| g.to_string()));
    sql.push_str(&format!(
        " group by {} order by {}",
        group.join(", "),
        group.join(", ")
    ));
    let mut query = sqlx::query(&sql).bind(q.from).bind(q.to);
    for (_, value) in &q.filters {
        query = query.bind(value.clone());
    }
    let rows = query.fetch_all(c).await?;
    let n = groups.len();
    rows.iter()
        .map(|r| {
            Ok(ReportRow {
                bucket_start: r.try_get(0)?,
                groups: (0..n).map(|i| r.try_get(i + 1)).collect::<Result<_, _>>()?,
                requests: r.try_get(n + 1)?,
                tokens: r.try_get(n + 2)?,
                cost: r.try_get(n + 3)?,
            })
        })
        .collect()
}
