-- Exactly-once group commits. Every flush a process commits carries that process's next
-- commit number, and raises the process's mark to it in the same transaction. When a commit's
-- outcome is unknown (the connection died before its result arrived), the process raises the
-- mark to that number itself, as a fence: if the mark was already there, the commit happened;
-- if the fence got there first, the commit did not happen and never will, since a commit whose
-- number is not above the mark fails on `commit_marks_once`. The mark only grows.
create table commit_marks (
    writer bigint primary key,
    seq bigint not null,
    -- Whether `seq` was set by a fence rather than by a commit.
    fenced boolean not null,
    -- When the mark last moved (microseconds): marks of processes gone for a week are purged.
    moved_at bigint not null,
    -- False when a commit arrives with a number the mark has reached already.
    fresh boolean not null constraint commit_marks_once check (fresh)
);

-- The commit number of each journal entry, so that a process knows its own entries by the
-- numbers of its commits.
alter table usage_journal add column seq bigint not null default 0;
