// ExperimentSpec: presets, defaults, normalization round trips, overrides, and one table row per validation
// rule (each error must name the JSON path of the offending field). A seeded mutation sweep checks that no
// malformed input escapes as anything but InputError.
#include "evalsvc/common/experiment_spec.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "evalsvc/common/error.h"

namespace evalsvc {
namespace {

using nlohmann::json;

// A valid spec without a preset; error cases are RFC 7396 merge patches of it (arrays replace, null deletes).
const char* kBase = R"({
  "name": "base",
  "model": {"config": "tiny"},
  "variants": ["fp32", "int8-sym",
               {"name": "nf4-bf16", "method": "nf4", "base_dtype": "bf16", "options": {"double_quant": false}}],
  "baseline": "fp32"
})";

json base_with(const char* patch) {
  json j = json::parse(kBase);
  j.merge_patch(json::parse(patch));
  return j;
}

std::string error_of(const json& j) {
  try {
    ExperimentSpec::parse(j);
  } catch (const InputError& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(ExperimentSpecTest, MethodTable) {
  EXPECT_EQ(known_methods(), (std::vector<std::string>{"fp32", "fp16", "bf16", "int8-sym", "int8-sym-channel",
                                                       "int8-w8a8", "llm-int8", "nf4", "fp8-e4m3"}));
  const std::vector<std::pair<std::string, std::string>> bases = {
      {"fp32", "fp32"},      {"fp16", "fp16"},     {"bf16", "bf16"}, {"int8-sym", "fp32"}, {"int8-sym-channel", "fp16"},
      {"int8-w8a8", "fp16"}, {"llm-int8", "fp16"}, {"nf4", "fp16"},  {"fp8-e4m3", "bf16"}};
  for (const auto& [method, base] : bases) {
    EXPECT_EQ(default_base_dtype(method), base) << method;
    EXPECT_TRUE(is_known_method(method));
    EXPECT_EQ(method_needs_cuda(method), method == "fp8-e4m3") << method;
  }
  EXPECT_FALSE(is_known_method("nf5"));
  EXPECT_FALSE(method_needs_cuda("nf5"));
  EXPECT_THROW(default_base_dtype("int4"), InputError);
}

TEST(ExperimentSpecTest, TinyPreset) {
  const auto s = ExperimentSpec::from_preset("tiny");
  EXPECT_EQ(s.name, "tiny");
  EXPECT_EQ(s.preset, "tiny");
  EXPECT_EQ(s.model.config, "tiny");
  EXPECT_EQ(s.model.init, std::nullopt);
  EXPECT_EQ(s.train.epochs, 3);
  EXPECT_EQ(s.train.batch_size, 32);
  EXPECT_DOUBLE_EQ(s.train.lr, 1e-3);
  std::vector<std::string> names;
  for (const auto& v : s.variants) names.push_back(v.name);
  EXPECT_EQ(names, (std::vector<std::string>{"fp32", "fp16", "bf16", "int8-sym", "int8-sym-channel", "int8-w8a8",
                                             "llm-int8", "nf4"}));
  EXPECT_EQ(s.device, "cpu");
  EXPECT_EQ(s.eval.shards, 4);
  EXPECT_EQ(s.bench.batch_sizes, (std::vector<int64_t>{1, 8, 32}));
  EXPECT_EQ(s.bench.warmup, 3);
  EXPECT_EQ(s.bench.iters, 20);
  EXPECT_EQ(s.bench.test_set_rows, 1000);
  EXPECT_EQ(s.baseline, "fp32");
  EXPECT_EQ(s.max_attempts, 3);
}

TEST(ExperimentSpecTest, SeedPreset) {
  const auto s = ExperimentSpec::from_preset("seed");
  EXPECT_EQ(s.model.config, "gpt2");
  EXPECT_EQ(s.train.epochs, 10);
  EXPECT_EQ(s.train.batch_size, 64);
  EXPECT_DOUBLE_EQ(s.train.lr, 2e-4);
  std::vector<std::string> names;
  for (const auto& v : s.variants) names.push_back(v.name);
  EXPECT_EQ(names,
            (std::vector<std::string>{"fp32", "fp16", "bf16", "int8-sym", "int8-w8a8", "llm-int8", "nf4", "fp8-e4m3"}));
  EXPECT_EQ(s.device, "cuda");
  EXPECT_EQ(s.eval.shards, 8);
  EXPECT_EQ(s.bench.batch_sizes, (std::vector<int64_t>{1, 8, 32, 128, 512}));
  EXPECT_EQ(s.bench.warmup, 20);
  EXPECT_EQ(s.bench.iters, 200);
  EXPECT_EQ(s.bench.test_set_rows, 0);  // every test row
  EXPECT_EQ(s.model_context(), 1024);
}

TEST(ExperimentSpecTest, ZeroEpochsEvaluatesModelInitAsItIs) {
  // No training needs a fine-tuned checkpoint to evaluate; the error names the field.
  EXPECT_NE(error_of(base_with(R"({"train": {"epochs": 0}})")).find("train.epochs"), std::string::npos);
  const auto s = ExperimentSpec::parse(base_with(R"({"train": {"epochs": 0}, "model": {"init": "/ckpt/exp-1/model"}})"));
  EXPECT_EQ(s.train.epochs, 0);
  EXPECT_EQ(s.model.init.value_or(""), "/ckpt/exp-1/model");
  EXPECT_NE(error_of(base_with(R"({"train": {"epochs": -1}, "model": {"init": "/x"}})")).find("train.epochs"),
            std::string::npos);
}

TEST(ExperimentSpecTest, UnknownPreset) {
  try {
    ExperimentSpec::from_preset("huge");
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "preset: unknown preset 'huge' (expected one of tiny, seed)");
  }
}

TEST(ExperimentSpecTest, DefaultsWithoutPreset) {
  const auto s = ExperimentSpec::parse(json::parse(kBase));
  EXPECT_EQ(s.preset, std::nullopt);
  EXPECT_EQ(s.data.train, std::nullopt);
  EXPECT_EQ(s.data.train_limit, 0);
  EXPECT_EQ(s.data.test_limit, 0);
  EXPECT_EQ(s.data.max_len, 128);
  EXPECT_EQ(s.data.validation_fraction, 0.0);
  EXPECT_EQ(s.train.epochs, 3);
  EXPECT_EQ(s.train.batch_size, 32);
  EXPECT_DOUBLE_EQ(s.train.weight_decay, 0.01);
  EXPECT_DOUBLE_EQ(s.train.warmup_fraction, 0.06);
  EXPECT_DOUBLE_EQ(s.train.grad_clip, 1.0);
  EXPECT_EQ(s.train.seed, 42u);
  EXPECT_EQ(s.eval.shards, 8);
  EXPECT_EQ(s.eval.batch_size, 256);
  EXPECT_TRUE(s.bench.enabled);
  EXPECT_EQ(s.bench.batch_sizes, (std::vector<int64_t>{1, 8, 32, 128, 512}));
  EXPECT_EQ(s.bench.seq_len, 128);
  EXPECT_EQ(s.device, "cpu");
  ASSERT_EQ(s.variants.size(), 3u);
  EXPECT_EQ(s.variants[0], (VariantSpec{"fp32", "fp32", "fp32", {}}));
  EXPECT_EQ(s.variants[1], (VariantSpec{"int8-sym", "int8-sym", "fp32", {}}));
  EXPECT_EQ(s.variants[2].name, "nf4-bf16");
  EXPECT_EQ(s.variants[2].method, "nf4");
  EXPECT_EQ(s.variants[2].base_dtype, "bf16");
  EXPECT_FALSE(s.variants[2].options.double_quant);
  EXPECT_EQ(s.variants[2].options.block_size, 64);
  EXPECT_NE(s.find_variant("nf4-bf16"), nullptr);
  EXPECT_EQ(s.find_variant("nf4"), nullptr);
}

TEST(ExperimentSpecTest, PresetFieldsOverrideOnlyWhatIsGiven) {
  const auto s = ExperimentSpec::parse(json::parse(R"({"preset": "tiny", "name": "mine",
      "train": {"epochs": 5}, "eval": {"shards": 2}, "variants": ["fp32", "nf4"]})"));
  EXPECT_EQ(s.name, "mine");
  EXPECT_EQ(s.train.epochs, 5);
  EXPECT_DOUBLE_EQ(s.train.lr, 1e-3);  // from the preset
  EXPECT_EQ(s.train.batch_size, 32);
  EXPECT_EQ(s.eval.shards, 2);
  EXPECT_EQ(s.eval.batch_size, 256);
  EXPECT_EQ(s.bench.iters, 20);      // from the preset
  ASSERT_EQ(s.variants.size(), 2u);  // the list replaces the preset's
  EXPECT_EQ(s.variants[1].name, "nf4");
}

TEST(ExperimentSpecTest, NormalizedJsonIsCompleteAndRoundTrips) {
  std::vector<ExperimentSpec> specs = {ExperimentSpec::from_preset("tiny"), ExperimentSpec::from_preset("seed"),
                                       ExperimentSpec::parse(json::parse(kBase))};
  specs.push_back(ExperimentSpec::parse(json::parse(R"({"name": "odd", "model": {"config": "gpt2", "init": "ckpt/gpt2"},
      "data": {"train": "/x/train.csv", "test": "/x/test.csv", "train_limit": 1000, "test_limit": 500,
               "max_len": 512, "validation_fraction": 0.1},
      "train": {"epochs": 1, "batch_size": 7, "lr": 3.3e-5, "weight_decay": 0, "warmup_fraction": 0.25,
                "grad_clip": 0, "seed": 18446744073709551615},
      "variants": [{"name": "q", "method": "llm-int8", "options": {"outlier_threshold": 4.5}}, "fp8-e4m3"],
      "baseline": "q", "eval": {"shards": 1024, "batch_size": 1},
      "bench": {"enabled": false, "batch_sizes": [3], "seq_len": 1024, "warmup": 0, "iters": 1, "test_set_rows": 500},
      "device": "cuda", "max_attempts": 100})")));
  for (const auto& s : specs) {
    const json j = s.to_json();
    for (const char* key : {"name", "preset", "model", "data", "train", "variants", "baseline", "eval", "bench",
                            "device", "max_attempts"}) {
      EXPECT_TRUE(j.contains(key)) << s.name << ": " << key;
    }
    EXPECT_EQ(j["data"].size(), 6u);
    EXPECT_EQ(j["train"].size(), 7u);
    EXPECT_EQ(j["bench"].size(), 6u);
    for (const auto& v : j["variants"]) {
      EXPECT_TRUE(v.is_object());
      EXPECT_EQ(v.size(), 4u);
    }
    EXPECT_EQ(ExperimentSpec::parse(j), s) << j.dump();
    // Through text too: doubles and the uint64 seed must survive serialization exactly.
    EXPECT_EQ(ExperimentSpec::parse_text(j.dump()), s) << j.dump();
    EXPECT_EQ(ExperimentSpec::parse(j).to_json(), j);
  }
  EXPECT_EQ(specs[3].train.seed, 18446744073709551615ull);
  EXPECT_EQ(specs[3].variants[0].options.outlier_threshold, 4.5);
}

TEST(ExperimentSpecTest, VariantOptionsAppearOnlyForTheirMethod) {
  const auto s = ExperimentSpec::from_preset("tiny");
  for (const auto& v : s.variants) {
    const json o = v.to_json()["options"];
    if (v.method == "nf4") {
      EXPECT_EQ(o, json::parse(R"({"double_quant": true, "block_size": 64})"));
    } else if (v.method == "llm-int8") {
      EXPECT_EQ(o, json::parse(R"({"outlier_threshold": 6.0})"));
    } else {
      EXPECT_EQ(o, json::object()) << v.method;
    }
  }
}

struct ErrorCase {
  const char* patch;     // merge patch applied to kBase
  const char* expected;  // the message must start with this (path first)
};

TEST(ExperimentSpecTest, ValidationErrorsNameThePath) {
  const std::vector<ErrorCase> cases = {
      // unknown fields anywhere
      {R"({"epochs": 3})", "epochs: unknown field (expected one of name, preset, model"},
      {R"({"train": {"epoch": 3}})", "train.epoch: unknown field (expected one of epochs, batch_size"},
      {R"({"model": {"layers": 2}})", "model.layers: unknown field"},
      {R"({"data": {"shuffle": true}})", "data.shuffle: unknown field"},
      {R"({"eval": {"workers": 2}})", "eval.workers: unknown field"},
      {R"({"bench": {"repeat": 2}})", "bench.repeat: unknown field"},
      {R"({"variants": ["fp32", {"method": "nf4", "bits": 4}]})", "variants[1].bits: unknown field"},
      {R"({"variants": ["fp32", {"method": "nf4", "options": {"blocksize": 64}}]})",
       "variants[1].options.blocksize: not an option of method 'nf4' (its options: double_quant, block_size)"},
      {R"({"variants": ["fp32", {"method": "int8-sym", "options": {"double_quant": true}}]})",
       "variants[1].options.double_quant: not an option of method 'int8-sym' (it takes none)"},
      // wrong types
      {R"([1])", "spec: expected a JSON object, got array"},
      {R"({"train": 3})", "train: expected an object, got number 3"},
      {R"({"train": {"epochs": "3"}})", "train.epochs: expected an integer, got string \"3\""},
      {R"({"train": {"epochs": 2.5}})", "train.epochs: expected an integer, got number 2.5"},
      {R"({"train": {"lr": "fast"}})", "train.lr: expected a number, got string \"fast\""},
      {R"({"train": {"seed": -1}})", "train.seed: must be >= 0, got -1"},
      {R"({"train": {"seed": 1.5}})", "train.seed: expected an integer"},
      {R"({"bench": {"enabled": 1}})", "bench.enabled: expected true or false, got number 1"},
      {R"({"bench": {"batch_sizes": 8}})", "bench.batch_sizes: expected an array of batch sizes, got number 8"},
      {R"({"data": {"train": 5}})", "data.train: expected null or a path string, got number 5"},
      {R"({"data": {"test": ""}})", "data.test: must be null or a non-empty path"},
      {R"({"model": {"init": ""}})", "model.init: must be null or a non-empty path"},
      {R"({"model": {"config": "gpt3"}})", "model.config: unknown model config 'gpt3' (expected one of tiny, gpt2)"},
      {R"({"name": 7})", "name: expected a string, got number 7"},
      {R"({"variants": {"fp32": {}}})", "variants: expected an array of variants, got object"},
      {R"({"variants": ["fp32", 4]})", "variants[1]: expected a method name or an object"},
      {R"({"variants": ["fp32", {"method": 4}]})", "variants[1].method: expected a string, got number 4"},
      {R"({"device": "tpu"})", "device: unknown device 'tpu' (expected one of cpu, cuda)"},
      {R"({"preset": "huge"})", "preset: unknown preset 'huge' (expected one of tiny, seed)"},
      // out of range
      {R"({"train": {"epochs": 0}})", "train.epochs: 0 (no training) needs model.init"},
      {R"({"train": {"epochs": -1}})", "train.epochs: must be in [0, 10000], got -1"},
      {R"({"train": {"epochs": 18446744073709551615}})", "train.epochs: must be in [0, 10000], got 1844674407"},
      {R"({"train": {"batch_size": 0}})", "train.batch_size: must be in [1, 1048576], got 0"},
      {R"({"train": {"lr": 0}})", "train.lr: must be > 0, got 0"},
      {R"({"train": {"lr": -1e-3}})", "train.lr: must be > 0, got -0.001"},
      {R"({"train": {"weight_decay": -0.1}})", "train.weight_decay: must be >= 0"},
      {R"({"train": {"warmup_fraction": 1.0}})", "train.warmup_fraction: must be in [0, 1)"},
      {R"({"train": {"grad_clip": -1}})", "train.grad_clip: must be >= 0"},
      {R"({"eval": {"shards": 0}})", "eval.shards: must be in [1, 1024], got 0"},
      {R"({"eval": {"shards": 1025}})", "eval.shards: must be in [1, 1024], got 1025"},
      {R"({"eval": {"batch_size": 0}})", "eval.batch_size: must be in [1, 1048576], got 0"},
      {R"({"bench": {"batch_sizes": [1, 0]}})", "bench.batch_sizes[1]: must be in [1, 1048576], got 0"},
      {R"({"bench": {"batch_sizes": []}})", "bench.batch_sizes: must list at least one batch size"},
      {R"({"bench": {"batch_sizes": [1, 8, 1]}})", "bench.batch_sizes[2]: batch size 1 is listed twice"},
      {R"({"bench": {"iters": 0}})", "bench.iters: must be in [1, 1000000], got 0"},
      {R"({"bench": {"test_set_rows": -1}})", "bench.test_set_rows: must be in [0, 2147483647], got -1"},
      {R"({"bench": {"warmup": -1}})", "bench.warmup: must be in [0, 1000000], got -1"},
      {R"({"data": {"validation_fraction": 0.5}})", "data.validation_fraction: must be in [0, 0.5), got 0.5"},
      {R"({"data": {"validation_fraction": -0.1}})", "data.validation_fraction: must be in [0, 0.5), got -0.1"},
      {R"({"data": {"train_limit": -1}})", "data.train_limit: must be in [0, 2147483647], got -1"},
      {R"({"data": {"max_len": 0}})", "data.max_len: must be in [1, 1024], got 0"},
      {R"({"data": {"max_len": 256}})", "data.max_len: 256 exceeds the context of model 'tiny' (128 positions)"},
      {R"({"bench": {"seq_len": 129}})", "bench.seq_len: 129 exceeds the context of model 'tiny' (128 positions)"},
      {R"({"max_attempts": 0})", "max_attempts: must be in [1, 100], got 0"},
      {R"({"variants": ["fp32", {"method": "nf4", "options": {"block_size": 48}}]})",
       "variants[1].options.block_size: must be a power of two in [32, 4096], got 48"},
      {R"({"variants": ["fp32", {"method": "nf4", "options": {"block_size": 16}}]})",
       "variants[1].options.block_size: must be in [32, 4096], got 16"},
      {R"({"variants": ["fp32", {"method": "nf4", "options": {"double_quant": "yes"}}]})",
       "variants[1].options.double_quant: expected true or false"},
      {R"({"variants": ["fp32", {"method": "llm-int8", "options": {"outlier_threshold": -1}}]})",
       "variants[1].options.outlier_threshold: must be >= 0, got -1"},
      // methods, names, baseline, device
      {R"({"variants": ["fp32", "int8-sym", {"method": "nf5"}]})",
       "variants[2].method: unknown method 'nf5' (expected one of fp32, fp16, bf16, int8-sym, int8-sym-channel, "
       "int8-w8a8, llm-int8, nf4, fp8-e4m3)"},
      {R"({"variants": ["fp32", "int4"]})", "variants[1]: unknown method 'int4' (expected one of fp32"},
      {R"({"variants": ["fp32", {"name": "x"}]})", "variants[1].method: required"},
      {R"({"variants": ["fp32", {"method": "nf4", "base_dtype": "fp64"}]})",
       "variants[1].base_dtype: unknown base dtype 'fp64' (expected one of fp32, fp16, bf16)"},
      {R"({"variants": ["fp32", {"method": "fp16", "base_dtype": "bf16"}]})",
       "variants[1].base_dtype: method 'fp16' runs entirely in fp16, so base_dtype 'bf16' is not possible"},
      {R"({"variants": ["fp32", "nf4", "nf4"]})",
       "variants[2]: duplicate variant name 'nf4' (also variants[1]; give one a \"name\")"},
      {R"({"variants": ["fp32", {"name": "fp32", "method": "int8-sym"}]})",
       "variants[1].name: duplicate variant name 'fp32' (also variants[0]"},
      {R"({"variants": ["fp32", {"name": "a:b", "method": "nf4"}]})",
       "variants[1].name: 'a:b' is not a valid name ([A-Za-z0-9_.-], 1 to 64 characters)"},
      {R"({"variants": []})", "variants: must list at least one variant"},
      {R"({"variants": null})", "variants: required when no preset is given"},
      {R"({"baseline": "fp16"})", "baseline: 'fp16' is not one of the variants (fp32, int8-sym, nf4-bf16)"},
      {R"({"variants": ["fp32", "fp8-e4m3"]})",
       "variants[1]: method 'fp8-e4m3' needs device cuda (FP8 matrix products need compute capability 8.9+), but "
       "device is 'cpu'"},
      {R"({"variants": ["fp32", {"method": "fp8-e4m3"}]})", "variants[1].method: method 'fp8-e4m3' needs device cuda"},
      {R"({"name": null})", "name: required"},
      {R"({"name": "my run"})", "name: 'my run' is not a valid name"},
      {R"({"name": ""})", "name: '' is not a valid name"},
      {R"({"model": null})", "model.config: required when no preset is given"},
  };
  for (const auto& c : cases) {
    json j;
    if (std::string(c.patch).front() == '[') {
      j = json::parse(c.patch);
    } else {
      j = base_with(c.patch);
    }
    const std::string msg = error_of(j);
    EXPECT_EQ(msg.rfind(c.expected, 0), 0u)
        << "patch " << c.patch << "\n  expected: " << c.expected << "\n  got:      " << msg;
  }
}

TEST(ExperimentSpecTest, LongNamesAndManyVariants) {
  EXPECT_NO_THROW(ExperimentSpec::parse(
      base_with(R"({"name": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"})")));
  EXPECT_EQ(error_of(base_with(R"({"name": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"})"))
                .rfind("name: 'aaaa", 0),
            0u);
  json j = json::parse(kBase);
  j["variants"] = json::array();
  for (int i = 0; i < 65; ++i) j["variants"].push_back({{"name", "v" + std::to_string(i)}, {"method", "fp32"}});
  j["baseline"] = "v0";
  EXPECT_EQ(error_of(j), "variants: at most 64 variants, got 65");
  j["variants"].erase(64);
  EXPECT_EQ(ExperimentSpec::parse(j).variants.size(), 64u);
}

// Merge patches cannot set null (it deletes), so these are built directly: null is never "use the default"
// except for the fields documented as nullable (preset, model.init, data.train, data.test).
TEST(ExperimentSpecTest, NullOnlyWhereNullable) {
  json j = json::parse(kBase);
  j["train"] = {{"epochs", nullptr}};
  EXPECT_EQ(error_of(j), "train.epochs: expected an integer, got null");
  j = json::parse(kBase);
  j["baseline"] = nullptr;
  EXPECT_EQ(error_of(j), "baseline: expected a string, got null");
  j = json::parse(kBase);
  j["preset"] = nullptr;
  j["model"]["init"] = nullptr;
  j["data"] = {{"train", nullptr}, {"test", nullptr}};
  const auto s = ExperimentSpec::parse(j);
  EXPECT_EQ(s.preset, std::nullopt);
  EXPECT_EQ(s.model.init, std::nullopt);
}

TEST(ExperimentSpecTest, InvalidUtf8IsAnInputError) {
  json j = json::parse(kBase);
  j["data"] = {{"train", std::string("a\xff.csv")}};
  EXPECT_EQ(error_of(j), "data.train: is not valid UTF-8");
  j = json::parse(kBase);
  j["name"] = std::string("\xff");
  EXPECT_EQ(error_of(j), "name: is not valid UTF-8");
  j = json::parse(kBase);
  j["device"] = std::string("\xff");
  EXPECT_EQ(error_of(j), "device: is not valid UTF-8");
  auto s = ExperimentSpec::from_preset("tiny");
  EXPECT_THROW(s.apply_override("data.test=\xff"), InputError);
  EXPECT_THROW(ExperimentSpec::parse_text("{\"name\": \"\xff\"}"), InputError);
}

TEST(ExperimentSpecTest, SeedPresetWithCpuDeviceRejectsFp8) {
  EXPECT_EQ(error_of(json::parse(R"({"preset": "seed", "name": "s", "device": "cpu"})")),
            "variants[7]: method 'fp8-e4m3' needs device cuda (FP8 matrix products need compute capability 8.9+), "
            "but device is 'cpu'");
}

TEST(ExperimentSpecTest, ParseTextErrors) {
  try {
    ExperimentSpec::parse_text("{\"name\": \"x\",\n \"train\": {,}}", "my.json");
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("my.json: invalid JSON: ", 0), 0u) << e.what();
    EXPECT_NE(std::string(e.what()).find("line 2"), std::string::npos) << e.what();
  }
  try {
    ExperimentSpec::parse_text(R"({"name": "x", "train": {"epochs": 2, "epochs": 3}})", "my.json");
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "my.json: train.epochs: field given twice");
  }
  try {
    ExperimentSpec::parse_text(R"({"name": "x", "variants": ["fp32", [1, {}], {"method": "nf4", "method": "fp16"}]})");
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "spec: variants[2].method: field given twice");
  }
  try {
    ExperimentSpec::parse_text(R"({"name": "x", "preset": "tiny", "train": {"lr": 0}})", "s.json");
    FAIL() << "no error";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "s.json: train.lr: must be > 0, got 0");
  }
  EXPECT_THROW(ExperimentSpec::parse_text("", "empty.json"), InputError);
  EXPECT_THROW(ExperimentSpec::parse_text(R"({"name": "x", "train": {"lr": 1e999}})"), InputError);
  EXPECT_EQ(ExperimentSpec::parse_text(R"({"preset": "tiny", "name": "t"})").name, "t");
}

TEST(ExperimentSpecTest, Overrides) {
  auto s = ExperimentSpec::from_preset("tiny");
  s.apply_override("train.epochs=2");
  EXPECT_EQ(s.train.epochs, 2);
  s.apply_override("name=my-run");
  EXPECT_EQ(s.name, "my-run");
  s.apply_override(" train.lr = 5e-4 ");
  EXPECT_DOUBLE_EQ(s.train.lr, 5e-4);
  s.apply_override("variants[7].options.block_size=128");
  EXPECT_EQ(s.variants[7].options.block_size, 128);
  s.apply_override("model.init=/ckpt/gpt2");
  EXPECT_EQ(s.model.init, "/ckpt/gpt2");
  s.apply_override("model.init=null");
  EXPECT_EQ(s.model.init, std::nullopt);
  s.apply_override("bench.batch_sizes=[1,2,4]");
  EXPECT_EQ(s.bench.batch_sizes, (std::vector<int64_t>{1, 2, 4}));
  s.apply_override(R"(variants=["fp32",{"name":"q","method":"nf4","base_dtype":"bf16"}])");
  ASSERT_EQ(s.variants.size(), 2u);
  EXPECT_EQ(s.variants[1].base_dtype, "bf16");
  s.apply_override("device=cuda");
  s.apply_override("variants[1].method=fp8-e4m3");  // now valid: device is cuda
  EXPECT_EQ(s.variants[1].method, "fp8-e4m3");
  EXPECT_EQ(s.variants[1].name, "q");
  EXPECT_EQ(s.variants[1].base_dtype, "bf16");  // fp8-e4m3's default
  s.apply_override("variants[1].method=nf4");
  EXPECT_EQ(s.variants[1].base_dtype, "fp16");  // a new method restarts from its defaults, not from bf16
  s.apply_override("variants[0].method=bf16");  // fp32's base would be impossible for bf16
  EXPECT_EQ(s.variants[0], (VariantSpec{"fp32", "bf16", "bf16", {}}));
  s.apply_override("baseline=q");
  EXPECT_EQ(s.train.epochs, 2);  // earlier overrides stay
  EXPECT_EQ(s.preset, "tiny");
}

TEST(ExperimentSpecTest, OverrideErrorsLeaveTheSpecUnchanged) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"train.epochs", "override 'train.epochs': expected path=value"},
      {"train..epochs=2", "override 'train..epochs=2': 'train..epochs' is not a field path"},
      {"=2", "override '=2': '' is not a field path"},
      {"variants[x].method=nf4", "override 'variants[x].method=nf4': 'variants[x].method' is not a field path"},
      {"train.epoch=2", "override 'train.epoch=2': train.epoch: unknown field"},
      {"train.epochs=0", "override 'train.epochs=0': train.epochs: 0 (no training) needs model.init"},
      {"train.epochs=two", "override 'train.epochs=two': train.epochs: expected an integer, got string \"two\""},
      {"variants[99].method=nf4",
       "override 'variants[99].method=nf4': variants[99]: index out of range (variants has "
       "8 entries)"},
      {"name.first=x", "override 'name.first=x': name is string \"tiny\", not an object with field 'first'"},
      {"train[0]=1", "override 'train[0]=1': train is object, not a list"},
      {"preset=seed", "override 'preset=seed': preset: cannot be overridden"},
      {"variants[7].method=fp8-e4m3",
       "override 'variants[7].method=fp8-e4m3': variants[7].method: method 'fp8-e4m3' "
       "needs device cuda"},
      {"variants[1].name=nf4",
       "override 'variants[1].name=nf4': variants[7].name: duplicate variant name 'nf4' (also "
       "variants[1]"},
      {"device=cuda,cpu", "override 'device=cuda,cpu': device: unknown device 'cuda,cpu'"},
  };
  const auto original = ExperimentSpec::from_preset("tiny");
  for (const auto& [assignment, expected] : cases) {
    auto s = original;
    try {
      s.apply_override(assignment);
      ADD_FAILURE() << assignment << ": no error";
    } catch (const InputError& e) {
      EXPECT_EQ(std::string(e.what()).rfind(expected, 0), 0u) << "expected: " << expected << "\ngot:      " << e.what();
    }
    EXPECT_EQ(s, original) << assignment;
  }
}

TEST(ExperimentSpecTest, OverridesThatAreOnlyValidTogether) {
  const auto original = ExperimentSpec::from_preset("tiny");
  auto s = original;
  try {
    s.apply_override("variants=[\"nf4\"]");
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "override 'variants=[\"nf4\"]': baseline: 'fp32' is not one of the variants (nf4)");
  }
  EXPECT_EQ(s, original);
  s.apply_overrides(
      {R"(variants=["fp32","nf4"])", "variants[1].options.block_size=128", "variants[0].name=ref", "baseline=ref"});
  ASSERT_EQ(s.variants.size(), 2u);
  EXPECT_EQ(s.variants[1].options.block_size, 128);  // addressable although set in short form
  EXPECT_EQ(s.baseline, "ref");
  EXPECT_EQ(s.variants[0], (VariantSpec{"ref", "fp32", "fp32", {}}));

  s = original;
  try {
    s.apply_overrides({"variants=[\"nf4\"]", "eval.shards=2"});
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(),
                 "override 'variants=[\"nf4\"]' + override 'eval.shards=2': baseline: 'fp32' is not one of the "
                 "variants (nf4)");
  }
  EXPECT_EQ(s, original);
  try {
    s.apply_overrides({"eval.shards=2", "bench.seq_len"});
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "override 'bench.seq_len': expected path=value (e.g. train.epochs=2)");
  }
  EXPECT_EQ(s, original);
  s.apply_overrides({});
  EXPECT_EQ(s, original);
  // Long values are cut in messages so an error stays one readable line.
  const std::string long_list = "variants=[" + std::string(200, ' ') + "\"nf4\"]";
  try {
    s.apply_override(long_list);
    ADD_FAILURE() << "no error";
  } catch (const InputError& e) {
    EXPECT_LT(std::string(e.what()).size(), 200u) << e.what();
  }
}

// Random byte edits of a valid spec text: every outcome is a valid spec or an InputError, never another
// exception or a crash (the CLI turns InputError into exit code 2).
TEST(ExperimentSpecTest, MutatedTextNeverEscapesAsAnotherError) {
  const std::string valid = ExperimentSpec::from_preset("tiny").to_json().dump();
  const std::string alphabet = "{}[]\":,-.0123456789eEtrufalsn xX\\";
  std::mt19937_64 rng(20240601);
  int parsed = 0, rejected = 0;
  for (int i = 0; i < 4000; ++i) {
    std::string text = valid;
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < edits; ++k) {
      const size_t pos = rng() % text.size();
      switch (rng() % 3) {
        case 0: text[pos] = alphabet[rng() % alphabet.size()]; break;
        case 1: text.erase(pos, 1 + rng() % 8); break;
        default: text.insert(pos, 1, alphabet[rng() % alphabet.size()]); break;
      }
      if (text.empty()) text = "{";
    }
    try {
      ExperimentSpec::parse_text(text);
      ++parsed;
    } catch (const InputError&) {
      ++rejected;
    } catch (const std::exception& e) {
      ADD_FAILURE() << "non-InputError " << e.what() << " for: " << text;
    }
  }
  EXPECT_GT(rejected, 3000);  // nearly every edit breaks something
  EXPECT_EQ(parsed + rejected, 4000);
}

}  // namespace
}  // namespace evalsvc
