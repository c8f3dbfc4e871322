// The report from a real PostgreSQL: an experiment written through the Store (predictions in shards, one of
// them redelivered, bench rows, memory figures, a training run, a failed variant) is read back by
// load_report_data and rendered in every format, and its figures match what was written. The same
// experiment round-tripped through the JSON fixture format must give the same report.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/scheduler/local_postgres.h"
#include "evalsvc/scheduler/report.h"
#include "evalsvc/scheduler/store.h"

namespace evalsvc::scheduler {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path make_temp_dir(const char* prefix) {
  std::string tmpl = (fs::temp_directory_path() / (std::string(prefix) + "-XXXXXX")).string();
  char* p = ::mkdtemp(tmpl.data());
  if (p == nullptr) throw IoError("mkdtemp failed for " + tmpl);
  return p;
}

class ReportServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = make_temp_dir("qbench-report-pg");
    LocalPostgresOptions o;
    o.root = root_;
    o.durable = false;
    pg_ = std::make_unique<LocalPostgres>(o);
    url_ = pg_->create_database("report");
    migrate(url_, find_migrations_dir());
  }
  static void TearDownTestSuite() {
    pg_.reset();
    std::error_code ec;
    evalsvc::remove_tree(root_, ec);
  }

  /// Writes a small experiment: fp32 (baseline), nf4 (3 flips each way against fp32), llm-int8 failed.
  static int64_t write_experiment(Store& store, const std::string& name) {
    const json spec = {{"name", name}, {"baseline", "fp32"}, {"model", {{"config", "tiny"}}},
                       {"data", {{"test_limit", 200}, {"max_len", 64}}}, {"bench", {{"seq_len", 64}}}};
    const int64_t id = store.create_experiment(name, spec);
    const json gpu = {{"device", "NVIDIA H100 80GB HBM3"}, {"libtorch", "2.11.0"}, {"cuda", "13.0"},
                      {"qbench", "0.1.0"}, {"date", "2026-11-27T05:00:00Z"}};
    for (const char* v : {"fp32", "nf4", "llm-int8"}) {
      VariantRecord rec;
      rec.experiment_id = id;
      rec.name = v;
      rec.method = v;
      rec.base_dtype = std::string(v) == "fp32" ? "fp32" : "fp16";
      if (std::string(v) != "fp32") rec.baseline = "fp32";
      store.upsert_variant(rec);
    }
    std::mt19937 rng(7);
    std::vector<PredictionRow> base(200), nf4(200);
    for (int i = 0; i < 200; ++i) {
      base[i].sample_idx = nf4[i].sample_idx = i;
      base[i].label = nf4[i].label = static_cast<int16_t>(rng() % 4);
      const bool wrong = i % 8 == 0;  // 25 errors: 87.5%
      base[i].pred = wrong ? static_cast<int16_t>((base[i].label + 1) % 4) : base[i].label;
      nf4[i].pred = base[i].pred;
      base[i].logits = {0.1f, 0.2f, 0.3f, 0.4f};
    }
    for (int i : {0, 8, 16}) nf4[i].pred = nf4[i].label;                                      // 3 fixed
    for (int i : {1, 2, 3}) nf4[i].pred = static_cast<int16_t>((nf4[i].label + 2) % 4);        // 3 new errors
    ShardTiming t{0.25, gpu};
    store.write_predictions(id, "fp32", 0, "eval-fp32-0", {base.begin(), base.begin() + 100}, t);
    store.write_predictions(id, "fp32", 1, "eval-fp32-1", {base.begin() + 100, base.end()}, t);
    store.write_predictions(id, "fp32", 1, "eval-fp32-1", {base.begin() + 100, base.end()}, t);  // redelivered
    store.write_predictions(id, "nf4", 0, "eval-nf4-0", nf4, ShardTiming{0.5, gpu});
    VariantMemory m32;
    m32.footprint_bytes = 8 << 20;
    m32.footprint_no_buffers_bytes = 7 << 20;
    m32.peak_mem_batch1_bytes = 20 << 20;  // as the bench job writes it: the latency row holds the same peak
    store.set_variant_memory(id, "fp32", m32);
    VariantMemory m4;
    m4.footprint_bytes = 2 << 20;
    store.set_variant_memory(id, "nf4", m4);
    for (const char* v : {"fp32", "nf4"}) {
      BenchResult lat;
      lat.experiment_id = id;
      lat.variant = v;
      lat.kind = BenchKind::kLatency;
      lat.seq_len = 64;
      lat.p50_ms = std::string(v) == "fp32" ? 1.5 : 2.5;
      lat.p90_ms = *lat.p50_ms + 0.1;
      lat.p99_ms = *lat.p50_ms + 0.3;
      lat.warmup_runs = 20;
      lat.timed_runs = 200;
      lat.device = gpu;
      if (std::string(v) == "fp32") lat.peak_mem_bytes = 20 << 20;
      store.upsert_bench_result(lat);
      for (int b : {1, 8, 32}) {
        BenchResult thr = lat;
        thr.kind = BenchKind::kThroughput;
        thr.batch_size = b;
        thr.p50_ms = thr.p90_ms = thr.p99_ms = std::nullopt;
        thr.samples_per_s = 100.0 * b / (std::string(v) == "fp32" ? 1.0 : 2.0);
        store.upsert_bench_result(thr);
      }
    }
    // The quantize job's rows: fp32 stores its weights exactly, nf4 has an error in every projection.
    const json cpu = {{"device", "CPU (2 cores)"}, {"libtorch", "2.11.0"}, {"qbench", "0.1.0"},
                      {"date", "2026-11-27T04:50:00Z"}};
    for (const char* v : {"fp32", "nf4"}) {
      std::vector<LayerError> rows;
      for (int layer = 0; layer < 2; ++layer) {
        for (const char* proj : {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}) {
          LayerError e;
          e.experiment_id = id;
          e.variant = v;
          e.layer = layer;
          e.projection = proj;
          e.numel = 4096;
          e.signal_sq = 1.6;
          // nf4: 20 dB everywhere except 15 dB at block 1's mlp.c_fc
          e.error_sq = std::string(v) == "fp32" ? 0.0 : (layer == 1 && std::string(proj) == "mlp.c_fc" ? 1.6 / std::pow(10.0, 1.5) : 0.016);
          e.max_abs_error = e.error_sq > 0 ? 0.01 : 0.0;
          e.device = cpu;
          rows.push_back(e);
        }
      }
      store.write_layer_errors(id, v, rows);
    }
    TrainingRun run;
    run.experiment_id = id;
    run.job_id = "train-" + name;
    run.epochs = 2;
    run.seconds = 12.5;
    run.device = gpu;
    store.insert_training_run(run);
    store.set_variant_state(id, "fp32", RunState::kDone);
    store.set_variant_state(id, "nf4", RunState::kDone);
    store.set_variant_state(id, "llm-int8", RunState::kFailed, "worker w1: CUDA error: illegal memory access");
    store.set_experiment_state(id, RunState::kFailed, "variant llm-int8 failed");
    return id;
  }

  static inline std::unique_ptr<LocalPostgres> pg_;
  static inline fs::path root_;
  static inline std::string url_;
};

TEST_F(ReportServerTest, RendersAnExperimentFromTheDatabase) {
  Store store(url_);
  const int64_t id = write_experiment(store, "report-e2e");
  const ReportData d = load_report_data(store, id);
  EXPECT_EQ(d.experiment_name, "report-e2e");
  EXPECT_EQ(d.state, "failed");
  ASSERT_EQ(d.variants.size(), 3u);
  const auto* fp32 = d.find("fp32");
  const auto* nf4 = d.find("nf4");
  const auto* llm = d.find("llm-int8");
  ASSERT_TRUE(fp32 && nf4 && llm);
  EXPECT_EQ(fp32->metrics->n, 200);
  EXPECT_DOUBLE_EQ(fp32->metrics->accuracy, 0.875);
  EXPECT_DOUBLE_EQ(nf4->metrics->accuracy, 0.875);
  EXPECT_EQ(nf4->vs_baseline->only_a_correct, 3);
  EXPECT_EQ(nf4->vs_baseline->only_b_correct, 3);
  EXPECT_DOUBLE_EQ(nf4->vs_baseline->agreement, 194.0 / 200.0);
  EXPECT_FALSE(nf4->vs_baseline->significant);
  EXPECT_EQ(llm->status, VariantStatus::kFailed);
  EXPECT_EQ(llm->error, "worker w1: CUDA error: illegal memory access");
  EXPECT_DOUBLE_EQ(*nf4->compression, 4.0);
  EXPECT_DOUBLE_EQ(fp32->latency->p50_ms, 1.5);
  EXPECT_EQ(fp32->latency->seq_len, 64);
  EXPECT_EQ(fp32->latency->on.device, "NVIDIA H100 80GB HBM3");
  EXPECT_EQ(fp32->best_throughput->batch_size, 32);
  // the redelivered shard is counted once, and says so
  EXPECT_EQ(fp32->dataset_rate->samples, 200);
  EXPECT_EQ(fp32->dataset_rate->max_deliveries, 2);
  EXPECT_DOUBLE_EQ(fp32->dataset_rate->samples_per_s, 200 / 0.5);
  ASSERT_TRUE(d.training.has_value());
  EXPECT_EQ(d.training->epochs, 2);
  // (c) with the device of the bench row that measured it; predictions with their shards' device
  EXPECT_EQ(fp32->peak_mem_batch1_on.device, "NVIDIA H100 80GB HBM3");
  EXPECT_EQ(nf4->evaluated_on.device, "NVIDIA H100 80GB HBM3");
  // SQNR from layer_errors
  ASSERT_TRUE(fp32->quant_error && nf4->quant_error);
  EXPECT_EQ(fp32->quant_error->exact, 8);
  EXPECT_FALSE(fp32->quant_error->min_db.has_value());
  EXPECT_NEAR(*nf4->quant_error->min_db, 15.0, 1e-9);
  EXPECT_EQ(nf4->quant_error->min_at, "h.1.mlp.c_fc");
  EXPECT_NEAR(*nf4->quant_error->median_db, 20.0, 1e-9);
  EXPECT_EQ(nf4->quant_error->on.device, "CPU (2 cores)");
  EXPECT_FALSE(llm->quant_error.has_value());

  const std::string text = render_text(d);
  EXPECT_NE(text.find("FAILED (failed): worker w1: CUDA error"), std::string::npos);
  EXPECT_NE(render_markdown(d).find("| nf4 | 8 | 15.00 dB | h.1.mlp.c\\_fc | 20.00 dB | 0 | CPU (2 cores)"),
            std::string::npos);
  EXPECT_NE(text.find("20.00 MiB on NVIDIA H100 80GB HBM3"), std::string::npos) << text;
  EXPECT_NE(text.find("If speed is priority (batch 1, NVIDIA H100 80GB HBM3): use fp32 (p50 1.50 ms)"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("statistically indistinguishable"), std::string::npos);
  const json j = json::parse(render_json(d));
  EXPECT_EQ(j["variants"][1]["vs_baseline"]["mcnemar_p"], 1.0);
  EXPECT_TRUE(j["variants"][2]["metrics"].is_null());
  EXPECT_NE(render_html(d).find("data-chart=\"confusion\""), std::string::npos);
  EXPECT_NE(render_markdown(d).find("| nf4 |"), std::string::npos);
}

TEST_F(ReportServerTest, FindsExperimentsByIdAndNameAndComparesThem) {
  Store store(url_);
  const int64_t a = write_experiment(store, "cmp");
  const int64_t b = write_experiment(store, "cmp");
  EXPECT_EQ(find_experiment(store, std::to_string(a)), a);
  EXPECT_EQ(find_experiment(store, "cmp"), b);  // the latest of that name
  EXPECT_FALSE(find_experiment(store, "no-such-experiment").has_value());
  EXPECT_FALSE(find_experiment(store, "99999999").has_value());
  EXPECT_THROW(load_report_data(store, 99999999), InputError);
  const ReportData da = load_report_data(store, a), db = load_report_data(store, b);
  const std::string cmp = render_comparison(da, db, ReportFormat::kText);
  EXPECT_NE(cmp.find("+0.00 ms"), std::string::npos) << cmp;
  const std::string html = render_comparison(da, db, ReportFormat::kHtml);
  EXPECT_NE(html.find("data-chart=\"compare-sqnr\""), std::string::npos);
  EXPECT_NE(html.find("<td>15.00 dB</td>"), std::string::npos);
}

TEST_F(ReportServerTest, IncompleteVariantIsNotReportedAsZero) {
  Store store(url_);
  const int64_t id = store.create_experiment("partial", {{"baseline", "fp32"}});
  VariantRecord rec;
  rec.experiment_id = id;
  rec.name = "fp32";
  rec.method = "fp32";
  rec.base_dtype = "fp32";
  store.upsert_variant(rec);
  store.set_variant_state(id, "fp32", RunState::kRunning);
  std::vector<PredictionRow> rows(10);
  for (int i = 0; i < 10; ++i) rows[i] = {i, static_cast<int16_t>(i % 4), static_cast<int16_t>(i % 4), {}};
  store.write_predictions(id, "fp32", 0, "eval-0", rows);
  const ReportData d = load_report_data(store, id);
  EXPECT_EQ(d.variants[0].status, VariantStatus::kIncomplete);
  EXPECT_EQ(d.variants[0].predictions, 10);
  const std::string text = render_text(d);
  EXPECT_NE(text.find("incomplete (state running, 10 predictions stored)"), std::string::npos);
  EXPECT_EQ(text.find("\u2022 Accuracy:"), std::string::npos);  // no accuracy line in the variant block
  EXPECT_NO_THROW(render_html(d));
}

}  // namespace
}  // namespace evalsvc::scheduler
