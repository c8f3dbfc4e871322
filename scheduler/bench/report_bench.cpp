// Report rendering time for an experiment of 10 variants x 7,600 samples (the AG News test set), from
// in-memory rows: metrics, Wilson intervals, 1,000-resample bootstraps, McNemar against the baseline and
// between all 45 pairs, 48 layer_errors rows a variant (SQNR), findings, and all four formats.
// Target (issue 5): < 2 s on the 2-core dev machine. Prints one line, then one JSON object (device, date,
// timings) to keep under docs/results/.
//   report_bench [--variants N] [--samples N] [--repeat N]
#include <sys/resource.h>

#include <chrono>
#include <ctime>
#include <fstream>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "evalsvc/common/paths.h"
#include "evalsvc/scheduler/report.h"

using namespace evalsvc::scheduler;

namespace {

ReportInputs synthetic(int variants, int samples) {
  ReportInputs in;
  in.experiment.id = 1;
  in.experiment.name = "bench";
  in.experiment.spec = {{"baseline", "v0"}, {"model", {{"config", "gpt2"}}}};
  in.experiment.state = RunState::kDone;
  in.generated_at = "2026-01-01T00:00:00Z";
  in.qbench_version = "bench";
  std::mt19937 rng(42);
  std::vector<int16_t> labels(samples);
  for (auto& l : labels) l = static_cast<int16_t>(rng() % 4);
  const nlohmann::json device = {{"device", "NVIDIA H200"}, {"libtorch", "2.11.0"}};
  for (int v = 0; v < variants; ++v) {
    VariantRecord r;
    r.experiment_id = 1;
    r.name = fmt::format("v{}", v);
    r.method = v == 0 ? "fp32" : "nf4";
    r.base_dtype = "fp16";
    r.state = RunState::kDone;
    r.memory.footprint_bytes = (500 - 30 * v) << 20;
    in.variants.push_back(r);
    Predictions p;
    for (int i = 0; i < samples; ++i) {
      p.sample_idx.push_back(i);
      p.label.push_back(labels[i]);
      // about 94% correct, errors differ per variant
      p.pred.push_back(rng() % 100 < 94 ? labels[i] : static_cast<int16_t>((labels[i] + 1 + rng() % 3) % 4));
    }
    in.predictions[r.name] = std::move(p);
    // GPT-2 Small's 48 projections, as the quantize job stores them (v0 = fp32: exact).
    const nlohmann::json cpu = {{"device", "CPU (2 cores)"}, {"libtorch", "2.11.0"}};
    const int64_t numel[4] = {768 * 2304, 768 * 768, 768 * 3072, 3072 * 768};
    const char* proj[4] = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};
    for (int layer = 0; layer < 12; ++layer) {
      for (int k = 0; k < 4; ++k) {
        LayerError e;
        e.experiment_id = 1;
        e.variant = r.name;
        e.layer = layer;
        e.projection = proj[k];
        e.numel = numel[k];
        e.signal_sq = numel[k] * 4e-4;
        e.error_sq = v == 0 ? 0.0 : e.signal_sq * 1e-4 * (1 + (rng() % 100) / 50.0);
        e.device = cpu;
        in.layer_errors[r.name].push_back(e);
      }
    }
    BenchResult lat;
    lat.variant = r.name;
    lat.kind = BenchKind::kLatency;
    lat.p50_ms = 5.0 + v;
    lat.p90_ms = 5.5 + v;
    lat.p99_ms = 6.0 + v;
    lat.device = device;
    in.bench.push_back(lat);
    for (int b : {1, 8, 32, 128, 512}) {
      BenchResult t = lat;
      t.kind = BenchKind::kThroughput;
      t.batch_size = b;
      t.samples_per_s = 100.0 * b / (1 + v);
      in.bench.push_back(t);
    }
  }
  return in;
}

/// User + system CPU seconds of this process so far: unlike wall time, independent of other load on the machine.
double cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

std::string load_average() {
  std::ifstream in("/proc/loadavg");
  std::string one;
  in >> one;
  return one.empty() ? "unknown" : one;
}

}  // namespace

int main(int argc, char** argv) {
  int variants = 10, samples = 7600, repeat = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const int value = std::atoi(argv[i + 1]);
    if (value <= 0) {
      std::cerr << "bad value for " << argv[i] << "\n";
      return 2;
    }
    if (!std::strcmp(argv[i], "--variants")) variants = value;
    else if (!std::strcmp(argv[i], "--samples")) samples = value;
    else if (!std::strcmp(argv[i], "--repeat")) repeat = value;
    else {
      std::cerr << "usage: report_bench [--variants N] [--samples N] [--repeat N]\n";
      return 2;
    }
  }
  const ReportInputs in = synthetic(variants, samples);
  double best = 1e300, worst = 0, cpu_best = 1e300;
  size_t bytes = 0;
  const std::string load_before = load_average();
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = cpu_seconds();
    const ReportData d = build_report_data(in);
    bytes = render_text(d).size() + render_markdown(d).size() + render_json(d).size() + render_html(d).size();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::min(best, s), worst = std::max(worst, s);
    cpu_best = std::min(cpu_best, cpu_seconds() - c0);
  }
  std::cout << fmt::format("report_bench: {} variants x {} samples, metrics + 1,000-resample bootstrap + 45-pair "
                           "McNemar + text/markdown/json/html ({} bytes): best {:.3f} s, worst {:.3f} s of {} runs "
                           "({} hardware threads, load average {}); CPU time best {:.3f} s; target < 2 s wall: {}\n",
                           variants, samples, bytes, best, worst, repeat, std::thread::hardware_concurrency(),
                           load_average(), cpu_best, worst < 2.0 ? "PASS" : "FAIL");
  const nlohmann::json out = {
      {"bench", "report_bench"},
      {"date", utc_now()},
      {"qbench_version", evalsvc::version()},
      {"device", {{"cpu", cpu_model()}, {"hardware_threads", std::thread::hardware_concurrency()}}},
      {"load_average_1min", {{"before", load_before}, {"after", load_average()}}},
      {"workload", {{"variants", variants}, {"samples", samples}, {"layer_errors_per_variant", 48},
                    {"bootstrap_resamples", 1000}, {"formats", {"text", "markdown", "json", "html"}},
                    {"output_bytes", bytes}}},
      {"runs", repeat},
      {"wall_seconds", {{"best", best}, {"worst", worst}}},
      {"cpu_seconds_best", cpu_best},
      {"target_wall_seconds", 2.0},
      {"pass", worst < 2.0}};
  std::cout << out.dump(2) << std::endl;
  return worst < 2.0 ? 0 : 1;
}
