-- 0001: qbench results database. Never edit this file after merge: add 0002_*.sql instead
-- (migrate() refuses to run when a landed migration's checksum changed).
-- Applied by migrate() inside one transaction under pg_advisory_xact_lock, so no BEGIN/COMMIT here.

-- One submitted experiment: a spec (variants, batch sizes, ...) and its lifecycle.
CREATE TABLE experiments (
  id          bigserial PRIMARY KEY,
  name        text        NOT NULL,
  spec        jsonb       NOT NULL DEFAULT '{}'::jsonb,
  state       text        NOT NULL DEFAULT 'pending'
              CHECK (state IN ('pending', 'running', 'done', 'failed', 'cancelled', 'blocked')),
  error       text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz
);
CREATE INDEX experiments_created_at_idx ON experiments (created_at DESC);

-- Workers that have registered; last_seen is refreshed by their heartbeat.
CREATE TABLE workers (
  id         text        PRIMARY KEY,
  host       text        NOT NULL DEFAULT '',
  devices    jsonb       NOT NULL DEFAULT '[]'::jsonb,
  started_at timestamptz NOT NULL DEFAULT now(),
  last_seen  timestamptz NOT NULL DEFAULT now()
);

-- The durable mirror of every job's state. Redis holds the live queue; after a scheduler restart the
-- reconcile step reads this table, so every state move is written here too.
CREATE TABLE jobs (
  id            text        PRIMARY KEY,
  experiment_id bigint      NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
  type          text        NOT NULL,
  variant       text,
  shard         integer,
  state         text        NOT NULL DEFAULT 'pending'
                CHECK (state IN ('pending', 'queued', 'running', 'done', 'failed', 'cancelled', 'blocked')),
  attempt       integer     NOT NULL DEFAULT 0 CHECK (attempt >= 0),
  max_attempts  integer     NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
  depends_on    text[]      NOT NULL DEFAULT '{}',
  queue         text        NOT NULL DEFAULT '',
  worker_id     text,
  error         text,
  result        jsonb,
  created_at    timestamptz NOT NULL DEFAULT now(),
  updated_at    timestamptz NOT NULL DEFAULT now(),
  queued_at     timestamptz,
  started_at    timestamptz,
  finished_at   timestamptz
);
CREATE INDEX jobs_experiment_state_idx ON jobs (experiment_id, state);
-- reconcile scans the non-terminal jobs of all experiments
CREATE INDEX jobs_open_idx ON jobs (state) WHERE state IN ('pending', 'queued', 'running', 'blocked');

-- One quantization variant of an experiment (fp32, int8-sym, nf4, ...) and its memory figures
-- (SPEC section 3): (a) Hugging Face get_memory_footprint() with and without the causal-mask buffers,
-- (b) every byte the variant needs to run, (c) peak device memory at batch 1 and at the largest batch.
CREATE TABLE variants (
  experiment_id               bigint      NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
  name                        text        NOT NULL,
  method                      text        NOT NULL,
  base_dtype                  text        NOT NULL,
  options                     jsonb       NOT NULL DEFAULT '{}'::jsonb,
  baseline                    text,
  state                       text        NOT NULL DEFAULT 'pending'
                              CHECK (state IN ('pending', 'running', 'done', 'failed', 'cancelled', 'blocked')),
  error                       text,
  footprint_bytes             bigint CHECK (footprint_bytes >= 0),
  footprint_no_buffers_bytes  bigint CHECK (footprint_no_buffers_bytes >= 0),
  runtime_bytes               bigint CHECK (runtime_bytes >= 0),
  peak_mem_batch1_bytes       bigint CHECK (peak_mem_batch1_bytes >= 0),
  peak_mem_max_batch_bytes    bigint CHECK (peak_mem_max_batch_bytes >= 0),
  max_batch_size              integer CHECK (max_batch_size >= 1),
  created_at                  timestamptz NOT NULL DEFAULT now(),
  updated_at                  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (experiment_id, name)
);

-- One row per evaluated test sample and variant. Class ids are 0-based (0 World .. 3 Sci/Tech).
-- The primary key makes a redelivered shard job's rows collide, and write_predictions inserts them with
-- ON CONFLICT DO NOTHING, so no sample is ever counted twice.
CREATE TABLE predictions (
  experiment_id bigint   NOT NULL,
  variant       text     NOT NULL,
  sample_idx    integer  NOT NULL CHECK (sample_idx >= 0),
  shard         integer  NOT NULL CHECK (shard >= 0),
  label         smallint NOT NULL CHECK (label >= 0),
  pred          smallint NOT NULL CHECK (pred >= 0),
  logits        real[],
  PRIMARY KEY (experiment_id, variant, sample_idx),
  FOREIGN KEY (experiment_id, variant) REFERENCES variants (experiment_id, name) ON DELETE CASCADE
);

-- One row per completed evaluation shard: the end-to-end evaluation rate (tokenize + forward + write).
-- Upserted on its key; deliveries counts how often the shard's results arrived (redeliveries > 1).
CREATE TABLE eval_shards (
  experiment_id bigint           NOT NULL,
  variant       text             NOT NULL,
  shard         integer          NOT NULL CHECK (shard >= 0),
  job_id        text             NOT NULL,
  n             integer          NOT NULL CHECK (n >= 0),
  seconds       double precision NOT NULL CHECK (seconds >= 0),
  samples_per_s double precision,
  device        jsonb            NOT NULL DEFAULT '{}'::jsonb,
  deliveries    integer          NOT NULL DEFAULT 1,
  created_at    timestamptz      NOT NULL DEFAULT now(),
  updated_at    timestamptz      NOT NULL DEFAULT now(),
  PRIMARY KEY (experiment_id, variant, shard),
  FOREIGN KEY (experiment_id, variant) REFERENCES variants (experiment_id, name) ON DELETE CASCADE
);

-- Latency (batch 1, p50/p90/p99), throughput (samples/s at a batch size) and dataset-rate figures.
-- One row per (experiment, variant, kind, batch, seq_len): a re-run bench job replaces its row.
CREATE TABLE bench_results (
  id             bigserial        PRIMARY KEY,
  experiment_id  bigint           NOT NULL,
  variant        text             NOT NULL,
  kind           text             NOT NULL CHECK (kind IN ('latency', 'throughput', 'dataset')),
  batch_size     integer          NOT NULL CHECK (batch_size >= 1),
  seq_len        integer          NOT NULL CHECK (seq_len >= 0),
  p50_ms         double precision,
  p90_ms         double precision,
  p99_ms         double precision,
  samples_per_s  double precision,
  peak_mem_bytes bigint CHECK (peak_mem_bytes >= 0),
  warmup_runs    integer,
  timed_runs     integer,
  device         jsonb            NOT NULL DEFAULT '{}'::jsonb,
  created_at     timestamptz      NOT NULL DEFAULT now(),
  UNIQUE (experiment_id, variant, kind, batch_size, seq_len),
  FOREIGN KEY (experiment_id, variant) REFERENCES variants (experiment_id, name) ON DELETE CASCADE
);

-- Fine-tuning runs. job_id (when set) makes a redelivered training job replace its row, not add one.
CREATE TABLE training_runs (
  id            bigserial        PRIMARY KEY,
  experiment_id bigint           NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
  job_id        text UNIQUE,
  epochs        integer          NOT NULL CHECK (epochs >= 0),
  seconds       double precision NOT NULL CHECK (seconds >= 0),
  samples_per_s double precision,
  final_loss    double precision,
  val_accuracy  double precision,
  device        jsonb            NOT NULL DEFAULT '{}'::jsonb,
  history       jsonb            NOT NULL DEFAULT '[]'::jsonb,
  created_at    timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX training_runs_experiment_idx ON training_runs (experiment_id, created_at);

-- Accuracy per variant computed from the stored predictions (the report computes P/R/F1, intervals and
-- McNemar in C++ from the same rows).
CREATE VIEW variant_metrics AS
SELECT experiment_id,
       variant,
       count(*)::bigint                                   AS n,
       count(*) FILTER (WHERE label = pred)::bigint       AS correct,
       (count(*) FILTER (WHERE label = pred))::double precision / count(*) AS accuracy
FROM predictions
GROUP BY experiment_id, variant;
