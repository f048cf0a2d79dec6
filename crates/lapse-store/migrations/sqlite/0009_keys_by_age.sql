-- Retention deletes idempotency keys by age once a minute: through this index it reads the
-- expired ones only, not every key saved in the last day.
create index idempotency_keys_created on idempotency_keys (created_at);
