#pragma once
// Batched inference over a tokenized dataset: a prediction and the logits for every row.
#include <vector>

#include <nlohmann/json.hpp>

#include "evalsvc/worker/dataset.h"
#include "evalsvc/worker/gpt2.h"

namespace evalsvc::worker {

struct Predictions {
  std::vector<int32_t> labels;  ///< the true labels, in dataset order
  std::vector<int32_t> preds;   ///< argmax class, in dataset order
  std::vector<float> logits;    ///< [n, num_labels] row-major, in dataset order
  int64_t num_labels = 0;
  double seconds = 0;           ///< forward time incl. host<->device copies, device-synchronised
  double samples_per_s = 0;
};

/// Runs the model (eval mode, no grad) over `data` in batches of rows of similar length, each padded only to
/// its longest row (dynamic padding), and returns results in the dataset's order.
Predictions predict(GPT2Classifier& model, const TokenizedDataset& data, int64_t batch_size,
                    const torch::Device& device);

}  // namespace evalsvc::worker
