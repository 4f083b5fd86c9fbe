-- Prices of a model config, in nanodollars per million tokens (null: no price), used to price
-- usage that reports token counts without a cost.
alter table model_configs add column input_nanos_per_million bigint;
alter table model_configs add column output_nanos_per_million bigint;
