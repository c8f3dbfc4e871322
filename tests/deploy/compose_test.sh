#!/usr/bin/env bash
# The docker-compose deployment for real, on a machine without registry access or GPU: builds the Debian
# base image with debootstrap (docker/local-base.sh, cached), builds the qbench image on it from the binary
# this build made (docker-compose.local.yml), brings up Redis, PostgreSQL, the migration, the scheduler and
# 3 CPU workers, checks /healthz and /metrics, submits a reduced `tiny` experiment, kills the worker that
# trains mid-job and requires the experiment to complete anyway, renders the report, and tears it all down
# (down -v). It also checks the GPU worker service's configuration (docker-compose config): NVIDIA GPUs
# reserved, `--device cuda:claim` so that each worker takes a different one.
#
# Exit 77 (ctest SKIP_RETURN_CODE) when docker cannot run here: no docker.io / docker-compose / debootstrap,
# not root and no reachable daemon, or a daemon that does not start; the reason is printed.
#   tests/deploy/compose_test.sh QBENCH_BINARY DATA_DIR
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
qbench_bin=$(realpath -m "${1:-$repo/build/cli/qbench}")
data_dir=$(realpath -m "${QBENCH_DATA_DIR:-${2:-$repo/../shared/data}}")
cache=${QBENCH_DOCKER_CACHE:-/var/cache/qbench-docker}
deadline=$(( $(date +%s) + ${QBENCH_DOCKER_TEST_BUDGET_S:-840} ))  # under ctest's 900 s

t0=$(date +%s)
phase_start=$t0
timings=()
phase() {  # phase NAME: closes the running phase under NAME
  local now
  now=$(date +%s)
  timings+=("$(printf '%-28s %4d s' "$1" $((now - phase_start)))")
  echo "== $1: $((now - phase_start)) s"
  phase_start=$now
}
skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }
left() { echo $(( deadline - $(date +%s) )); }

# --- can docker run here? --------------------------------------------------------------------------------
for tool in docker-compose debootstrap curl python3; do
  command -v "$tool" >/dev/null || skip "$tool is not installed (.ci/run installs docker.io docker-compose debootstrap)"
done
# Debian's docker CLI (20.10) builds with BuildKit without the buildx plugin; a newer CLI earlier on PATH
# would need buildx. docker-compose runs `docker` from PATH, so put the chosen one first.
docker_cli=${QBENCH_DOCKER_CLI:-/usr/bin/docker}
[ -x "$docker_cli" ] || docker_cli=$(command -v docker || true)
[ -n "$docker_cli" ] || skip "no docker CLI (apt-get install docker.io)"
work=$(mktemp -d /tmp/qbench-compose-test.XXXXXX)
mkdir -p "$work/bin"
ln -s "$docker_cli" "$work/bin/docker"
export PATH="$work/bin:$PATH"
started_dockerd=""
cleanup_dockerd() {
  if [ -n "$started_dockerd" ]; then
    kill "$started_dockerd" 2>/dev/null
    for _ in $(seq 1 100); do kill -0 "$started_dockerd" 2>/dev/null || break; sleep 0.2; done
  fi
}
if ! docker info >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || { rm -rf "$work"; skip "no docker daemon answers and this is not root, so none can be started"; }
  dockerd_bin=$(command -v dockerd || echo /usr/sbin/dockerd)
  [ -x "$dockerd_bin" ] || { rm -rf "$work"; skip "dockerd is not installed (apt-get install docker.io)"; }
  # No iptables and no default bridge: what works inside a CI machine; compose's user-defined network
  # still gives the containers name resolution.
  "$dockerd_bin" --iptables=false --bridge=none --pidfile "$work/dockerd.pid" >"$work/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 1 150); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$started_dockerd" 2>/dev/null || break
    sleep 0.2
  done
  if ! docker info >/dev/null 2>&1; then
    echo "--- dockerd log (tail)"; tail -n 25 "$work/dockerd.log"
    cleanup_dockerd
    rm -rf "$work"
    skip "dockerd did not start (see its log above)"
  fi
  echo "started dockerd (pid $started_dockerd, log $work/dockerd.log)"
fi
phase "docker daemon"

# --- inputs -----------------------------------------------------------------------------------------------
[ -x "$qbench_bin" ] || fail "no qbench binary at $qbench_bin (build the qbench target first)"
case "$qbench_bin" in
  "$repo"/build*/cli/qbench) prebuilt=${qbench_bin#"$repo"/} ;;  # inside the build context (.dockerignore)
  *) skip "the qbench binary $qbench_bin is outside $repo/build*/, so the image cannot take it" ;;
esac
{ [ -f "$data_dir/ag_news/test.csv" ] && [ -f "$data_dir/gpt2/vocab.bpe" ]; } \
  || skip "no AG News data in $data_dir (ag_news/test.csv, gpt2/vocab.bpe)"

project=qbench-ctest-$$
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export COMPOSE_PROJECT_NAME=$project
REDIS_PASSWORD=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
POSTGRES_PASSWORD=$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')
export REDIS_PASSWORD POSTGRES_PASSWORD
export QBENCH_IMAGE=qbench:compose-test
export QBENCH_PREBUILT=$prebuilt
export QBENCH_DATA_PATH=$data_dir
export QBENCH_METRICS_PORT=$port
export QBENCH_LEASE_MS=8000  # a killed worker's job goes back to the queue after 8 s, not 30
export DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1
compose=(docker-compose --project-directory "$repo" -f "$repo/docker-compose.yml" -f "$repo/docker-compose.local.yml")
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 77 ]; then
    echo "--- container states"; "${compose[@]}" --profile cpu ps 2>&1 | tail -n 20
    echo "--- logs (tail)"; "${compose[@]}" --profile cpu logs --no-color --tail 15 2>&1 | tail -n 120
  fi
  "${compose[@]}" --profile cpu down -v --remove-orphans >/dev/null 2>&1
  cleanup_dockerd
  rm -rf "$work"
  echo "--- phases"; printf '%s\n' "${timings[@]}"
  echo "total: $(( $(date +%s) - t0 )) s"
}
trap cleanup EXIT

# --- the GPU service as written (no GPU here: checked as configuration only) -----------------------------
docker-compose --project-directory "$repo" -f "$repo/docker-compose.yml" config >"$work/gpu-config.yml" \
  || fail "docker-compose config rejects docker-compose.yml"
python3 - "$work/gpu-config.yml" <<'EOF' || fail "the worker service does not reserve the NVIDIA GPUs with one claimed per worker"
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))
w = c["services"]["worker"]
dev = w["deploy"]["resources"]["reservations"]["devices"]
# Every worker sees the host's GPUs and claims one of them (a count: 1 reservation is GPU 0 for all).
assert dev == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}], dev
assert w["command"][:3] == ["worker", "--device", "cuda:claim"], w["command"]
assert "profiles" not in w and c["services"]["cpu-worker"]["profiles"] == ["cpu"]
ports = c["services"]["scheduler"]["ports"]
assert len(ports) == 1 and str(ports[0]).startswith("127.0.0.1:"), ports  # loopback by default
for name in ("redis", "postgres", "migrate", "worker", "cpu-worker"):
    assert "ports" not in c["services"][name], name + " publishes a port"
print("gpu worker service: NVIDIA GPUs reserved, one claimed per worker; only the scheduler publishes a port (loopback)")
EOF
if command -v hadolint >/dev/null; then
  hadolint "$repo/docker/Dockerfile" || fail "hadolint"
else
  echo "hadolint: not installed (not packaged in Debian); Dockerfile not linted"
fi
phase "compose config (GPU)"

# --- images -----------------------------------------------------------------------------------------------
QBENCH_DOCKER_CACHE=$cache "$repo/docker/local-base.sh" qbench-local-base:bookworm >/dev/null \
  || fail "docker/local-base.sh could not build the base image"
phase "base image (debootstrap)"
"${compose[@]}" build >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log"; fail "image build"; }
# Images replaced by this build (an older qbench image, and the base it was built on when the base changed)
# are untagged now; they carry the base's label, so only ours are pruned.
docker image prune -f --filter label=qbench.base.key >/dev/null
docker run --rm --network none --entrypoint qbench "$QBENCH_IMAGE" version | grep -q "^qbench " || fail "the image's qbench does not run"
[ "$(docker run --rm --network none --entrypoint id "$QBENCH_IMAGE" -u)" = 10001 ] || fail "the image does not run as uid 10001"
phase "qbench image"

# --- the stack ----------------------------------------------------------------------------------------------
"${compose[@]}" --profile cpu up -d --scale worker=0 --scale cpu-worker=3 >"$work/up.log" 2>&1 \
  || { cat "$work/up.log"; fail "docker-compose up"; }
url=http://127.0.0.1:$port
sched=$("${compose[@]}" ps -q scheduler)
healthy=""
for _ in $(seq 1 120); do
  [ "$(docker inspect -f '{{.State.Health.Status}}' "$sched" 2>/dev/null)" = healthy ] && { healthy=1; break; }
  sleep 0.5
done
[ -n "$healthy" ] || fail "the scheduler container did not become healthy (docker HEALTHCHECK on /healthz)"
health=$(curl -fsS "$url/healthz") || fail "GET /healthz"
echo "/healthz: $health"
python3 -c 'import json,sys; j=json.loads(sys.argv[1]); assert j["status"]=="ok" and j["redis"]["ok"] and j["postgres"]["ok"], j' "$health" \
  || fail "/healthz is not ok"
metric() {  # metric 'name{labels}' -> value from a fresh scrape (empty when absent)
  curl -fsS "$url/metrics" | awk -v k="$1" '$1 == k {print $2}'
}
for _ in $(seq 1 60); do [ "$(metric qbench_workers_live)" = 3 ] && break; sleep 0.5; done
[ "$(metric qbench_workers_live)" = 3 ] || fail "/metrics does not show 3 live workers: $(metric qbench_workers_live)"
{ [ "$(metric 'qbench_dependency_up{dependency="redis"}')" = 1 ] && [ "$(metric 'qbench_dependency_up{dependency="postgres"}')" = 1 ]; } \
  || fail "/metrics: a dependency is down"
curl -fsS "$url/metrics" | grep -q '^# TYPE qbench_job_duration_seconds histogram$' || fail "/metrics lacks the duration histogram"
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "$url/metrics")
[ "$code" = 405 ] || fail "POST /metrics answered $code, not 405"
# Redis and PostgreSQL publish nothing on the host.
for svc in redis postgres; do
  [ -z "$(docker port "$("${compose[@]}" ps -q $svc)")" ] || fail "$svc publishes a port"
done
phase "stack up + health"

# --- an experiment, a worker killed mid-job ---------------------------------------------------------------
# The tiny preset reduced to stay quick on 2 cores: 2,000 train rows, 1 epoch, 800 test rows, short benches.
exp=$("${compose[@]}" exec -T scheduler qbench submit --preset tiny --set data.train_limit=2000 \
  --set data.test_limit=800 --set train.epochs=1 --set 'bench.batch_sizes=[1,8]' --set bench.warmup=1 \
  --set bench.iters=5 2>"$work/submit.err" | tail -n 1)
[[ "$exp" =~ ^[0-9]+$ ]] || { cat "$work/submit.err"; fail "submit printed '$exp', not an experiment id"; }
echo "experiment $exp submitted"
# Kill the worker that trains (the longest job); if training slips by, the next busy one.
victim="" victim_job=""
while [ -z "$victim" ] && [ "$(left)" -gt 300 ]; do
  line=$(curl -fsS "$url/metrics" | grep '^qbench_worker_info{' | grep -v 'job=""' | grep ':train"' | head -n 1)
  [ -z "$line" ] && [ "$(metric 'qbench_jobs{type="train",state="done"}')" = 1 ] \
    && line=$(curl -fsS "$url/metrics" | grep '^qbench_worker_info{' | grep -v 'job=""' | head -n 1)
  if [ -n "$line" ]; then
    wid=$(sed -E 's/.*worker="([^"]*)".*/\1/' <<<"$line")
    victim_job=$(sed -E 's/.*job="([^"]*)".*/\1/' <<<"$line")
    # A worker id starts with its host name, which is the container's short id.
    for c in $("${compose[@]}" ps -q cpu-worker); do
      [ "${wid#"${c:0:12}"}" != "$wid" ] && victim=$c
    done
    [ -n "$victim" ] || fail "no cpu-worker container matches worker $wid"
  else
    sleep 0.3
  fi
done
[ -n "$victim" ] || fail "no busy worker seen"
docker kill "$victim" >/dev/null || fail "docker kill $victim"
echo "killed worker container ${victim:0:12} (worker $wid) while it ran $victim_job"
phase "submit + kill"
state=""
while [ "$(left)" -gt 90 ]; do
  state=$("${compose[@]}" exec -T scheduler qbench status "$exp" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])' 2>/dev/null)
  case "$state" in done|failed|cancelled) break ;; esac
  sleep 2
done
"${compose[@]}" exec -T scheduler qbench status "$exp"
[ "$state" = "done" ] || fail "experiment $exp ended '$state' (or did not end in time)"
victim_type=$(cut -d: -f2 <<<"$victim_job")
retries=$(metric "qbench_job_retries{type=\"$victim_type\"}")
[ "${retries:-0}" -ge 1 ] 2>/dev/null || fail "the killed $victim_type job shows no second attempt (retries '$retries')"
echo "the killed job ran again: qbench_job_retries{type=\"$victim_type\"} = $retries"
total=$("${compose[@]}" exec -T scheduler qbench status "$exp" --json | python3 -c 'import json,sys; j=json.load(sys.stdin); print(sum(n for t in j["jobs"].values() for n in t.values()))')
done_jobs=$(curl -fsS "$url/metrics" | awk '$1 ~ /^qbench_jobs\{.*state="done"\}$/ {s += $2} END {print s}')
[ "$done_jobs" = "$total" ] || fail "/metrics counts $done_jobs done jobs, the experiment has $total"
[ "$(metric 'qbench_experiments{state="done"}')" = 1 ] || fail "/metrics does not count the experiment as done"
echo "/metrics: $done_jobs of $total jobs done"
phase "experiment to done"

"${compose[@]}" exec -T scheduler qbench report "$exp" >"$work/report.txt" 2>"$work/report.err" \
  || { cat "$work/report.err"; fail "qbench report"; }
grep -q "COMPREHENSIVE QUANTIZATION COMPARISON REPORT" "$work/report.txt" || fail "the report has no title"
grep -q "state done" "$work/report.txt" || fail "the report does not show the experiment done"
sed -n '1,16p' "$work/report.txt"
phase "report"

"${compose[@]}" --profile cpu down -v --remove-orphans >"$work/down.log" 2>&1 || { cat "$work/down.log"; fail "down -v"; }
[ -z "$(docker ps -aq --filter "label=com.docker.compose.project=$project")" ] || fail "containers left after down"
[ -z "$(docker volume ls -q --filter "label=com.docker.compose.project=$project")" ] || fail "volumes left after down -v"
phase "down -v"
echo "PASS"
