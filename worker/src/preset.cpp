#include "evalsvc/worker/preset.h"

#include "evalsvc/common/error.h"

namespace evalsvc::worker {

RunConfig preset_run(const std::string& name) {
  RunConfig r;
  r.preset = name;
  if (name == "tiny") {
    // Sized for the 2-core CI machine: ~3 minutes of training reaches ~85% on AG News from scratch.
    r.model = ModelConfig::preset("tiny");
    r.train.epochs = 3;
    r.train.batch_size = 32;
    r.train.lr = 1e-3;
    r.validation_fraction = 0.0;
  } else if (name == "seed") {
    // The reference's setting (GPT-2 Small, 10 epochs, max length 128) on the train rows available.
    r.model = ModelConfig::preset("gpt2");
    r.train.epochs = 10;
    r.train.batch_size = 64;
    r.train.lr = 2e-4;
    r.validation_fraction = 0.0;
  } else {
    throw InputError(fmt::format("unknown preset '{}': expected tiny or seed", name));
  }
  return r;
}

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

}  // namespace evalsvc::worker
