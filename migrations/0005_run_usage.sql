-- Repo runs are metered by container time: each finished run records one
-- usage event (id 'use_' || run id, so a retry cannot record it twice) with
-- its container milliseconds.
ALTER TABLE usage_events ADD COLUMN container_ms INTEGER NOT NULL DEFAULT 0;
