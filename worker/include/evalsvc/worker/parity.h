#pragma once
// Parity with Hugging Face transformers, the real peer: scripts/hf_parity.py saves a random-init
// GPT2ForSequenceClassification and the logits it computes for a fixed batch with padded rows; qbench loads
// the same checkpoint and must reproduce those logits.
#include <filesystem>
#include <string>

#include "evalsvc/kernels/torch_compat.h"

namespace evalsvc::worker {

struct ParityResult {
  std::string dtype;
  double max_abs_diff = 0;   ///< over all logits of the batch
  double max_abs_logit = 0;  ///< scale of the reference logits, for context
  bool same_argmax = true;   ///< every row predicts the same class
};

/// Loads `checkpoint_dir` (config.json + model.safetensors) and `checkpoint_dir`/logits.json, runs the
/// recorded batch in `dtype` ("fp32", "fp16", "bf16") on `device` and compares with the recorded logits.
/// FormatError when logits.json lacks that dtype.
ParityResult check_parity(const std::filesystem::path& checkpoint_dir, const std::string& dtype,
                          const torch::Device& device);

}  // namespace evalsvc::worker
