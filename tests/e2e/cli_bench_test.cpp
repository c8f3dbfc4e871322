// `qbench bench` (the bench job's timings outside the service) run as users run it: one JSON line per
// method with a batch-1 latency and the sweep asked for, the test-set rate over real rows with --test-set, and
// clear errors for an unknown method or a bad --test-set option.
#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <map>
#include <sstream>
#include <string>

#include <nlohmann/json.hpp>

#include "evalsvc/common/paths.h"

namespace {

std::pair<int, std::string> run(const std::string& args) {
  const std::string cmd = std::string(EVALSVC_QBENCH_BINARY) + " " + args + " 2>&1";
  std::string out;
  FILE* f = ::popen(cmd.c_str(), "r");
  if (!f) return {-1, ""};
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) out.append(buf, n);
  const int status = ::pclose(f);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

// The first JSON line of the command's output (the log lines around it are text); null when there is none.
nlohmann::json first_json_line(const std::string& out) {
  const auto pos = out.find("{\"");
  if (pos == std::string::npos) return nullptr;
  return nlohmann::json::parse(out.substr(pos, out.find('\n', pos) - pos));
}

TEST(CliBench, PrintsOneLinePerMethod) {
  auto [rc, out] = run("bench --config tiny --device cpu --methods fp32,int8-sym,nf4 --iters 3 --warmup 1 "
                       "--batch-sizes 1,2 --seq-len 32");
  ASSERT_EQ(rc, 0) << out;
  std::istringstream lines(out);
  std::string line;
  std::vector<nlohmann::json> rows;
  while (std::getline(lines, line)) {
    if (!line.empty() && line[0] == '{') rows.push_back(nlohmann::json::parse(line));
  }
  ASSERT_EQ(rows.size(), 3u) << out;
  EXPECT_EQ(rows[0]["method"], "fp32");
  EXPECT_EQ(rows[2]["method"], "nf4");
  EXPECT_EQ(rows[2]["base_dtype"], "fp16");
  for (const auto& r : rows) {
    EXPECT_GT(r["latency"]["p50_ms"].get<double>(), 0.0);
    EXPECT_EQ(r["latency"]["runs"], 3);
    EXPECT_FALSE(r["latency"]["cuda_graph"].get<bool>());  // CPU: eager forwards
    ASSERT_EQ(r["sweep"].size(), 2u);
    EXPECT_EQ(r["sweep"][1]["batch_size"], 2);
    EXPECT_GT(r["sweep"][1]["samples_per_s"].get<double>(), 0.0);
    EXPECT_EQ(r["seq_len"], 32);
  }
}

TEST(CliBench, TestSetRateOverRealRows) {
  const std::string cache = "/tmp/qbench_cli_bench_test_cache_" + std::to_string(::getpid());
  auto [rc, out] = run("bench --config tiny --device cpu --methods fp16 --iters 2 --warmup 1 --batch-sizes 1 "
                       "--seq-len 16 --test-set --test-rows 40 --eval-batch-size 16 --cache " + cache);
  evalsvc::remove_tree(cache);
  ASSERT_EQ(rc, 0) << out;
  const auto row = first_json_line(out);
  ASSERT_FALSE(row.is_null()) << out;
  ASSERT_TRUE(row.contains("test_set")) << out;
  EXPECT_EQ(row["test_set"]["rows"], 40);
  EXPECT_EQ(row["test_set"]["batch_size"], 16);
  EXPECT_GT(row["test_set"]["samples_per_s"].get<double>(), 0.0);
  EXPECT_GT(row["test_set"]["seconds"].get<double>(), 0.0);
  auto [rc2, out2] = run("bench --config tiny --device cpu --methods fp16 --iters 1 --test-set --eval-batch-size 0");
  EXPECT_NE(rc2, 0);
  EXPECT_NE(out2.find("--eval-batch-size"), std::string::npos) << out2;
}

TEST(CliBench, UnknownMethodIsAnErrorNamingIt) {
  auto [rc, out] = run("bench --config tiny --device cpu --methods int4-magic --iters 1");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("int4-magic"), std::string::npos) << out;
}

TEST(CliBench, Fp8GemmTakesOnlyTheProductsThereAre) {
  auto [rc, out] = run("bench --config tiny --device cpu --methods fp16 --iters 1 --fp8-gemm fastest");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("--fp8-gemm"), std::string::npos) << out;
#if !EVALSVC_WITH_CUDA
  // A CPU build has none of the fp8 products to choose from, and says so rather than ignoring the flag.
  auto [rc2, out2] = run("bench --config tiny --device cpu --methods fp16 --iters 1 --fp8-gemm wgmma");
  EXPECT_NE(rc2, 0);
  EXPECT_NE(out2.find("no CUDA kernels"), std::string::npos) << out2;
#endif
}

// --last-block sets where the last block runs; the JSON line says which it took for each timed shape.
TEST(CliBench, LastBlockSettingReachesTheModelAndTheJson) {
  const std::map<std::string, bool> pruned = {{"pruned", true}, {"full", false}, {"auto", false}};
  for (const auto& [mode, want] : pruned) {
    auto [rc, out] =
        run("bench --config tiny --device cpu --methods fp16 --iters 1 --warmup 0 --batch-sizes 2 --last-block " + mode);
    ASSERT_EQ(rc, 0) << out;
    const auto row = first_json_line(out);
    ASSERT_FALSE(row.is_null()) << out;
    EXPECT_EQ(row["last_block"], mode);
    EXPECT_EQ(row["latency"]["last_block_pruned"], want) << mode;  // auto: 128 tokens, below the threshold
    EXPECT_EQ(row["sweep"][0]["last_block_pruned"], want) << mode;
  }
  auto [rc, out] = run("bench --config tiny --device cpu --methods fp16 --iters 1 --last-block sideways");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("--last-block"), std::string::npos) << out;
}

// --pdl: the JSON line says what was asked and whether the launches used it (never on the CPU, whose forwards
// run no CUDA kernel).
TEST(CliBench, PdlSettingReachesTheJson) {
  for (const std::string mode : {"on", "off"}) {
    auto [rc, out] =
        run("bench --config tiny --device cpu --methods fp16 --iters 1 --warmup 0 --batch-sizes 1 --pdl " + mode);
    ASSERT_EQ(rc, 0) << out;
    const auto row = first_json_line(out);
    ASSERT_FALSE(row.is_null()) << out;
    EXPECT_EQ(row["pdl"], mode);
    EXPECT_FALSE(row["pdl_used"].get<bool>()) << mode;
  }
  auto [rc, out] = run("bench --config tiny --device cpu --methods fp16 --iters 1 --pdl maybe");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("--pdl"), std::string::npos) << out;
}

// --threads: the CPU device label every figure carries names the threads the forwards ran with.
TEST(CliBench, ThreadsReachTheDeviceLabel) {
  for (const std::string n : {"1", "2"}) {
    auto [rc, out] = run("bench --config tiny --device cpu --methods fp32 --iters 1 --warmup 0 --batch-sizes 1 "
                         "--threads " + n);
    ASSERT_EQ(rc, 0) << out;
    const auto row = first_json_line(out);
    ASSERT_FALSE(row.is_null()) << out;
    const std::string label = row["device"]["device"].get<std::string>();
    EXPECT_NE(label.find(", " + n + " torch threads"), std::string::npos) << label;
  }
  auto [rc, out] = run("bench --config tiny --device cpu --methods fp32 --iters 1 --threads -1");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("--threads"), std::string::npos) << out;
}

}  // namespace
