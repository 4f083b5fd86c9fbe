-- Usage persistence: delta flushes, replicas, idempotency keys and hourly rollups.

-- Bumped by every flush that writes usage (usage_version) and by every admin write
-- (config_version); a flush transaction holds the row lock until it commits, so versions are
-- handed out in commit order and replicas can read back "everything newer than what I saw".
create table heimdall_clock (
    id bigint primary key,
    config_version bigint not null,
    usage_version bigint not null
);
insert into heimdall_clock (id, config_version, usage_version) values (1, 0, 0);

-- Not indexed on purpose: flushes rewrite usage_version on every row they touch, and an
-- index on it would make each of those updates a non-HOT update in PostgreSQL (several times
-- slower); the read-back scans, which is cheap next to the writes.
alter table budgets add column usage_version bigint not null default 0;
alter table rate_limits add column usage_version bigint not null default 0;

-- Idempotency keys of usage updates: a 128-bit digest of (request_id, attempt, phase).
create table dedup_keys (
    key_hi bigint not null,
    key_lo bigint not null,
    expires_at bigint not null,
    primary key (key_hi, key_lo)
);
create index dedup_keys_expires_at on dedup_keys (expires_at);

-- Usage per hour and key, team, customer, user, provider and model ('' = none).
create table usage_rollups (
    bucket_start bigint not null,
    virtual_key_id text not null,
    team_id text not null,
    customer_id text not null,
    user_id text not null,
    provider text not null,
    model text not null,
    requests bigint not null,
    tokens bigint not null,
    cost bigint not null,
    primary key (bucket_start, virtual_key_id, team_id, customer_id, user_id, provider, model)
);

-- Room on every page for the next version of a row, so that flushes (which change no indexed
-- column) are heap-only-tuple updates: several times faster than rewriting the indexes.
alter table budgets set (fillfactor = 50);
alter table rate_limits set (fillfactor = 50);
