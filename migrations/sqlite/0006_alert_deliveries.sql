-- Threshold alerts: one row per webhook, limit, threshold and window. The unique key is the
-- guard that makes a crossing seen by several replicas (or again after a restart) one
-- delivery; the row carries the exact body that is signed and sent, and the retry state.
create table alert_deliveries (
    id text primary key,
    webhook text not null,
    limit_id text not null,
    kind text not null,
    threshold real not null,
    window_start bigint not null,
    body text not null,
    status text not null,
    attempts bigint not null default 0,
    last_error text,
    next_attempt_at bigint not null,
    created_at bigint not null,
    delivered_at bigint,
    unique (webhook, limit_id, kind, threshold, window_start)
);
create index alert_deliveries_due on alert_deliveries (next_attempt_at) where status = 'pending';
create index alert_deliveries_created on alert_deliveries (created_at);
