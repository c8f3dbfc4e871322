-- 0002: per-projection weight quantization error (SQNR) of each variant, written by the quantize job.
-- Never edit this file after merge: add 0003_*.sql instead.

-- One row per quantized projection matrix of a variant (GPT-2: 12 blocks x 4 = 48 rows). The sums are
-- over the projection's original fp32 weight w and the weight the variant actually stores, dequantized:
--   signal_sq = sum(w^2), error_sq = sum((w - dequantize(quantize(w)))^2),
--   sqnr_db   = 10 log10(signal_sq / error_sq), NULL when error_sq = 0 (stored exactly, e.g. fp32).
-- The weights are quantized by the CPU reference code; `device` says where and with which software.
-- A re-run quantize job replaces all rows of its variant in one transaction (Store::write_layer_errors).
CREATE TABLE layer_errors (
  experiment_id bigint           NOT NULL,
  variant       text             NOT NULL,
  layer         integer          NOT NULL CHECK (layer >= 0),
  projection    text             NOT NULL CHECK (projection IN ('attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj')),
  numel         bigint           NOT NULL CHECK (numel > 0),
  signal_sq     double precision NOT NULL CHECK (signal_sq >= 0 AND signal_sq < 'Infinity'),
  error_sq      double precision NOT NULL CHECK (error_sq >= 0 AND error_sq < 'Infinity'),
  max_abs_error double precision NOT NULL CHECK (max_abs_error >= 0 AND max_abs_error < 'Infinity'),
  sqnr_db       double precision CHECK (sqnr_db > '-Infinity' AND sqnr_db < 'Infinity'),
  device        jsonb            NOT NULL DEFAULT '{}'::jsonb,
  job_id        text,
  created_at    timestamptz      NOT NULL DEFAULT now(),
  PRIMARY KEY (experiment_id, variant, layer, projection),
  FOREIGN KEY (experiment_id, variant) REFERENCES variants (experiment_id, name) ON DELETE CASCADE,
  -- exactly the exact rows have no dB figure
  CHECK ((error_sq = 0) = (sqnr_db IS NULL))
);
