#pragma once
// GPT-2 with Hugging Face GPT2ForSequenceClassification semantics (SPEC section 1): learned position
// embeddings, pre-LayerNorm blocks, GELU (tanh form), LayerNorm eps 1e-5, a bias-free score head
// read at the last non-pad token. The 48 block projections are kernels::QuantizedLinear slots so a
// variant can swap them for any quantized format; during training they are plain parameters.
#include <array>
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

namespace evalsvc::worker {

/// Indices of the four projections inside a block, in Hugging Face order.
enum class Projection : int { kAttn = 0, kAttnProj = 1, kFc = 2, kMlpProj = 3 };
/// "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj".
const char* projection_name(Projection p);

/// GPT2ForSequenceClassification. Inputs are right-padded: row b holds lengths[b] real tokens followed by
/// padding. With right padding, causal attention alone gives exactly what Hugging Face computes with its
/// padding mask at every real position (a real query never sees a later, padded key), and the logits are
/// read at position lengths[b]-1, the last non-pad token, as Hugging Face does. So the fast causal
/// (flash) attention path is exact, not an approximation.
class GPT2ClassifierImpl : public torch::nn::Module {
 public:
  /// Random initialisation as Hugging Face GPT2PreTrainedModel._init_weights does (normal(0, 0.02),
  /// c_proj weights scaled by 1/sqrt(2 * n_layer), LayerNorm 1/0, biases 0), seeded.
  /// random_init = false leaves the weights uninitialised (torch::empty), for a caller that overwrites every
  /// tensor at once (load_variant_state_dict checks that the file has each one): no 124M-value randn.
  GPT2ClassifierImpl(const ModelConfig& config, uint64_t seed, bool random_init = true);

  /// input_ids [B, T] int64 (right-padded), lengths [B] int64 (>= 1) on the model's device.
  /// Returns logits [B, num_labels] in fp32. Dropout is active in train() mode.
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& lengths);

  const ModelConfig& config() const { return config_; }

  /// Activation/compute dtype for the matrix products during training (kBFloat16 = autocast-like mixed
  /// precision: fp32 master weights, bf16 GEMMs, fp32 LayerNorm/softmax statistics and residual stream).
  void set_autocast(torch::ScalarType dtype) { autocast_ = dtype; }

  /// Weights with Hugging Face names and shapes (Conv1D projections [in, out]), on CPU, fp32 (dequantized
  /// for quantized projections).
  std::map<std::string, torch::Tensor> hf_state_dict() const;
  /// Loads Hugging Face-named weights (see checkpoint.h normalize_gpt2_state); FormatError for a missing
  /// key or wrong shape. When `with_head` is false the score head keeps its fresh initialisation.
  void load_hf_state_dict(const std::map<std::string, torch::Tensor>& state, bool with_head);

  /// Inference variant: converts embeddings, LayerNorms, biases and the head to `base_dtype` and replaces
  /// the 48 projections by `method` (SPEC section 2). Irreversible: the fp32 projection weights are freed.
  void quantize(kernels::Method method, torch::ScalarType base_dtype, const kernels::QuantOptions& options);
  /// A quantized variant's tensors for saving: embeddings, LayerNorms, biases and head in the base dtype with
  /// Hugging Face names, and each projection's QuantizedLinear::state() under its Hugging Face prefix
  /// (`transformer.h.0.attn.c_attn.weight`, `...c_attn.SCB`, `...c_attn.weight.absmax`, ...).
  std::map<std::string, torch::Tensor> variant_state_dict() const;
  /// Rebuilds a quantized variant from variant_state_dict() output (on CPU); FormatError for missing keys.
  void load_variant_state_dict(const std::map<std::string, torch::Tensor>& state, kernels::Method method,
                               torch::ScalarType base_dtype, const kernels::QuantOptions& options);

  /// The quantized projection of block `layer`, or nullptr while the model is unquantized.
  const kernels::QuantizedLinear* projection(int64_t layer, Projection p) const;
  /// The variant's method (kFp32 until quantize() is called) and base dtype.
  kernels::Method method() const { return method_; }
  torch::ScalarType base_dtype() const { return base_dtype_; }

  /// Weight-only variants (int8-sym, int8-sym-channel, nf4 where it dequantizes) on a fp16/bf16 base on a GPU
  /// multiply by a dense copy of each weight. With prefetch on (the default) forward() makes those copies on a
  /// side stream ahead of the products that read them, instead of before each product on the critical path.
  /// With flags (set_prefetch_flags, the default) each projection has one persistent slot (one block's weights:
  /// 14 MB in fp16 for GPT-2 small, counted in the peak memory the bench reports), and a block's copies are made in
  /// two halves: block i+1's attention half (c_attn, attn.c_proj) once block i's attention projection has run, its
  /// MLP half (c_fc, mlp.c_proj) once block i's mlp.c_proj has. With events, whole blocks go into two slots.
  /// Results are bit-identical either way (tests/worker/model_gpu_test.cpp). No effect on CPU.
  /// `blocks`: the threads its dequantization kernels may use at once, in units of 1024 (nf4 runs that many
  /// blocks of 1024 threads, int8 four times as many of 256)
  /// (kDefaultPrefetchBlocks; 0 = as many as they need, which takes every SM for a few microseconds and so
  /// delays the kernels of the block being computed).
  static constexpr int kDefaultPrefetchBlocks = 64;
  void set_weight_prefetch(bool on, int blocks = kDefaultPrefetchBlocks);
  /// How the main stream learns that copies are ready. Flags (the default): the side stream sets a device flag
  /// after each half's copies, and the add + LayerNorm kernel before that half does not complete until the flag
  /// holds the block's number; only block 0's attention half and the forward's end wait on an event. Events (off):
  /// block i+2's copies made into block i's slot once block i has run, and an event wait before every block, which
  /// in a CUDA graph cost about 3 us each at batch 1 even when the copies were long done. Flags with whole blocks in
  /// two slots took 19-36 us off the batch-1 forward; the halves in one slot set, 13.5 MiB of dense copies in L2
  /// instead of 27, another 15-54 us (H200, docs/perf.md "The weight prefetch in halves").
  void set_prefetch_flags(bool on) { prefetch_flags_ = on; }
  /// Variants on an fp16 or bf16 base whose products read the stored weight (fp16 and bf16 through cuBLAS;
  /// weight-only ones only with the weight prefetch off, to dequantize it), in a forward of at most
  /// kL2PrefetchMaxTokens tokens captured into a CUDA graph: with this on (the default) a side stream asks L2 for
  /// block i+1's stored tensors when block i starts (cuda::l2_prefetch; a few small blocks for a few
  /// microseconds), so that block's products find their weight tiles in L2 rather than each waiting on device
  /// memory. A cache hint: the values are the same either way. Where it does not run, and why (one H200,
  /// docs/perf.md): eagerly the small forwards are paced by their launches, and the side stream's made them
  /// slower; W8A8, FP8 and LLM.int8 products are qbench's own, which load their first weight tiles while the
  /// kernel before them finishes (programmatic dependent launch), and gained 1-7 us (FP8 lost 4-11); with the
  /// weight prefetch, weight-only variants read copies it has just written; fp32 lost up to 29 us (its products
  /// keep every SM busy).
  static constexpr int64_t kL2PrefetchMaxTokens = 4096;
  void set_l2_prefetch(bool on) { l2_prefetch_ = on; }
  /// Whether the last forward() warmed L2 ahead of each block.
  bool l2_prefetched_last_forward() const { return l2_prefetched_last_forward_; }
  /// Whether the residual add + LayerNorm writes the per-token codes of projections that quantize their input
  /// (W8A8, FP8, LLM.int8 on fp16) instead of those projections quantizing in a pass of their own (default on;
  /// the same values either way, tests/worker/model_gpu_test.cpp). Off only to compare the two.
  void set_fused_input_quantization(bool on) { fused_input_quantization_ = on; }
  /// In inference (eval mode) the head reads one position a row, lengths[b] - 1, so the last block can run past
  /// its c_attn only there: that one query's attention over the row's keys, then attn.c_proj, ln_2 and the MLP
  /// on B rows instead of B x T (about 0.8 of a block's work less: 1/15 of GPT-2 small's). The logits are the
  /// full block's up to the rounding of another attention kernel (tests/worker/model_test.cpp); LLM.int8, which
  /// picks its outlier columns over all rows of a product, may pick fewer. kAuto prunes from kPruneMinTokens
  /// tokens a forward: below that the products cost about the same at B rows as at B x T (latency-bound) and
  /// the gathers and the masked attention are launches more, so pruning gained nothing (batch 1 at 128 tokens
  /// in a CUDA graph, fp16, one H200: 0.510 ms pruned, 0.501 full; docs/perf.md). kFull runs the last block at
  /// every position as Hugging Face does (qbench bench --last-block, for comparing). Training always runs the
  /// full block: dropout draws its masks per position.
  enum class LastBlock { kAuto, kPruned, kFull };
  static constexpr int64_t kPruneMinTokens = 4096;
  void set_last_block(LastBlock mode) { last_block_ = mode; }
  /// Whether the last forward() ran the last block at the read positions only.
  bool pruned_last_block_last_forward() const { return pruned_last_forward_; }
  /// Whether the last forward() had a residual add + LayerNorm write a projection's input codes.
  bool fused_input_quantization_last_forward() const { return fused_quant_last_forward_; }
  /// Whether the last forward() dequantized ahead on the side stream.
  bool prefetched_last_forward() const { return prefetched_last_forward_; }

  /// Moves the model (parameters and quantized storage) to `device`.
  void to_device(const torch::Device& device);
  torch::Device device() const;

  /// Trainable tensors, split as Hugging Face's Trainer splits them for AdamW: matrices and embeddings get
  /// weight decay, biases and LayerNorm parameters do not.
  std::vector<torch::Tensor> decay_parameters() const;
  std::vector<torch::Tensor> no_decay_parameters() const;

 private:
  struct Block {
    torch::Tensor ln1_w, ln1_b, ln2_w, ln2_b;
    std::array<torch::Tensor, 4> w;  // [out, in] fp32 (training) - undefined after quantize()
    std::array<torch::Tensor, 4> b;  // [out]
    std::array<std::unique_ptr<kernels::QuantizedLinear>, 4> q;
  };
  /// A projection's input as per-token codes written by the kernel that produced it (add_layer_norm with a
  /// consumer): the arguments of QuantizedLinear::forward_quantized. q undefined: none.
  struct InputCodes {
    torch::Tensor q, scale;
    kernels::OutlierColumnsInput outliers;  // LLM.int8 only
  };
  /// Projection p of blk on x; `dense`: its weight dequantized ahead (QuantizedLinear::forward_dense).
  /// With `codes` defined, x is undefined and the projection runs on those codes (add_layer_norm with a
  /// consumer), giving the activation dtype `act_dtype`.
  torch::Tensor linear(const Block& blk, int p, const torch::Tensor& x,
                       kernels::Activation act = kernels::Activation::kNone,
                       const torch::Tensor* dense = nullptr, const InputCodes& codes = {},
                       torch::ScalarType act_dtype = torch::kFloat32) const;
  /// The side stream and slots of set_weight_prefetch (gpt2.cpp); null where a forward of `tokens` rows
  /// cannot use them.
  struct WeightPrefetch;
  WeightPrefetch* prefetch_for(int64_t tokens);
  /// The side stream and each block's stored tensors of set_l2_prefetch (gpt2.cpp); null where a forward of
  /// `tokens` rows does not use it.
  struct L2Prefetch;
  L2Prefetch* l2_prefetch_for(int64_t tokens);
  /// Whether projection p of block `layer` multiplies by a dense weight at its row count: `all_tokens` (B x T)
  /// for c_attn, `tail_tokens` for the other three (B in a pruned last block). The one test both the prefetch's
  /// copies and the products' use of them go by.
  bool takes_dense(size_t layer, int p, int64_t all_tokens, int64_t tail_tokens) const;
  /// Queues the dense copies of projections [first, last) of block `layer` into slot `slot` on the side stream, of
  /// those that takes_dense names, then (flag >= 0) sets flag `flag` to `layer`.
  void stage_copies(WeightPrefetch& pf, size_t layer, int first, int last, size_t slot, int flag, int64_t all_tokens,
                    int64_t tail_tokens) const;
  /// {h + delta, LayerNorm(h + delta)}: one CUDA kernel in inference on a GPU, the two ops otherwise.
  /// With a `consumer` that quantizes its input per token (activation_code: W8A8, FP8, LLM.int8 on fp16) and
  /// where that kernel runs, the LayerNorm output is not returned (undefined) but quantized by the same kernel
  /// into *codes, for consumer->forward_quantized; otherwise codes->q is left undefined.
  /// `wait_flag` (set_prefetch_flags): whatever runs after it on the stream waits until the flag holds wait_value.
  std::pair<torch::Tensor, torch::Tensor> add_layer_norm(const torch::Tensor& h, const torch::Tensor& delta,
                                                         const torch::Tensor& w, const torch::Tensor& b,
                                                         const kernels::QuantizedLinear* consumer = nullptr,
                                                         InputCodes* codes = nullptr,
                                                         const torch::Tensor& wait_flag = torch::Tensor(),
                                                         int wait_value = 0) const;
  /// Every tensor that is not a projection (embeddings, LayerNorms, head) with its Hugging Face name: the
  /// one list that state dicts, loading, dtype conversion and device moves all walk.
  std::vector<std::pair<std::string, torch::Tensor*>> plain_tensors();
  torch::Tensor layer_norm(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) const;

  ModelConfig config_;
  torch::Tensor wte_, wpe_, lnf_w_, lnf_b_, score_w_;
  std::vector<Block> blocks_;
  torch::ScalarType autocast_ = torch::kFloat32;
  kernels::Method method_ = kernels::Method::kFp32;
  torch::ScalarType base_dtype_ = torch::kFloat32;
  bool weight_prefetch_ = true;
  bool fused_input_quantization_ = true;
  LastBlock last_block_ = LastBlock::kAuto;
  bool pruned_last_forward_ = false;
  mutable bool fused_quant_last_forward_ = false;  // set by add_layer_norm, which forward() calls as const
  int prefetch_blocks_ = kDefaultPrefetchBlocks;
  bool prefetch_flags_ = true;
  bool prefetched_last_forward_ = false;
  std::shared_ptr<WeightPrefetch> prefetch_;  // made by the first forward that uses it; reset by moves
  bool l2_prefetch_ = true;
  bool l2_prefetched_last_forward_ = false;
  std::shared_ptr<L2Prefetch> l2_;  // as prefetch_
};
TORCH_MODULE(GPT2Classifier);

/// Number of trainable parameters in the body (embeddings + blocks + final LayerNorm) and in the head.
std::pair<int64_t, int64_t> parameter_counts(const ModelConfig& config);

}  // namespace evalsvc::worker
