-- Idempotency keys in blocks: each flush writes its keys as one row (16 bytes a key, little
-- endian, back to back) that expires with the latest of them. A flush of a million keys is one
-- insert, a start reads a few rows per second of history, and the purge deletes whole blocks.
-- The rows of dedup_keys (a row per key) are moved into blocks by the next start; nothing
-- writes them any more.
create table dedup_blocks (
    id integer primary key autoincrement,
    expires_at bigint not null,
    keys blob not null
);
create index dedup_blocks_expires_at on dedup_blocks (expires_at);
