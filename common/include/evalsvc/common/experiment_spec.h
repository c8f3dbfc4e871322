#pragma once
// The experiment a user submits (`qbench submit spec.json`, or `--preset tiny|seed` with `--set a.b=v`
// overrides): what to train, which quantization variants to compare against which baseline, how to shard
// the evaluation and what to benchmark. Everything is validated here, before a single job is queued, and a
// bad field is reported with its JSON path (`variants[2].method: unknown method 'nf5' ...`).
// The reference for users is docs/spec.md. Free of libtorch: the scheduler and the CLI use it.
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace evalsvc {

/// The quantization method names a spec may use, in report order: fp32 fp16 bf16 int8-sym int8-sym-channel
/// int8-w8a8 llm-int8 nf4 fp8-e4m3. The one list every spec check uses (kernels::parse_method must accept
/// exactly these names).
const std::vector<std::string>& known_methods();
/// Whether `method` is one of known_methods().
bool is_known_method(std::string_view method);
/// Whether `method` runs only on CUDA (fp8-e4m3: FP8 matrix products need compute capability 8.9+).
bool method_needs_cuda(std::string_view method);
/// The base dtype a variant of `method` gets when the spec names none: fp32 for fp32 and int8-sym, bf16 for
/// bf16, fp16 for the rest. InputError for an unknown method.
std::string default_base_dtype(std::string_view method);
/// The names of the built-in presets: tiny, seed.
const std::vector<std::string>& known_presets();

/// Method options; each method reads only its own (see VariantSpec::to_json for which).
struct VariantOptions {
  bool double_quant = true;        ///< nf4: quantize the block absmax again (SPEC section 2)
  double outlier_threshold = 6.0;  ///< llm-int8: |x| at or above this makes a column an outlier
  int64_t block_size = 64;         ///< nf4: weights a block (power of two in [32, 4096])
  bool operator==(const VariantOptions&) const = default;
};

/// One variant of the fine-tuned model: `method` applied to the 48 block projections, everything else in
/// `base_dtype` (fp32 | fp16 | bf16).
struct VariantSpec {
  std::string name;  ///< unique in the spec, [A-Za-z0-9_.-]{1,64}; a bare-string variant's name is its method
  std::string method;
  std::string base_dtype;
  VariantOptions options;

  /// {name, method, base_dtype, options}; options holds only the fields `method` reads ({} for the rest).
  nlohmann::json to_json() const;
  bool operator==(const VariantSpec&) const = default;
};

struct ModelSpec {
  std::string config;               ///< "tiny" or "gpt2" (worker::ModelConfig::preset)
  std::optional<std::string> init;  ///< a Hugging Face checkpoint folder; nullopt = random initialisation
  bool operator==(const ModelSpec&) const = default;
};

struct DataSpec {
  std::optional<std::string> train;  ///< AG News train CSV; nullopt = the data folder's train file
  std::optional<std::string> test;   ///< AG News test CSV; nullopt = the data folder's test.csv
  int64_t train_limit = 0;           ///< first N train rows only; 0 = all
  int64_t test_limit = 0;            ///< first N test rows only; 0 = all
  int64_t max_len = 128;             ///< tokens a row is truncated to (<= the model's context)
  double validation_fraction = 0.0;  ///< of train, held out (stratified, seeded), in [0, 0.5)
  bool operator==(const DataSpec&) const = default;
};

struct TrainSpec {
  int64_t epochs = 3;
  int64_t batch_size = 32;
  double lr = 1e-3;  ///< peak learning rate (AdamW)
  double weight_decay = 0.01;
  double warmup_fraction = 0.06;  ///< of all optimizer steps, in [0, 1)
  double grad_clip = 1.0;         ///< max global gradient L2 norm; 0 = no clipping
  uint64_t seed = 42;
  bool operator==(const TrainSpec&) const = default;
};

struct EvalSpec {
  int64_t shards = 8;        ///< evaluation jobs per variant, in [1, 1024]
  int64_t batch_size = 256;  ///< rows a forward pass
  bool operator==(const EvalSpec&) const = default;
};

struct BenchSpec {
  bool enabled = true;
  std::vector<int64_t> batch_sizes = {1, 8, 32, 128, 512};  ///< throughput sweep (no duplicates)
  int64_t seq_len = 128;                                    ///< latency runs pad to this (<= the model's context)
  int64_t warmup = 20;                                      ///< untimed runs before timing
  int64_t iters = 200;                                      ///< timed runs
  /// Test rows of the bench job's test-set rate (dynamic padding, forward only): 0 = every test row.
  int64_t test_set_rows = 0;
  bool operator==(const BenchSpec&) const = default;
};

/// A validated experiment. Every instance produced by parse/from_preset/apply_override satisfies all
/// checks listed in docs/spec.md; construct one by hand only in tests.
struct ExperimentSpec {
  std::string name;                   ///< [A-Za-z0-9_.-]{1,64}
  std::optional<std::string> preset;  ///< the preset the defaults came from (kept for provenance)
  ModelSpec model;
  DataSpec data;
  TrainSpec train;
  std::vector<VariantSpec> variants;  ///< 1..64, unique names
  std::string baseline = "fp32";      ///< the variant the others are compared with; must be listed
  EvalSpec eval;
  BenchSpec bench;
  std::string device = "cpu";  ///< "cpu" or "cuda": the queue of the train/quantize/eval/bench jobs
  int max_attempts = 3;        ///< per job, in [1, 100]

  /// Validates `j` and fills every field it leaves out from its "preset" (or the built-in defaults when
  /// there is none; then "name", "model.config" and "variants" are required). InputError whose message
  /// starts with the JSON path of the offending field: an unknown field anywhere, a wrong type, a value out
  /// of range, an unknown method, a duplicate variant name, a baseline that is not listed, a CUDA-only
  /// method with device cpu.
  static ExperimentSpec parse(const nlohmann::json& j);
  /// parse() of JSON text; a syntax error is an InputError naming `source` and the byte offset.
  static ExperimentSpec parse_text(std::string_view text, std::string_view source = "spec");
  /// The preset `preset_name` ("tiny" or "seed") as a complete spec named after it. InputError otherwise.
  static ExperimentSpec from_preset(const std::string& preset_name);

  /// Applies one `path=value` override (`train.epochs=2`, `variants[1].method=nf4`,
  /// `variants=["fp32","nf4"]`, `model.init=null`) and re-validates the whole spec. The value is read as
  /// JSON when it parses as JSON, else as a plain string (so `name=my-run` needs no quotes). The spec is
  /// unchanged when this throws InputError (bad syntax, a path that does not exist, any validation error).
  void apply_override(std::string_view assignment);
  /// Applies several overrides in order and validates the end result, so that changes which are only valid
  /// together (`variants=["q"]` and `baseline=q`) can be made. The spec is unchanged when this throws.
  void apply_overrides(const std::vector<std::string>& assignments);

  /// The full, normalized spec: every default filled in and every variant in object form, so a stored spec
  /// describes the experiment on its own. parse(to_json()) == *this.
  nlohmann::json to_json() const;

  /// The variant called `variant_name`, or nullptr.
  const VariantSpec* find_variant(std::string_view variant_name) const;
  /// Context length (positions) of model.config: 128 for tiny, 1024 for gpt2.
  int64_t model_context() const;

  bool operator==(const ExperimentSpec&) const = default;
};

}  // namespace evalsvc
