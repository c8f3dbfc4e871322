#pragma once
// Fine-tuning of the GPT-2 classifier (issue "Model core", training): AdamW with decoupled weight decay
// (not on biases/LayerNorms), linear warm-up then cosine decay, gradient clipping, GPT-2 dropout, seeded
// shuffling, length-bucketed batches padded to the longest row of the batch, bf16 mixed precision on
// CUDA, periodic resumable checkpoints.
#include <chrono>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "evalsvc/worker/dataset.h"
#include "evalsvc/worker/gpt2.h"

namespace evalsvc::worker {

struct TrainOptions {
  int64_t epochs = 3;
  int64_t batch_size = 32;
  double lr = 1e-3;
  double weight_decay = 0.01;
  double warmup_fraction = 0.06;  ///< of all optimizer steps
  double grad_clip = 1.0;         ///< max global L2 norm
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_eps = 1e-8;
  uint64_t seed = 42;
  /// Rows are sorted by length inside windows of bucket_batches * batch_size shuffled rows, so a batch holds
  /// rows of similar length (little padding) while the epoch order stays random.
  int64_t bucket_batches = 50;
  /// Batch length rounded up to a multiple of this (0: 8 on CUDA, where tensor cores want multiples of 8,
  /// 1 on CPU). Larger multiples mean fewer distinct shapes (fewer kernels to select and load) but more padding.
  int64_t pad_multiple = 0;
  /// bf16 mixed precision on CUDA (fp32 master weights); ignored on CPU, which trains in fp32.
  bool bf16_on_cuda = true;
  /// Folder for resumable training state; empty = no periodic checkpoints. A run finding a matching state
  /// there resumes from it (same model config, data size, options).
  std::filesystem::path state_dir;
  int64_t checkpoint_every_steps = 0;  ///< 0 = at the end of an epoch, at most every checkpoint_interval
  /// With checkpoint_every_steps = 0: the state is saved at the end of an epoch once this long has passed since
  /// the last save, never after the last epoch (the caller saves the model). Saving GPT-2 Small's state
  /// (weights and both Adam moments, 1.5 GB) takes seconds, as long as a whole epoch on an H200.
  std::chrono::seconds checkpoint_interval{120};
  bool progress = true;                ///< a live line on a terminal (stderr is a tty)
};

/// Per-epoch record, also stored in PostgreSQL by the train job.
struct EpochRecord {
  int64_t epoch = 0;
  double mean_loss = 0;
  double seconds = 0;
  double samples_per_s = 0;
  double validation_accuracy = -1;  ///< -1 when there is no validation split
};

struct TrainResult {
  int64_t steps = 0;
  int64_t samples = 0;          ///< rows processed in this run (excludes resumed work)
  double seconds = 0;           ///< wall time of this run's training loop
  double samples_per_s = 0;
  double final_loss = 0;
  int64_t resumed_from_step = 0;
  int64_t padded_tokens = 0, real_tokens = 0;  ///< padding overhead of the bucketing
  std::vector<EpochRecord> epochs;
  nlohmann::json to_json() const;
};

/// Trains in place. `validation` may be empty. Throws InputError for an empty train set or bad options.
TrainResult train(GPT2Classifier& model, const TokenizedDataset& train_set, const TokenizedDataset& validation,
                  const TrainOptions& options, const torch::Device& device);

/// A padded batch ready for the model: ids [B, T] int64 (pad 50256), lengths [B], labels [B], on device.
struct Batch {
  torch::Tensor ids, lengths, labels;
  std::vector<size_t> rows;  ///< dataset rows in batch order
};
/// Pads rows `idx` of `data` to the longest among them rounded up to a multiple of `pad_multiple` (or to
/// `pad_to` when > 0). On CUDA a multiple of 8 keeps GEMM shapes tensor-core friendly and the number of
/// distinct shapes (each costs kernel selection the first time) small; right padding keeps results exact.
Batch make_batch(const TokenizedDataset& data, const std::vector<size_t>& idx, const torch::Device& device,
                 int64_t pad_to = 0, int64_t pad_id = 50256, int64_t pad_multiple = 0);

/// Batches of `batch_size` rows in length-bucketed, seeded-random order (see TrainOptions::bucket_batches).
std::vector<std::vector<size_t>> bucketed_batches(const TokenizedDataset& data, int64_t batch_size,
                                                  int64_t bucket_batches, uint64_t seed);

}  // namespace evalsvc::worker
