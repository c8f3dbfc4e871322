#pragma once
// GPT-2 checkpoints in Hugging Face layout: a folder with config.json (GPT2Config) and model.safetensors.
// The model exchanges weights as a map with Hugging Face names and shapes (Conv1D projections [in, out]):
//   transformer.wte.weight [V, E], transformer.wpe.weight [P, E],
//   transformer.h.{i}.ln_1.{weight,bias} [E], .attn.c_attn.{weight [E, 3E], bias [3E]},
//   .attn.c_proj.{weight [E, E], bias [E]}, .ln_2.{weight,bias} [E], .mlp.c_fc.{weight [E, I], bias [I]},
//   .mlp.c_proj.{weight [I, E], bias [E]}, transformer.ln_f.{weight,bias} [E], score.weight [L, E]
// (I = n_inner or 4E, L = num_labels). See docs/checkpoints.md.
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "evalsvc/kernels/torch_compat.h"
#include "evalsvc/worker/gpt2.h"

namespace evalsvc::worker {

/// What a checkpoint holds: a body only, or a body with the classification head.
enum class CheckpointKind {
  kBaseModel,   ///< GPT2Model or GPT2LMHeadModel (e.g. the hub model gpt2): no score head
  kClassifier,  ///< GPT2ForSequenceClassification: body + score.weight
};

/// "base" or "classifier".
const char* to_string(CheckpointKind kind);

/// A loaded checkpoint: its config, weights with normalized Hugging Face names (CPU tensors in the dtype
/// they were stored in), its kind, and the safetensors __metadata__ it carried.
struct Checkpoint {
  ModelConfig config;
  std::map<std::string, torch::Tensor> state;
  CheckpointKind kind = CheckpointKind::kBaseModel;
  std::map<std::string, std::string> metadata;
};

/// Every key, in order, with the shape `cfg` implies (score.weight only when `with_head`).
std::vector<std::pair<std::string, std::vector<int64_t>>> expected_gpt2_shapes(const ModelConfig& cfg,
                                                                                bool with_head);

/// Normalizes keys: adds "transformer." where missing (GPT2Model saves without it), drops lm_head.weight
/// (tied to wte), drops the attn.bias / attn.masked_bias mask buffers. Then validates that every expected
/// key is present with the shape the config implies and a floating dtype -> FormatError naming the key,
/// the expected and the got shape (or dtype); unexpected extra keys, or a key present both with and
/// without the prefix -> FormatError listing them. The kind is kClassifier when score.weight is present,
/// else kBaseModel; it is stored in *kind_out when kind_out is not null.
std::map<std::string, torch::Tensor> normalize_gpt2_state(std::map<std::string, torch::Tensor> state,
                                                          const ModelConfig& cfg, CheckpointKind* kind_out);

/// Loads dir/config.json + dir/model.safetensors, or a path to a .safetensors file with config.json
/// beside it. InputError when the path or either file is missing (naming it); FormatError (naming the
/// file) for a bad config, a malformed safetensors file or weights that do not fit the config.
Checkpoint load_checkpoint(const std::filesystem::path& dir_or_file);

/// Reads only config.json and the safetensors header: kind, tensor count and bytes, without loading
/// tensor data (for `qbench model info` on large files). Same path rules and errors as load_checkpoint,
/// but shapes are checked from the header only.
struct CheckpointSummary {
  ModelConfig config;
  CheckpointKind kind = CheckpointKind::kBaseModel;
  std::filesystem::path config_path, weights_path;
  size_t tensor_count = 0;     ///< tensors in the file (before dropping mask buffers / lm_head)
  uint64_t tensor_bytes = 0;   ///< bytes of tensor data in the file
  uint64_t file_bytes = 0;
  std::map<std::string, uint64_t> params_by_dtype;  ///< parameters (normalized keys only) per dtype name
  std::map<std::string, std::string> metadata;
};
CheckpointSummary inspect_checkpoint(const std::filesystem::path& dir_or_file);

/// Writes dir/config.json (cfg.to_json(), architectures and torch_dtype set from the state) and
/// dir/model.safetensors (with "format": "pt" added to `metadata`, as transformers requires), each
/// atomically. The state is validated with normalize_gpt2_state first, so an invalid checkpoint is never
/// written; a state without score.weight is saved as a GPT2LMHeadModel base model.
void save_checkpoint(const std::filesystem::path& dir, const ModelConfig& cfg,
                     const std::map<std::string, torch::Tensor>& hf_state,
                     const std::map<std::string, std::string>& metadata = {});

}  // namespace evalsvc::worker
