-- Public runs: anyone may read a run created with `public: true`
-- (`GET /api/runs/:id/public`, the proof page `GET /runs/:id`).
ALTER TABLE runs ADD COLUMN public INTEGER NOT NULL DEFAULT 0;
