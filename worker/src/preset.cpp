#include "evalsvc/worker/preset.h"

#include "evalsvc/common/error.h"

namespace evalsvc::worker {

RunConfig run_config(const ExperimentSpec& spec) {
  RunConfig r;
  r.preset = spec.preset.value_or(spec.name);
  r.model = ModelConfig::preset(spec.model.config);
  r.train.epochs = spec.train.epochs;
  r.train.batch_size = spec.train.batch_size;
  r.train.lr = spec.train.lr;
  r.train.weight_decay = spec.train.weight_decay;
  r.train.warmup_fraction = spec.train.warmup_fraction;
  r.train.grad_clip = spec.train.grad_clip;
  r.train.seed = spec.train.seed;
  r.max_len = spec.data.max_len;
  r.train_limit = static_cast<size_t>(spec.data.train_limit);
  r.test_limit = static_cast<size_t>(spec.data.test_limit);
  r.validation_fraction = spec.data.validation_fraction;
  r.eval_batch_size = spec.eval.batch_size;
  return r;
}

// The presets themselves live in one place, the experiment spec (common/experiment_spec.cpp), so
// `qbench train --preset X` and `qbench submit --preset X` train exactly the same model.
RunConfig preset_run(const std::string& name) { return run_config(ExperimentSpec::from_preset(name)); }

nlohmann::json RunConfig::to_json() const {
  return {{"preset", preset},
          {"model", model.to_json()},
          {"epochs", train.epochs},
          {"batch_size", train.batch_size},
          {"lr", train.lr},
          {"weight_decay", train.weight_decay},
          {"warmup_fraction", train.warmup_fraction},
          {"grad_clip", train.grad_clip},
          {"seed", train.seed},
          {"max_len", max_len},
          {"train_limit", train_limit},
          {"test_limit", test_limit},
          {"validation_fraction", validation_fraction},
          {"eval_batch_size", eval_batch_size}};
}

torch::ScalarType dtype_of(const std::string& name) {
  if (name == "fp32") return torch::kFloat32;
  if (name == "fp16") return torch::kFloat16;
  if (name == "bf16") return torch::kBFloat16;
  throw InputError(fmt::format("unknown base dtype '{}': expected fp32, fp16 or bf16", name));
}

kernels::QuantOptions quant_options(const VariantSpec& v) {
  kernels::QuantOptions o;
  o.double_quant = v.options.double_quant;
  o.outlier_threshold = v.options.outlier_threshold;
  o.block_size = v.options.block_size;
  o.compute_dtype = dtype_of(v.base_dtype);
  return o;
}

}  // namespace evalsvc::worker
