#pragma once
// Named experiment presets: `tiny` (a 2-layer GPT-2 that trains on 2 CPU cores in minutes) and `seed`
// (GPT-2 Small, the reference report's setting: 10 epochs over the available train rows, max length 128).
#include <string>

#include <nlohmann/json.hpp>

#include "evalsvc/common/experiment_spec.h"
#include "evalsvc/worker/gpt2.h"
#include "evalsvc/worker/train.h"

namespace evalsvc::worker {

struct RunConfig {
  std::string preset;
  ModelConfig model;
  TrainOptions train;
  int64_t max_len = 128;
  size_t train_limit = 0;            ///< 0 = every row of the train file
  size_t test_limit = 0;             ///< 0 = the whole test set
  double validation_fraction = 0.0;  ///< held out of train, stratified, seeded
  int64_t eval_batch_size = 256;
  nlohmann::json to_json() const;
};

/// The model-core settings of an experiment spec.
RunConfig run_config(const ExperimentSpec& spec);
/// "tiny" or "seed" (ExperimentSpec::from_preset); InputError naming the valid presets otherwise.
RunConfig preset_run(const std::string& name);

/// "fp32" | "fp16" | "bf16" as a torch dtype; InputError naming the value otherwise.
torch::ScalarType dtype_of(const std::string& name);
/// The QuantOptions a variant runs with: its options, computing in its base dtype. The quantize, eval and
/// bench jobs, `qbench bench` and the end-to-end tests all build the variant's model with these.
kernels::QuantOptions quant_options(const VariantSpec& v);

}  // namespace evalsvc::worker
