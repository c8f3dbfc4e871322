#pragma once
// GPT-2 with Hugging Face GPT2ForSequenceClassification semantics (SPEC section 1): learned position
// embeddings, pre-LayerNorm blocks, GELU (tanh form), LayerNorm eps 1e-5, a bias-free score head
// read at the last non-pad token. The 48 block projections are kernels::QuantizedLinear slots so a
// variant can swap them for any quantized format; during training they are plain parameters.
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "evalsvc/kernels/quantized_linear.h"
#include "evalsvc/kernels/torch_compat.h"

namespace evalsvc::worker {

/// The GPT2Config fields qbench uses (names as in Hugging Face config.json).
struct ModelConfig {
  int64_t vocab_size = 50257;
  int64_t n_positions = 1024;
  int64_t n_embd = 768;
  int64_t n_layer = 12;
  int64_t n_head = 12;
  int64_t n_inner = 0;  ///< 0 = 4 * n_embd (config.json null)
  double layer_norm_epsilon = 1e-5;
  double resid_pdrop = 0.1, embd_pdrop = 0.1, attn_pdrop = 0.1;
  double initializer_range = 0.02;
  int64_t num_labels = 4;
  int64_t pad_token_id = 50256;

  int64_t inner() const { return n_inner > 0 ? n_inner : 4 * n_embd; }
  /// "gpt2" (124M) or "tiny" (2 layers, 128 wide, 4 heads, context 128); InputError otherwise.
  static ModelConfig preset(const std::string& name);
  /// GPT2Config JSON (config.json); unknown fields are ignored, bad types -> FormatError naming the field.
  static ModelConfig from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

}  // namespace evalsvc::worker
