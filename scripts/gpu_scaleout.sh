#!/usr/bin/env bash
# Issue 7 on a GPU host: the whole service (embedded Redis + PostgreSQL, scheduler, GPU workers) running the
# seed preset, first with one worker on one GPU, then with two workers on two GPUs, then two workers with a
# kill -9 of one mid-evaluation. Runs 2 and 3 reuse the model that run 1 trained (train.epochs=0,
# model.init=<its checkpoint>), so the three must store identical predictions; the eval and bench phase times
# of runs 1 and 2 are compared from PostgreSQL's job timestamps. Output under $OUT.
#   scripts/gpu_scaleout.sh DATA_DIR [STEPS]     STEPS: any of "one two kill reports" (default: all)
set -uo pipefail
data=${1:?data folder}
steps=${2:-one two kill reports}
out=${OUT:-gpu-out}
mkdir -p "$out"
q=${QBENCH_BIN:-$PWD/build-cuda/cli/qbench}
# State lives outside the checkout, so that a fresh copy of the tree does not wipe a running stack.
stack=${QBENCH_SCALEOUT_DIR:-/tmp/qbench-scaleout}
psql_bin=${QBENCH_PG_BIN:-/usr/lib/postgresql/15/bin}/psql
export QBENCH_DATA_DIR=$data QBENCH_ARTIFACTS=$stack-artifacts
has() { [[ " $steps " == *" $1 "* ]]; }
start=$(date +%s)
stamp() { echo "[$(( $(date +%s) - start )) s] $*"; }
db_url() { python3 -c "import json;print(json.load(open('$stack/stack.json'))['database_url'])"; }
sql() { "$psql_bin" "$(db_url)" -X -A -t -F $'\t' -c "$1"; }
phase_sql() {  # seconds of the post-training phase (quantize + eval + bench) and of eval+bench alone
  sql "SELECT experiment_id,
         round(extract(epoch FROM max(finished_at) FILTER (WHERE type IN ('eval','bench'))
                                - max(finished_at) FILTER (WHERE type = 'train'))::numeric, 2) AS after_train_s,
         round(extract(epoch FROM max(finished_at) FILTER (WHERE type IN ('eval','bench'))
                                - min(started_at) FILTER (WHERE type IN ('eval','bench')))::numeric, 2) AS eval_bench_s,
         round(extract(epoch FROM max(finished_at) - min(created_at))::numeric, 2) AS submit_to_report_s,
         count(DISTINCT worker_id) FILTER (WHERE type IN ('eval','bench')) AS workers
       FROM jobs WHERE experiment_id = $1 GROUP BY 1"
}
job_times() {  # every quantize/eval/bench job: where the phase's time goes and how it was balanced
  sql "SELECT id, worker_id, round(extract(epoch FROM started_at - (SELECT min(started_at) FROM jobs
              WHERE experiment_id = $1 AND type IN ('quantize','eval','bench')))::numeric, 2) AS start_s,
              round(extract(epoch FROM finished_at - started_at)::numeric, 2) AS seconds
       FROM jobs WHERE experiment_id = $1 AND type IN ('quantize','eval','bench') ORDER BY started_at" \
    > "$out/jobs_exp$1.tsv"
}
up() { $q up --stack "$stack" --device cuda --workers "$1" --gpus "$2" --threads 4; }
down() { $q down --stack "$stack"; }
seed2() { $q submit --stack "$stack" --preset seed --set name="$1" --set train.epochs=0 \
            --set model.init="$QBENCH_ARTIFACTS/exp-1/model" "${@:2}"; }

if has one; then
  stamp "run 1: one worker on GPU 0, seed preset (trains)"
  rm -rf "$stack" "$QBENCH_ARTIFACTS"
  up 1 0
  /usr/bin/time -f "%e s wall" $q submit --stack "$stack" --preset seed --set name=seed-1gpu --wait --timeout 900 \
    > "$out/run1_submit.log" 2>&1; tail -12 "$out/run1_submit.log"
  phase_sql 1 | tee "$out/phases.tsv"
  job_times 1
  sql "SELECT seconds, samples_per_s, history FROM training_runs WHERE experiment_id = 1" > "$out/run1_training.tsv"
  down
fi
if has two; then
  stamp "run 2: two workers on GPUs 0 and 1, the same trained model"
  up 2 0,1
  t=$(date +%s.%N); seed2 seed-2gpu --wait --timeout 900 > "$out/run2_submit.log" 2>&1
  echo "$(python3 -c "import time;print(round(time.time()-$t,2))") s wall" >> "$out/run2_submit.log"; tail -12 "$out/run2_submit.log"
  phase_sql 2 | tee -a "$out/phases.tsv"
  job_times 2
fi
if has kill; then
  stamp "run 3: two workers, kill -9 of the one running an eval shard"
  seed2 seed-2gpu-kill > "$out/run3_submit.log" 2>&1
  killed=""
  for i in $(seq 1 600); do
    w=$(sql "SELECT worker_id FROM jobs WHERE experiment_id = 3 AND type = 'eval' AND state = 'running' LIMIT 1") \
      || { echo "database unreachable"; exit 1; }
    if [ -n "$w" ]; then pid=$(echo "$w" | awk -F- '{print $(NF-1)}'); kill -9 "$pid" && killed="$w ($pid)"; break; fi
    sleep 0.1
  done
  echo "killed worker: ${killed:-none}" | tee "$out/run3_kill.txt"
  for i in $(seq 1 900); do
    st=$(sql "SELECT state FROM experiments WHERE id = 3") || { echo "database unreachable"; exit 1; }
    case "$st" in done|failed|cancelled) break;; esac; sleep 1
  done
  echo "experiment 3: $st" | tee -a "$out/run3_kill.txt"
  sql "SELECT id, attempt, worker_id FROM jobs WHERE experiment_id = 3 AND attempt > 1" | tee -a "$out/run3_kill.txt"
  phase_sql 3 | tee -a "$out/phases.tsv"
fi
if has reports; then
  stamp "identical predictions?"
  sql "SELECT b.experiment_id, count(*) AS rows, count(*) FILTER (WHERE a.pred <> b.pred) AS differing_preds,
              max((SELECT max(abs(x - y)) FROM unnest(a.logits, b.logits) AS t(x, y))) AS max_logit_diff
       FROM predictions a JOIN predictions b USING (variant, sample_idx)
       WHERE a.experiment_id = 1 AND b.experiment_id IN (2, 3) GROUP BY 1 ORDER BY 1" | tee "$out/identical.tsv"
  sql "SELECT experiment_id, count(*) FROM predictions GROUP BY 1 ORDER BY 1" | tee -a "$out/identical.tsv"
  for e in 1 2; do
    $q report $e --stack "$stack" --format text > "$out/report_exp$e.txt"
    $q report $e --stack "$stack" --format html > "$out/report_exp$e.html"
  done
  $q report 2 --stack "$stack" --format markdown > "$out/report_exp2.md"
  $q report 1 --stack "$stack" --compare 2 --format text > "$out/compare_1_2.txt" 2>&1
  down
fi
stamp done
