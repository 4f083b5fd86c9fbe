-- Governed entities with their budgets and rate limits.
-- Money is integer nano-dollars; instants are integer microseconds since the Unix epoch;
-- flags are 0/1 integers, so that both backends share one row shape.

create table budgets (
    id text primary key,
    max_limit bigint not null,
    reset_duration text not null,
    calendar_aligned bigint not null default 0,
    timezone text not null default 'UTC',
    current_usage bigint not null default 0,
    last_reset bigint not null,
    created_at bigint not null,
    updated_at bigint not null
);

create table rate_limits (
    id text primary key,
    token_max_limit bigint,
    token_reset_duration text,
    token_current_usage bigint not null default 0,
    token_last_reset bigint not null,
    request_max_limit bigint,
    request_reset_duration text,
    request_current_usage bigint not null default 0,
    request_last_reset bigint not null,
    created_at bigint not null,
    updated_at bigint not null
);

create table customers (
    id text primary key,
    name text not null,
    budget_id text references budgets (id) on delete set null,
    rate_limit_id text references rate_limits (id) on delete set null,
    created_at bigint not null,
    updated_at bigint not null
);

create table teams (
    id text primary key,
    name text not null,
    customer_id text references customers (id) on delete set null,
    budget_id text references budgets (id) on delete set null,
    rate_limit_id text references rate_limits (id) on delete set null,
    created_at bigint not null,
    updated_at bigint not null
);

create table virtual_keys (
    id text primary key,
    name text not null unique,
    description text not null default '',
    value_hash text not null unique,
    value_prefix text not null,
    is_active bigint not null default 1,
    team_id text references teams (id) on delete set null,
    customer_id text references customers (id) on delete set null,
    budget_id text references budgets (id) on delete set null,
    rate_limit_id text references rate_limits (id) on delete set null,
    created_at bigint not null,
    updated_at bigint not null,
    check (team_id is null or customer_id is null)
);

create table provider_configs (
    id text primary key,
    virtual_key_id text not null references virtual_keys (id) on delete cascade,
    position bigint not null,
    provider text not null,
    weight real not null,
    allowed_models text not null,
    key_ids text not null,
    budget_id text references budgets (id) on delete set null,
    rate_limit_id text references rate_limits (id) on delete set null
);

create index provider_configs_virtual_key on provider_configs (virtual_key_id);

create table providers (
    name text primary key,
    budget_id text references budgets (id) on delete set null,
    rate_limit_id text references rate_limits (id) on delete set null,
    created_at bigint not null,
    updated_at bigint not null
);

create table model_configs (
    id text primary key,
    model_name text not null,
    provider text,
    budget_id text references budgets (id) on delete set null,
    rate_limit_id text references rate_limits (id) on delete set null,
    created_at bigint not null,
    updated_at bigint not null
);

create unique index model_configs_model_provider on model_configs (model_name, coalesce(provider, ''));

create table users (
    user_id text primary key,
    budget_id text references budgets (id) on delete set null,
    rate_limit_id text references rate_limits (id) on delete set null,
    created_at bigint not null,
    updated_at bigint not null
);
