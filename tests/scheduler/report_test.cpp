// The report without a database: golden files (text, Markdown, JSON) rendered from the fixture database
// state tests/fixtures/report/golden_experiment.json (a failed variant, an incomplete one, one without bench
// results, equal accuracies, a latency tie), the finding/recommendation rules case by case, bad fixture
// input, the comparison, and the HTML opened in headless Chromium.
//
// Regenerate the golden files after an intended change: QBENCH_UPDATE_GOLDEN=1 ./scheduler_report_test,
// then review the diff.
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/wait.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>

#include <fmt/format.h>

#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/scheduler/report.h"

namespace evalsvc::scheduler {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

fs::path fixture_dir() { return source_dir() / "tests" / "fixtures" / "report"; }

json fixture_json() { return json::parse(read_file(fixture_dir() / "golden_experiment.json")); }
ReportData fixture_data() { return build_report_data(report_inputs_from_json(fixture_json())); }

void check_golden(const std::string& file, const std::string& got) {
  const fs::path path = fixture_dir() / file;
  if (getenv_opt("QBENCH_UPDATE_GOLDEN")) {
    write_file_atomic(path, got);
    GTEST_SKIP() << "rewrote " << path;
  }
  ASSERT_TRUE(fs::exists(path)) << path << " missing; run with QBENCH_UPDATE_GOLDEN=1 to create it";
  const std::string want = read_file(path);
  if (want == got) return;
  // Point at the first differing line instead of dumping two whole reports.
  std::istringstream a(want), b(got);
  std::string la, lb;
  int line = 1;
  while (true) {
    const bool ga = static_cast<bool>(std::getline(a, la)), gb = static_cast<bool>(std::getline(b, lb));
    if (!ga && !gb) break;
    if (la != lb || ga != gb) {
      FAIL() << file << " differs at line " << line << "\n  expected: " << (ga ? la : "<end>") << "\n  got:      "
             << (gb ? lb : "<end>");
    }
    ++line;
  }
}

// ---------------------------------------------------------------------------------------------------------
// Golden files

TEST(ReportGolden, Text) { check_golden("expected.txt", render_text(fixture_data())); }
TEST(ReportGolden, Markdown) { check_golden("expected.md", render_markdown(fixture_data())); }
TEST(ReportGolden, Json) { check_golden("expected.json", render_json(fixture_data())); }

// ---------------------------------------------------------------------------------------------------------
// The fixture's figures, checked independently of the golden files

TEST(ReportData, FixtureFigures) {
  const ReportData d = fixture_data();
  ASSERT_EQ(d.variants.size(), 6u);
  const auto* fp32 = d.find("fp32");
  const auto* int8 = d.find("int8-sym");
  const auto* nf4 = d.find("nf4");
  const auto* llm = d.find("llm-int8");
  const auto* failed = d.find("int8-sym-channel");
  const auto* running = d.find("fp16");
  ASSERT_TRUE(fp32 && int8 && nf4 && llm && failed && running);
  EXPECT_DOUBLE_EQ(fp32->metrics->accuracy, 0.9);
  EXPECT_DOUBLE_EQ(int8->metrics->accuracy, 0.9);
  EXPECT_DOUBLE_EQ(nf4->metrics->accuracy, 0.9);
  EXPECT_DOUBLE_EQ(llm->metrics->accuracy, 0.825);
  // identical predictions: agreement 1, no discordant pair, p = 1
  EXPECT_DOUBLE_EQ(int8->vs_baseline->agreement, 1.0);
  EXPECT_DOUBLE_EQ(int8->vs_baseline->p_value, 1.0);
  // 10 fixed, 10 new errors
  EXPECT_EQ(nf4->vs_baseline->only_a_correct, 10);
  EXPECT_EQ(nf4->vs_baseline->only_b_correct, 10);
  EXPECT_FALSE(nf4->vs_baseline->significant);
  EXPECT_TRUE(llm->vs_baseline->significant);
  EXPECT_EQ(failed->status, VariantStatus::kFailed);
  EXPECT_FALSE(failed->metrics.has_value());
  EXPECT_EQ(running->status, VariantStatus::kIncomplete);
  EXPECT_FALSE(running->metrics.has_value());
  EXPECT_EQ(running->predictions, 100);
  // memory ratios against fp32's footprint (a)
  EXPECT_NEAR(*nf4->compression, 486.71 / 127.86, 1e-3);
  EXPECT_NEAR(*fp32->compression, 1.0, 0);
  // the variant without bench results has none, and the failed one has no memory
  EXPECT_FALSE(llm->latency.has_value());
  EXPECT_TRUE(llm->sweep.empty());
  EXPECT_FALSE(failed->memory.footprint_bytes.has_value());
  // sweep best point and the redelivered shard
  EXPECT_EQ(fp32->best_throughput->batch_size, 128);
  EXPECT_EQ(nf4->dataset_rate->max_deliveries, 2);
  EXPECT_NEAR(nf4->dataset_rate->samples_per_s, 400 / 1.2, 1e-9);
  EXPECT_EQ(fp32->latency->on.device, "NVIDIA H200");
  EXPECT_EQ(fp32->latency->on.software, "libtorch 2.11.0, CUDA 13.0, qbench 0.1.0");
  // (c) names the device of the bench row holding the same peak; nf4's bench rows hold none
  EXPECT_EQ(fp32->peak_mem_batch1_on.device, "NVIDIA H200");
  EXPECT_EQ(fp32->peak_mem_max_batch_on.device, "NVIDIA H200");
  EXPECT_EQ(nf4->peak_mem_batch1_on.device, "unknown device");
  // predictions name their shards' device; llm-int8 has no shard rows
  EXPECT_EQ(fp32->evaluated_on.device, "NVIDIA H200");
  EXPECT_EQ(llm->evaluated_on.device, "unknown device");
}

TEST(ReportData, FixtureQuantizationError) {
  const ReportData d = fixture_data();
  const auto& fp32 = d.find("fp32")->quant_error;
  const auto& int8 = d.find("int8-sym")->quant_error;
  const auto& nf4 = d.find("nf4")->quant_error;
  const auto& llm = d.find("llm-int8")->quant_error;
  ASSERT_TRUE(fp32 && int8 && nf4 && llm);
  EXPECT_FALSE(d.find("int8-sym-channel")->quant_error.has_value());  // failed before quantizing: not measured
  // fp32 stores its weights exactly: no dB figure at all
  EXPECT_EQ(fp32->exact, 8);
  EXPECT_FALSE(fp32->min_db.has_value());
  EXPECT_FALSE(fp32->median_db.has_value());
  // int8-sym's rows come in reverse order: sorted back, lowest at block 0's mlp.c_proj
  EXPECT_EQ(int8->layers.front().layer, 0);
  EXPECT_EQ(int8->layers.front().projection, "attn.c_attn");
  EXPECT_NEAR(*int8->min_db, 33.5, 1e-6);
  EXPECT_EQ(int8->min_at, "h.0.mlp.c_proj");
  EXPECT_NEAR(*int8->median_db, 40.0, 1e-6);  // (39.9 + 40.1) / 2
  // a tie at the lowest SQNR names the first projection in layer order
  EXPECT_NEAR(*nf4->min_db, 19.6, 1e-6);
  EXPECT_EQ(nf4->min_at, "h.0.attn.c_proj");
  // 3 exact of 8: the median of 5 finite values and 3 infinite ones is (43.0 + 44.1) / 2
  EXPECT_EQ(llm->exact, 3);
  EXPECT_NEAR(*llm->median_db, 43.55, 1e-6);
  EXPECT_EQ(llm->on.software, "libtorch 1.13.1, qbench 0.1.0");
  // every row's dB figure is 10 log10(signal / error)
  for (const auto& e : int8->layers) EXPECT_NEAR(*e.sqnr_db, 10 * std::log10(e.signal_sq / e.error_sq), 1e-12);
  // JSON carries every projection; null where exact
  const json j = report_to_json(d);
  EXPECT_EQ(j["variants"][1]["quantization_error"]["layers"].size(), 8u);
  EXPECT_TRUE(j["variants"][0]["quantization_error"]["layers"][0]["sqnr_db"].is_null());
  EXPECT_TRUE(j["variants"][4]["quantization_error"].is_null());
}

TEST(ReportData, SqnrMedianIsExactWhenHalfTheProjectionsAre) {
  json j = fixture_json();
  auto& rows = j["variants"][1]["layer_errors"];
  for (size_t k = 0; k < 4; ++k) rows[k]["error_sq"] = 0.0;  // 4 of 8 exact: the middle two are 1 finite, 1 infinite
  const ReportData d = build_report_data(report_inputs_from_json(j));
  const auto& q = d.find("int8-sym")->quant_error;
  EXPECT_EQ(q->exact, 4);
  EXPECT_TRUE(q->min_db.has_value());
  EXPECT_FALSE(q->median_db.has_value());
  EXPECT_TRUE(std::regex_search(render_text(d), std::regex("median exact over 8\\s+projections \\(4 exact\\)")));
  EXPECT_NE(render_markdown(d).find("| int8-sym | 8 | 33.50 dB | h.0.mlp.c\\_proj | exact | 4 |"), std::string::npos);
}

TEST(ReportText, NotMeasuredIsNeverZero) {
  const ReportData d = fixture_data();
  const std::string text = render_text(d);
  // the block of the failed variant
  const auto start = text.find("\nint8-sym-channel: INT8 symmetric (per channel), base fp32\n");
  ASSERT_NE(start, std::string::npos);
  const std::string block = text.substr(start, text.find("\nfp16:", start) - start);
  EXPECT_NE(block.find("FAILED (failed): quantize job"), std::string::npos) << block;
  EXPECT_TRUE(std::regex_search(block, std::regex("Footprint \\(a\\), with mask buffers: +not measured"))) << block;
  EXPECT_EQ(block.find("0.00%"), std::string::npos) << block;
  EXPECT_EQ(block.find("0.00 MiB"), std::string::npos) << block;
  // llm-int8 has no bench results
  const auto l = text.find("\nllm-int8: LLM.int8");
  ASSERT_NE(l, std::string::npos);
  const std::string lb = text.substr(l, text.find("\nint8-sym-channel:", l) - l);
  EXPECT_TRUE(std::regex_search(lb, std::regex("Latency \\(batch 1\\): +not measured"))) << lb;
  EXPECT_TRUE(std::regex_search(lb, std::regex("Throughput sweep: +not measured"))) << lb;
  const json j = report_to_json(d);
  EXPECT_TRUE(j["variants"][3]["latency"].is_null());
  EXPECT_TRUE(j["variants"][4]["metrics"].is_null());
  EXPECT_TRUE(j["variants"][4]["memory"]["footprint_bytes"].is_null());
}

// ---------------------------------------------------------------------------------------------------------
// Rules, case by case, on small built experiments

/// Builds ReportInputs in code: `n` samples, labels i % 4; each variant's errors are given as sample ids.
struct Builder {
  int n = 400;
  ReportInputs in;
  Builder() {
    in.experiment.id = 1;
    in.experiment.name = "rules";
    in.experiment.spec = {{"baseline", "fp32"}};
    in.experiment.state = RunState::kDone;
    in.generated_at = "2026-01-01T00:00:00Z";
    in.qbench_version = "test";
  }
  Builder& variant(const std::string& name, const std::vector<int>& errors, std::optional<int64_t> footprint = {},
                   RunState state = RunState::kDone) {
    VariantRecord r;
    r.experiment_id = 1;
    r.name = name;
    r.method = name;
    r.base_dtype = "fp32";
    r.state = state;
    r.memory.footprint_bytes = footprint;
    in.variants.push_back(r);
    if (state == RunState::kDone) {
      Predictions p;
      for (int i = 0; i < n; ++i) {
        p.sample_idx.push_back(i);
        p.label.push_back(static_cast<int16_t>(i % 4));
        const bool wrong = std::find(errors.begin(), errors.end(), i) != errors.end();
        p.pred.push_back(static_cast<int16_t>(wrong ? (i + 1) % 4 : i % 4));
      }
      in.predictions[name] = p;
    }
    return *this;
  }
  Builder& latency(const std::string& name, double p50, const std::string& device = "GPU A") {
    BenchResult b;
    b.variant = name;
    b.kind = BenchKind::kLatency;
    b.p50_ms = p50;
    b.p90_ms = p50 * 1.1;
    b.p99_ms = p50 * 1.3;
    b.device = {{"device", device}};
    in.bench.push_back(b);
    return *this;
  }
  Builder& throughput(const std::string& name, int batch, double rate, const std::string& device = "GPU A") {
    BenchResult b;
    b.variant = name;
    b.kind = BenchKind::kThroughput;
    b.batch_size = batch;
    b.samples_per_s = rate;
    b.device = {{"device", device}};
    in.bench.push_back(b);
    return *this;
  }
  ReportData data() const { return build_report_data(in); }
};

std::vector<int> range(int from, int to, int step = 1) {
  std::vector<int> v;
  for (int i = from; i < to; i += step) v.push_back(i);
  return v;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

TEST(ReportRules, HighestAccuracyOnlyWhenSignificantAgainstEveryOther) {
  // fp32: 40 errors; good: 5 of them; mid: 30 of them -> good beats both (b = 35 / 25, c = 0).
  const ReportData d = Builder().variant("fp32", range(0, 400, 10)).variant("good", range(0, 50, 10))
                           .variant("mid", range(0, 300, 10)).data();
  const Findings f = derive_findings(d);
  EXPECT_EQ(f.accuracy, Findings::Accuracy::kSignificantlyHighest);
  EXPECT_EQ(f.top_accuracy, std::vector<std::string>{"good"});
  EXPECT_LT(f.max_p_vs_top, kSignificance);
  EXPECT_NE(render_text(d).find("good (98.75%), significantly above every other variant"), std::string::npos);
}

TEST(ReportRules, ReferenceLikeNoiseIsCalledIndistinguishable) {
  // The reference's situation at 7,600 samples: 94.62 / 94.54 / 94.58 / 94.70 %, small discordant counts.
  Builder b;
  b.n = 7600;
  std::vector<int> base = range(0, 7600, 18);  // 423 errors
  base.resize(409);                            // 7191 correct = 94.62%
  std::vector<int> scratch = base, bnb = base, nf4 = base;
  // new errors at odd sample ids (the baseline's are even), so they never coincide with a baseline error
  auto add_odd = [](std::vector<int>& v, int start, int count) {
    for (int j = 0; j < count; ++j) v.push_back(start + 2 * 61 * j);
  };
  add_odd(scratch, 1, 60);
  scratch.erase(scratch.begin(), scratch.begin() + 54);  // net +6 errors -> 94.54%
  add_odd(bnb, 3, 31);
  bnb.erase(bnb.begin(), bnb.begin() + 28);  // net +3 -> 94.58%
  add_odd(nf4, 5, 24);
  nf4.erase(nf4.begin(), nf4.begin() + 30);  // net -6 -> 94.70%
  b.variant("fp32", base).variant("int8-scratch", scratch).variant("int8-bnb", bnb).variant("nf4", nf4);
  b.latency("fp32", 8.73).latency("int8-scratch", 10.41).latency("int8-bnb", 29.39).latency("nf4", 16.66);
  const ReportData d = b.data();
  EXPECT_NEAR(d.find("nf4")->metrics->accuracy, 0.9470, 5e-5);
  EXPECT_NEAR(d.find("int8-scratch")->metrics->accuracy, 0.9454, 5e-5);
  const Findings f = derive_findings(d);
  EXPECT_EQ(f.accuracy, Findings::Accuracy::kIndistinguishable);
  EXPECT_EQ(f.top_accuracy.size(), 4u);
  const std::string text = render_text(d);
  EXPECT_EQ(text.find("Highest Accuracy:       nf4"), std::string::npos);
  EXPECT_NE(text.find("statistically indistinguishable"), std::string::npos);
  // speed: the reference recommended its slowest variant; here the fastest one is named
  ASSERT_EQ(f.speed.size(), 1u);
  EXPECT_EQ(f.speed[0].lowest_latency, std::vector<std::string>{"fp32"});
  bool speed_rec = false;
  for (const auto& r : f.recommendations) {
    if (r.rfind("If speed is priority", 0) == 0) {
      speed_rec = true;
      EXPECT_NE(r.find("use fp32 (p50 8.73 ms)"), std::string::npos) << r;
      EXPECT_EQ(r.find("int8-bnb"), std::string::npos) << r;
    }
  }
  EXPECT_TRUE(speed_rec);
}

TEST(ReportRules, TopGroupNamesSignificantlyLowerVariants) {
  const ReportData d =
      Builder().variant("fp32", range(0, 400, 10)).variant("same", range(0, 400, 10)).variant("bad", range(0, 400, 5)).data();
  const Findings f = derive_findings(d);
  EXPECT_EQ(f.accuracy, Findings::Accuracy::kTopGroup);
  EXPECT_TRUE(contains(f.top_accuracy, "fp32") && contains(f.top_accuracy, "same"));
  EXPECT_EQ(f.below_top, std::vector<std::string>{"bad"});
  EXPECT_EQ(f.accuracy_degraded, std::vector<std::string>{"bad"});
  EXPECT_EQ(f.accuracy_preserved, std::vector<std::string>{"same"});
}

TEST(ReportRules, LatencyTieAtPrintedPrecisionNamesBoth) {
  const ReportData d = Builder().variant("fp32", {}).variant("a", {}).variant("b", {})
                           .latency("fp32", 3.0).latency("a", 2.004).latency("b", 2.0).data();
  const Findings f = derive_findings(d);
  ASSERT_EQ(f.speed.size(), 1u);
  EXPECT_EQ(f.speed[0].lowest_latency, (std::vector<std::string>{"a", "b"}));
  bool found = false;
  for (const auto& r : f.recommendations) found |= r.find("use a and b (p50 2.00 ms), tied") != std::string::npos;
  EXPECT_TRUE(found);
}

TEST(ReportRules, SpeedIsComparedOnlyWithinOneDevice) {
  // "quick" has a lower p50 than fp32 but was measured on another device: each device gets its own finding.
  const ReportData d = Builder().variant("fp32", {}).variant("quick", {}).variant("slow", {})
                           .latency("fp32", 5.0, "GPU A").latency("slow", 9.0, "GPU A").latency("quick", 1.0, "CPU")
                           .throughput("fp32", 8, 100, "GPU A").throughput("quick", 8, 900, "CPU").data();
  const Findings f = derive_findings(d);
  ASSERT_EQ(f.speed.size(), 2u);
  EXPECT_EQ(f.speed[0].device, "GPU A");  // the baseline's device first
  EXPECT_EQ(f.speed[0].lowest_latency, std::vector<std::string>{"fp32"});
  EXPECT_EQ(f.speed[0].highest_throughput, std::vector<std::string>{"fp32"});
  EXPECT_EQ(f.speed[1].lowest_latency, std::vector<std::string>{"quick"});
  bool warned = false;
  for (const auto& w : f.warnings) warned |= w.find("2 devices") != std::string::npos;
  EXPECT_TRUE(warned);
  for (const auto& t : f.trade_offs) {
    if (t.rfind("Speed vs baseline on GPU A", 0) == 0) EXPECT_EQ(t.find("quick"), std::string::npos) << t;
  }
  const std::string html = render_html(d);
  EXPECT_NE(html.find("data-chart=\"latency\" data-device=\"GPU A\""), std::string::npos);
  EXPECT_NE(html.find("data-chart=\"latency\" data-device=\"CPU\""), std::string::npos);
}

TEST(ReportRules, MemoryRecommendationSkipsDegradedVariants) {
  // "tiny" is smallest but significantly less accurate; "small" keeps the accuracy.
  const ReportData d = Builder().variant("fp32", range(0, 400, 10), 1000 << 20)
                           .variant("small", range(0, 400, 10), 300 << 20)
                           .variant("tiny", range(0, 400, 4), 100 << 20).data();
  const Findings f = derive_findings(d);
  EXPECT_EQ(f.lowest_memory, std::vector<std::string>{"tiny"});
  ASSERT_GE(f.recommendations.size(), 2u);
  EXPECT_NE(f.recommendations[0].find("If memory is constrained: use small (footprint (a) 300.00 MiB, 3.33x smaller"),
            std::string::npos)
      << f.recommendations[0];
  EXPECT_NE(f.recommendations[1].find("tiny is smaller still"), std::string::npos) << f.recommendations[1];
}

TEST(ReportRules, NothingMeasuredGivesNoClaims) {
  const ReportData d = Builder().variant("fp32", {}, {}, RunState::kRunning).variant("x", {}, {}, RunState::kFailed).data();
  const Findings f = derive_findings(d);
  EXPECT_EQ(f.accuracy, Findings::Accuracy::kNone);
  EXPECT_TRUE(f.lowest_memory.empty());
  EXPECT_TRUE(f.speed.empty());
  EXPECT_EQ(f.warnings.size(), 2u);
  const std::string text = render_text(d);
  EXPECT_NE(text.find("no variant has accuracy figures yet"), std::string::npos);
  EXPECT_NE(text.find("no latency or throughput figures were measured"), std::string::npos);
}

/// Property over the fixture: every variant the text calls fastest has the lowest p50 of its device.
TEST(ReportRules, TextNamesTheFastestOfTheTable) {
  const ReportData d = fixture_data();
  const Findings f = derive_findings(d);
  ASSERT_FALSE(f.speed.empty());
  for (const auto& s : f.speed) {
    double min_p50 = 1e300;
    for (const auto& v : d.variants) {
      if (v.latency && v.latency->on.device == s.device) min_p50 = std::min(min_p50, v.latency->p50_ms);
    }
    for (const auto& name : s.lowest_latency) {
      EXPECT_LT(std::abs(d.find(name)->latency->p50_ms - min_p50), kLatencyTieMs * 2) << name;
    }
  }
  EXPECT_EQ(f.speed[0].lowest_latency, (std::vector<std::string>{"int8-sym", "nf4"}));
}

// ---------------------------------------------------------------------------------------------------------
// Bad input never crashes

TEST(ReportInput, MalformedFixturesAreInputErrorsWithPaths) {
  auto expect_error = [](json j, const std::string& fragment) {
    try {
      report_inputs_from_json(j);
      ADD_FAILURE() << "no error for " << fragment;
    } catch (const InputError& e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  json j = fixture_json();
  j["experiment"].erase("name");
  expect_error(j, "$.experiment.name: required");
  j = fixture_json();
  j["variants"][0]["preds"] = "01x3";
  expect_error(j, "$.variants[0].preds[2]: expected a digit");
  j = fixture_json();
  j["variants"][1]["state"] = "exploded";
  expect_error(j, "$.variants[1].state: unknown state 'exploded'");
  j = fixture_json();
  j["variants"][0]["preds"] = "0123";
  expect_error(j, "labels but 4 preds");
  j = fixture_json();
  j["variants"][0]["memory"]["footprint_bytes"] = -5;
  expect_error(j, "$.variants[0].memory.footprint_bytes: expected bytes >= 0");
  j = fixture_json();
  j["variants"][0]["bench"][0]["kind"] = "speed";
  expect_error(j, "$.variants[0].bench[0].kind");
  j = fixture_json();
  j["experiment"]["created_at"] = "yesterday";
  expect_error(j, "$.experiment.created_at: expected an ISO-8601");
  j = fixture_json();
  j["variants"][2]["name"] = "fp32";
  expect_error(j, "duplicate variant 'fp32'");
  j = fixture_json();
  j["variants"][1]["layer_errors"][2].erase("numel");
  expect_error(j, "$.variants[1].layer_errors[2].numel: required");
  j = fixture_json();
  j["variants"][1]["layer_errors"] = "none";
  expect_error(j, "$.variants[1].layer_errors: expected an array");
  j = fixture_json();
  j["variants"][2]["layer_errors"][0]["signal_sq"] = -1.0;
  try {
    build_report_data(report_inputs_from_json(j));
    ADD_FAILURE() << "negative signal accepted";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("variant 'nf4', layer 0 attn.c_attn: sqnr_db"), std::string::npos) << e.what();
  }
  expect_error(json::array(), "$: expected an object");
}

TEST(ReportInput, InconsistentStoredRowsAreReported) {
  Builder b;
  b.variant("fp32", {}).variant("x", {});
  b.in.predictions["x"].label[6] = 1;  // fp32 stored label 2 for sample 6
  EXPECT_THROW(b.data(), FormatError);
  Builder c;
  c.variant("fp32", {});
  c.in.predictions["fp32"].pred[0] = 99;
  EXPECT_THROW(c.data(), InputError);
  Builder e;  // a class id above 3 widens the table instead of crashing
  e.variant("fp32", {});
  e.in.predictions["fp32"].pred[0] = 5;
  const ReportData d = e.data();
  EXPECT_EQ(d.class_names.size(), 6u);
  EXPECT_EQ(d.class_names[5], "class 5");
  EXPECT_NO_THROW(render_text(d));
  EXPECT_NO_THROW(render_html(d));
}

TEST(ReportInput, NonPositiveTimesAreNotMeasurements) {
  const ReportData d = Builder().variant("fp32", {}, 0).variant("x", {}, 100).latency("fp32", 0.0).latency("x", 2.0)
                           .throughput("fp32", 8, -1.0).data();
  EXPECT_FALSE(d.variants[0].latency.has_value());
  EXPECT_TRUE(d.variants[0].sweep.empty());
  EXPECT_FALSE(d.variants[1].compression.has_value());  // a zero baseline footprint gives no ratio
  for (const std::string& out : {render_text(d), render_markdown(d), render_json(d), render_html(d)}) {
    EXPECT_FALSE(std::regex_search(out, std::regex("\\b(inf|nan)\\b", std::regex::icase))) << out;
  }
}

TEST(ReportInput, FormatsParse) {
  EXPECT_EQ(parse_report_format("md"), ReportFormat::kMarkdown);
  EXPECT_EQ(parse_report_format("html"), ReportFormat::kHtml);
  EXPECT_FALSE(parse_report_format("pdf").has_value());
}

// ---------------------------------------------------------------------------------------------------------
// Comparison

TEST(ReportCompare, SideBySideWithDifferences) {
  const ReportData a = fixture_data();
  json jb = fixture_json();
  jb["experiment"]["id"] = 8;
  jb["experiment"]["name"] = "rerun";
  jb["variants"][2]["bench"][0]["p50_ms"] = 4.0;               // nf4 faster, same device
  jb["variants"][1]["bench"][0]["device"]["device"] = "CPU";   // int8-sym on another device
  jb["variants"].erase(5);                                     // fp16 absent in B
  const ReportData b = build_report_data(report_inputs_from_json(jb));
  const std::string text = render_comparison(a, b, ReportFormat::kText);
  EXPECT_NE(text.find("A = golden-agnews (id 7)"), std::string::npos);
  EXPECT_NE(text.find("different devices"), std::string::npos) << text;
  EXPECT_NE(text.find("-0.50 ms"), std::string::npos) << text;
  EXPECT_NE(text.find("absent"), std::string::npos);
  const json j = json::parse(render_comparison(a, b, ReportFormat::kJson));
  ASSERT_EQ(j["variants"].size(), 6u);
  EXPECT_EQ(j["variants"][1]["p50_same_device"], false);
  EXPECT_TRUE(j["variants"][1]["p50_delta_ms"].is_null());
  EXPECT_DOUBLE_EQ(j["variants"][2]["p50_delta_ms"].get<double>(), -0.5);
  EXPECT_EQ(j["variants"][5]["status_b"], "absent");
  EXPECT_NE(render_comparison(a, b, ReportFormat::kMarkdown).find("| nf4 |"), std::string::npos);
  // every figure's device: B's int8-sym latency was measured on the CPU
  EXPECT_NE(text.find("B: predictions computed on NVIDIA H200"), std::string::npos) << text;
  EXPECT_NE(text.find("latency measured on NVIDIA H200 (libtorch 2.11.0, CUDA 13.0, qbench 0.1.0; 2026-11-20); CPU"),
            std::string::npos)
      << text;
  EXPECT_EQ(j["variants"][1]["p50_measured_on_b"]["device"], "CPU");
  EXPECT_NEAR(j["variants"][1]["min_sqnr_db_a"].get<double>(), 33.5, 1e-6);
  EXPECT_TRUE(j["variants"][0]["min_sqnr_db_a"].is_null());  // fp32: exact
  EXPECT_EQ(j["variants"][0]["sqnr_measured_a"], true);
  EXPECT_EQ(j["variants"][4]["sqnr_measured_a"], false);
}

TEST(ReportCompare, HtmlIsSelfContainedWithItsCharts) {
  const ReportData a = fixture_data();
  json jb = fixture_json();
  jb["experiment"]["id"] = 8;
  jb["experiment"]["name"] = "<b>rerun</b>";
  jb["variants"][1]["layer_errors"][0]["error_sq"] = 1e-3;  // int8-sym's lowest SQNR changes in B
  jb["variants"].erase(5);                                   // fp16 absent in B
  const ReportData b = build_report_data(report_inputs_from_json(jb));
  const std::string html = render_comparison(a, b, ReportFormat::kHtml);
  for (const auto& name : comparison_chart_names()) {
    EXPECT_NE(html.find("data-chart=\"" + name + "\""), std::string::npos) << name;
  }
  EXPECT_NE(html.find("<body data-charts=\"compare-accuracy compare-sqnr\">"), std::string::npos);
  EXPECT_EQ(html.find(" src="), std::string::npos);
  EXPECT_EQ(html.find(" href="), std::string::npos);
  EXPECT_EQ(html.find("url("), std::string::npos);
  EXPECT_NE(html.find("Content-Security-Policy"), std::string::npos);
  EXPECT_EQ(html.find("<b>rerun</b>"), std::string::npos);  // names are escaped
  EXPECT_NE(html.find("&lt;b&gt;rerun&lt;/b&gt;"), std::string::npos);
  // the table's cells are the text comparison's cells
  EXPECT_NE(html.find("<td>33.50 dB</td>"), std::string::npos);
  EXPECT_NE(html.find("<td class=\"nm\">absent</td>"), std::string::npos) << "fp16 is in A only";
  // no variant with figures: the charts say so instead of drawing zeros
  ReportData empty_a = a, empty_b = b;
  for (auto* d : {&empty_a, &empty_b}) {
    for (auto& v : d->variants) {
      v.metrics.reset();
      v.accuracy_ci.reset();
      v.quant_error.reset();
    }
  }
  const std::string none = render_comparison(empty_a, empty_b, ReportFormat::kHtml);
  EXPECT_NE(none.find("data-chart=\"compare-accuracy\" data-empty=\"true\""), std::string::npos);
  EXPECT_NE(none.find("data-chart=\"compare-sqnr\" data-empty=\"true\""), std::string::npos);
}

// ---------------------------------------------------------------------------------------------------------
// HTML

TEST(ReportHtml, SelfContainedWithEveryChart) {
  const std::string html = render_html(fixture_data());
  for (const auto& name : html_chart_names()) {
    EXPECT_NE(html.find("data-chart=\"" + name + "\""), std::string::npos) << name;
  }
  // no external resource: no src/href attributes, no @import, no url()
  EXPECT_EQ(html.find(" src="), std::string::npos);
  EXPECT_EQ(html.find(" href="), std::string::npos);
  EXPECT_EQ(html.find("@import"), std::string::npos);
  EXPECT_EQ(html.find("url("), std::string::npos);
  // the failed variant's error text is escaped, never injected
  ReportData d = fixture_data();
  d.variants[4].error = "<script>alert(1)</script>";
  EXPECT_EQ(render_html(d).find("<script>alert(1)"), std::string::npos);
  // one confusion matrix per evaluated variant (4 in the fixture)
  const std::regex conf("<svg data-chart=\"confusion\"");
  EXPECT_EQ(std::distance(std::sregex_iterator(html.begin(), html.end(), conf), std::sregex_iterator()), 4);
}

/// Runs `cmd` through the shell; returns its exit status.
int run_shell(const std::string& cmd) {
  const int rc = std::system(cmd.c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

/// scripts/html_check.sh renders in headless Chromium; exit 77 = Chromium not available.
struct HtmlCheck {
  int rc = 0;
  std::string dom, log;
};
HtmlCheck html_check(const fs::path& html, const fs::path& out_dir) {
  fs::create_directories(out_dir);
  HtmlCheck r;
  r.rc = run_shell("bash '" + (source_dir() / "scripts" / "html_check.sh").string() + "' '" + html.string() + "' '" +
                   out_dir.string() + "' > '" + (out_dir / "check.out").string() + "' 2>&1");
  if (fs::exists(out_dir / "dom.html")) r.dom = read_file(out_dir / "dom.html");
  if (fs::exists(out_dir / "check.out")) r.log = read_file(out_dir / "check.out");
  return r;
}

TEST(ReportHtml, RendersInHeadlessChromium) {
  const fs::path dir = fs::path(EVALSVC_TEST_BINARY_DIR) / "test-artifacts" / "report";
  fs::create_directories(dir);
  const fs::path html = dir / "report.html";
  write_file_atomic(html, render_html(fixture_data()));
  HtmlCheck r = html_check(html, dir / "chromium");
  if (r.rc == 77) GTEST_SKIP() << "Chromium not available: " << r.log;
  EXPECT_EQ(r.rc, 0) << r.log;
  EXPECT_NE(r.dom.find(fmt::format("data-rendered=\"ok:{}\"", html_chart_names().size())), std::string::npos) << r.log;
  EXPECT_TRUE(fs::exists(dir / "chromium" / "screenshot.png")) << "screenshot artifact missing";
  EXPECT_GT(fs::file_size(dir / "chromium" / "screenshot.png"), 10000u);

  // The check must be able to fail: a page with a script error and a missing chart is rejected.
  std::string broken = render_html(fixture_data());
  const std::string marker = "data-chart=\"sweep\"";
  for (size_t pos; (pos = broken.find(marker)) != std::string::npos;) broken.replace(pos, marker.size(), "data-x=\"y\"");
  broken.insert(broken.find("</body>"), "<script>undefined_function_qbench();</script>");
  const fs::path bad = dir / "broken.html";
  write_file_atomic(bad, broken);
  HtmlCheck rb = html_check(bad, dir / "chromium-broken");
  EXPECT_NE(rb.rc, 0) << rb.log;
  EXPECT_NE(rb.dom.find("data-rendered=\"missing:sweep\""), std::string::npos);
  EXPECT_NE(rb.log.find("undefined_function_qbench"), std::string::npos) << rb.log;
}

TEST(ReportHtml, ComparisonRendersInHeadlessChromium) {
  const fs::path dir = fs::path(EVALSVC_TEST_BINARY_DIR) / "test-artifacts" / "report";
  fs::create_directories(dir);
  json jb = fixture_json();
  jb["experiment"]["id"] = 8;
  jb["experiment"]["name"] = "rerun";
  jb["variants"][2]["bench"][0]["p50_ms"] = 4.0;
  const fs::path html = dir / "compare.html";
  write_file_atomic(html, render_comparison(fixture_data(), build_report_data(report_inputs_from_json(jb)),
                                            ReportFormat::kHtml));
  HtmlCheck r = html_check(html, dir / "chromium-compare");
  if (r.rc == 77) GTEST_SKIP() << "Chromium not available: " << r.log;
  EXPECT_EQ(r.rc, 0) << r.log;
  EXPECT_NE(r.dom.find(fmt::format("data-rendered=\"ok:{}\"", comparison_chart_names().size())), std::string::npos)
      << r.log;
  EXPECT_GT(fs::file_size(dir / "chromium-compare" / "screenshot.png"), 10000u);
}

}  // namespace
}  // namespace evalsvc::scheduler
