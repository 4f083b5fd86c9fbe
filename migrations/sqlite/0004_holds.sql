-- Holds: capacity set aside for requests in flight (a check's `reserve`), one row per hold
-- while it lasts, so that other replicas count it and a restart keeps it. `counters` lists
-- what it holds where: [[kind, limit id, amount], ...] with kind 0 budget, 1 tokens,
-- 2 requests. `writer` is the process that placed it.
create table holds (
    request_id text not null,
    attempt bigint not null,
    writer bigint not null,
    expires_at bigint not null,
    cost bigint not null,
    tokens bigint not null,
    requests bigint not null,
    counters text not null,
    primary key (request_id, attempt)
);
create index holds_expires_at on holds (expires_at);

-- Notes that a hold ended through another process than the one that placed it (settled or
-- released there): the writer frees its capacity when its read-back finds the note. Purged
-- once the hold's TTL is long over.
create table hold_ends (
    request_id text not null,
    attempt bigint not null,
    writer bigint not null,
    expires_at bigint not null,
    primary key (writer, request_id, attempt)
);
create index hold_ends_expires_at on hold_ends (expires_at);
