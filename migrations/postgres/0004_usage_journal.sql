-- The usage journal: each durable group commit appends one entry (its counter deltas,
-- rollups and idempotency keys, as JSON); full ticks fold entries into the tables, deleting
-- them in the same transaction. `writer` tells a process its own entries.
create table usage_journal (
    id bigserial primary key,
    writer bigint not null,
    entry text not null
);
-- Entries are written once and deleted within seconds: compressing them costs CPU on the
-- commit path for no lasting saving.
alter table usage_journal alter column entry set storage external;
