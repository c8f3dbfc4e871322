#include "evalsvc/worker/gpt2.h"

#include <cmath>
#include <vector>

#include <fmt/ranges.h>

#include "evalsvc/common/error.h"
#include "evalsvc/kernels/cuda_ops.h"

namespace evalsvc::worker {

namespace {
constexpr std::array<const char*, 4> kProjectionNames = {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"};

std::string block_key(size_t layer, const char* rest) { return fmt::format("transformer.h.{}.{}", layer, rest); }

torch::Tensor param(torch::Tensor t) { return t.set_requires_grad(true); }

std::string dims(c10::IntArrayRef s) { return fmt::format("[{}]", fmt::join(s.begin(), s.end(), ", ")); }
}  // namespace

const char* projection_name(Projection p) { return kProjectionNames[static_cast<int>(p)]; }

std::pair<int64_t, int64_t> parameter_counts(const ModelConfig& c) {
  const int64_t E = c.n_embd, I = c.inner();
  const int64_t per_block = 4 * E /*ln1, ln2*/ + (E * 3 * E + 3 * E) + (E * E + E) + (E * I + I) + (I * E + E);
  const int64_t body = c.vocab_size * E + c.n_positions * E + c.n_layer * per_block + 2 * E;
  return {body, c.num_labels * E};
}

GPT2ClassifierImpl::GPT2ClassifierImpl(const ModelConfig& config, uint64_t seed, bool random_init)
    : config_(config) {
  EVALSVC_CHECK(config.n_embd % config.n_head == 0, InputError, "n_embd {} is not a multiple of n_head {}",
                config.n_embd, config.n_head);
  torch::NoGradGuard no_grad;
  torch::manual_seed(seed);
  const int64_t E = config.n_embd, I = config.inner();
  const double std = config.initializer_range;
  const double proj_std = std / std::sqrt(2.0 * static_cast<double>(config.n_layer));
  auto normal = [random_init](std::vector<int64_t> shape, double s) {
    return random_init ? torch::randn(shape) * s : torch::empty(shape);
  };
  wte_ = param(normal({config.vocab_size, E}, std));
  wpe_ = param(normal({config.n_positions, E}, std));
  lnf_w_ = param(torch::ones({E}));
  lnf_b_ = param(torch::zeros({E}));
  blocks_.resize(static_cast<size_t>(config.n_layer));
  const std::array<std::pair<int64_t, int64_t>, 4> shapes = {{{3 * E, E}, {E, E}, {I, E}, {E, I}}};
  for (auto& blk : blocks_) {
    blk.ln1_w = param(torch::ones({E}));
    blk.ln1_b = param(torch::zeros({E}));
    blk.ln2_w = param(torch::ones({E}));
    blk.ln2_b = param(torch::zeros({E}));
    for (int p = 0; p < 4; ++p) {
      const bool is_c_proj = (p == 1 || p == 3);
      blk.w[p] = param(normal({shapes[p].first, shapes[p].second}, is_c_proj ? proj_std : std));
      blk.b[p] = param(torch::zeros({shapes[p].first}));
    }
  }
  score_w_ = param(normal({config.num_labels, E}, std));
}

std::vector<torch::Tensor> GPT2ClassifierImpl::decay_parameters() const {
  std::vector<torch::Tensor> out = {wte_, wpe_, score_w_};
  for (const auto& blk : blocks_)
    for (const auto& w : blk.w)
      if (w.defined()) out.push_back(w);
  return out;
}

std::vector<torch::Tensor> GPT2ClassifierImpl::no_decay_parameters() const {
  std::vector<torch::Tensor> out = {lnf_w_, lnf_b_};
  for (const auto& blk : blocks_) {
    out.insert(out.end(), {blk.ln1_w, blk.ln1_b, blk.ln2_w, blk.ln2_b});
    for (const auto& b : blk.b) out.push_back(b);
  }
  return out;
}

torch::Tensor GPT2ClassifierImpl::layer_norm(const torch::Tensor& x, const torch::Tensor& w,
                                             const torch::Tensor& b) const {
  // Parameters are stored in the base dtype; on CPU a half-precision variant computes in fp32 (libtorch
  // has no CPU half kernels for most ops), so cast the small LayerNorm vectors to the activation dtype.
  const auto dt = x.scalar_type();
  return torch::layer_norm(x, {config_.n_embd}, w.to(dt), b.to(dt), config_.layer_norm_epsilon);
}

torch::Tensor GPT2ClassifierImpl::linear(const Block& blk, int p, const torch::Tensor& x, kernels::Activation act,
                                         const torch::Tensor* dense, const InputCodes& codes,
                                         torch::ScalarType act_dtype) const {
  if (codes.q.defined()) return blk.q[p]->forward_quantized(codes.q, codes.scale, act_dtype, act, codes.outliers);
  if (blk.q[p]) return dense ? blk.q[p]->forward_dense(x, *dense, act) : blk.q[p]->forward(x, act);
  torch::Tensor y = autocast_ != torch::kFloat32
                        ? torch::linear(x.to(autocast_), blk.w[p].to(autocast_), blk.b[p].to(autocast_))
                        : torch::linear(x, blk.w[p], blk.b[p]);
  return act == kernels::Activation::kGeluTanh ? torch::gelu(y, "tanh") : y;
}

std::pair<torch::Tensor, torch::Tensor> GPT2ClassifierImpl::add_layer_norm(const torch::Tensor& h,
                                                                           const torch::Tensor& delta,
                                                                           const torch::Tensor& w,
                                                                           const torch::Tensor& b,
                                                                           const kernels::QuantizedLinear* consumer,
                                                                           InputCodes* codes,
                                                                           const torch::Tensor& wait_flag,
                                                                           int wait_value) const {
  if (codes != nullptr) *codes = InputCodes();  // set again below only where the kernel writes codes
#ifdef EVALSVC_WITH_CUDA
  // On a GPU without autograd: one kernel instead of the add and the LayerNorm (backward needs the two ops).
  const bool needs_grad = torch::GradMode::is_enabled() &&
                          (h.requires_grad() || delta.requires_grad() || w.requires_grad() || b.requires_grad());
  if (h.is_cuda() && !needs_grad) {
    const auto dt = h.scalar_type();
    // The consumer (W8A8, FP8, LLM.int8) would quantize the normalized rows first thing: the same kernel writes
    // those codes instead of the rows (W8A8, FP8) or beside them (LLM.int8, whose outlier columns' product reads
    // the rows), which saves the quantizer's launch and a read of the rows. Only where the consumer works in
    // this dtype (its forward would otherwise convert first). At every row count: below 2,048 rows the kernel
    // spreads a row over a warp group (norm.cu), where one warp a row had made it slower than the separate
    // quantizer at 128 rows (docs/perf.md).
    const auto code = consumer != nullptr && fused_input_quantization_ ? consumer->activation_code()
                                                                        : kernels::ActivationCode::kNone;
    if (code != kernels::ActivationCode::kNone && codes != nullptr && consumer->base_dtype() == dt &&
        (dt == torch::kFloat16 || dt == torch::kBFloat16)) {
      auto [sum, qa] = kernels::cuda::add_layer_norm_quantized(h, delta.to(dt), w.to(dt), b.to(dt),
                                                               config_.layer_norm_epsilon, code,
                                                               consumer->outlier_threshold(), consumer->outlier_state());
      codes->q = qa.q;
      codes->scale = qa.scale;
      codes->outliers = qa.outliers;
      fused_quant_last_forward_ = true;
      if (wait_flag.defined()) kernels::cuda::wait_stream_flag(wait_flag, wait_value);
      return {sum, torch::Tensor()};
    }
    return kernels::cuda::add_layer_norm(h, delta.to(dt), w.to(dt), b.to(dt), config_.layer_norm_epsilon, wait_flag,
                                         wait_value);
  }
  if (wait_flag.defined()) kernels::cuda::wait_stream_flag(wait_flag, wait_value);
#else
  EVALSVC_CHECK(!wait_flag.defined(), InputError, "add_layer_norm: a stream flag needs a CUDA build");
  (void)wait_value;
#endif
  torch::Tensor sum = h + delta;
  return {sum, layer_norm(sum, w, b)};
}

#ifdef EVALSVC_WITH_CUDA
struct GPT2ClassifierImpl::WeightPrefetch {
  // Events of `side`: the forward's start on the main stream; "copies of slot s ready" (side -> main: with flags
  // only slot 0's attention half, for block 0); "copies read" (main -> side: with flags the attention half (0) or
  // the MLP half (1) of slot 0, with events slot s); the side stream's last copies (flags: the forward's join).
  static constexpr int kStart = 0;
  static int ready(size_t slot) { return 1 + static_cast<int>(slot); }
  static int freed(size_t slot) { return 3 + static_cast<int>(slot); }
  static constexpr int kSideEnd = 5;
  // Flags: 0 for the attention half, 1 for the MLP half.
  static constexpr int kAttentionHalf = 0;
  static constexpr int kMlpHalf = 1;

  /// `slots`: 1 for the flag schedule, 2 for the event schedule, so that the second block's worth of device memory
  /// exists only where the event schedule runs.
  WeightPrefetch(const torch::Device& d, torch::ScalarType dt, const std::array<std::pair<int64_t, int64_t>, 4>& shapes,
                 size_t slots)
      : side(d, 6), flags(torch::full({2}, -1, torch::TensorOptions().dtype(torch::kInt32).device(d))),
        flag{flags[0], flags[1]}, shapes_(shapes), dtype_(dt), device_(d) {
    for (size_t s = 0; s < slots; ++s) make_slot(s);
  }
  /// Slot s's four tensors. A slot the constructor did not make (the schedule switched after the first forward) is
  /// made here, on the current stream, outside any graph capture a caller had better not be in then.
  std::array<torch::Tensor, 4>& slot_of(size_t s) {
    if (!slot[s][0].defined()) make_slot(s);
    return slot[s];
  }
  kernels::cuda::SideStream side;
  // With flags, flag[half] holds the layer whose copies of that half slot 0 has, set by the side stream after them
  // and reset to -1 at each forward's start; the add + LayerNorm before a half waits for its block's number.
  torch::Tensor flags;
  std::array<torch::Tensor, 2> flag;

 private:
  void make_slot(size_t s) {
    for (size_t p = 0; p < 4; ++p)
      slot[s][p] = torch::empty({shapes_[p].first, shapes_[p].second},
                                torch::TensorOptions().dtype(dtype_).device(device_));
  }
  std::array<std::array<torch::Tensor, 4>, 2> slot;  // [slot][projection]
  std::array<std::pair<int64_t, int64_t>, 4> shapes_;
  torch::ScalarType dtype_;
  torch::Device device_;
};
#else
struct GPT2ClassifierImpl::WeightPrefetch {};
#endif

void GPT2ClassifierImpl::set_weight_prefetch(bool on, int blocks) {
  EVALSVC_CHECK(blocks >= 0, InputError, "weight prefetch blocks must be >= 0, got {}", blocks);
  weight_prefetch_ = on;
  prefetch_blocks_ = blocks;
}

GPT2ClassifierImpl::WeightPrefetch* GPT2ClassifierImpl::prefetch_for(int64_t tokens) {
#ifdef EVALSVC_WITH_CUDA
  if (!weight_prefetch_ || is_training() || blocks_.empty() || !blocks_[0].q[0] || !device().is_cuda()) return nullptr;
  // fp32 products run on the CUDA cores and keep every SM busy even at batch 1: a dequantization beside them
  // only takes SMs away (int8-sym on its fp32 base: 2.61 ms with prefetch against 2.29 ms without, one H200).
  if (base_dtype_ == torch::kFloat32) return nullptr;
  for (const auto& blk : blocks_)
    for (const auto& q : blk.q)
      if (!q->dequantizes_at(tokens)) return nullptr;
  if (!prefetch_) {  // reset by every change of device or base dtype (to_device, quantize, load_variant_state_dict)
    std::array<std::pair<int64_t, int64_t>, 4> shapes;
    for (size_t p = 0; p < 4; ++p) shapes[p] = {blocks_[0].q[p]->out_features(), blocks_[0].q[p]->in_features()};
    prefetch_ = std::make_shared<WeightPrefetch>(device(), base_dtype_, shapes, prefetch_flags_ ? 1 : 2);
  }
  return prefetch_.get();
#else
  (void)tokens;
  return nullptr;
#endif
}

#ifdef EVALSVC_WITH_CUDA
struct GPT2ClassifierImpl::L2Prefetch {
  // Events of `side`: "the main stream got here" (block i starting) and the side stream's end, which the main
  // stream waits for before the forward returns (CUDA graph capture needs the side stream joined back).
  static constexpr int kMain = 0;
  static constexpr int kDone = 1;
  explicit L2Prefetch(const torch::Device& d) : side(d, 2) {}
  kernels::cuda::SideStream side;
  std::vector<std::vector<torch::Tensor>> tensors;  // [layer]: the four projections' stored tensors
  /// Queues the L2 prefetch of `layer`'s tensors on the side stream, after everything queued on the main one.
  void warm(size_t layer) {
    side.record_current(kMain);
    side.side_waits(kMain);
    side.run_on_side([&] { kernels::cuda::l2_prefetch(tensors[layer]); });
  }
};
#else
struct GPT2ClassifierImpl::L2Prefetch {};
#endif

GPT2ClassifierImpl::L2Prefetch* GPT2ClassifierImpl::l2_prefetch_for(int64_t tokens) {
#ifdef EVALSVC_WITH_CUDA
  if (!l2_prefetch_ || is_training() || tokens > kL2PrefetchMaxTokens || blocks_.empty() || !blocks_[0].q[0] ||
      !device().is_cuda())
    return nullptr;
  // Only products on fp16 / bf16 that quantize no activations gained (set_l2_prefetch's comment, docs/perf.md),
  // and only where the GPU, not the host, sets the pace: in a CUDA graph. Eagerly, a small forward waits on its
  // launches, and the side stream's are more of them.
  if (base_dtype_ != torch::kFloat16 && base_dtype_ != torch::kBFloat16) return nullptr;
  for (const auto& blk : blocks_)
    for (const auto& q : blk.q)
      if (q->activation_code() != kernels::ActivationCode::kNone) return nullptr;
  if (!kernels::cuda::current_stream_capturing(device())) return nullptr;
  if (!l2_) {  // reset with prefetch_
    l2_ = std::make_shared<L2Prefetch>(device());
    for (const auto& blk : blocks_) {
      std::vector<torch::Tensor> t;
      for (const auto& q : blk.q)
        for (auto& s : q->stored_tensors()) t.push_back(std::move(s));
      l2_->tensors.push_back(std::move(t));
    }
  }
  return l2_.get();
#else
  (void)tokens;
  return nullptr;
#endif
}

bool GPT2ClassifierImpl::takes_dense(size_t layer, int p, int64_t all_tokens, int64_t tail_tokens) const {
  return blocks_[layer].q[p]->dequantizes_at(p == 0 ? all_tokens : tail_tokens);
}

void GPT2ClassifierImpl::stage_copies(WeightPrefetch& pf, size_t layer, int first, int last, size_t slot, int flag,
                                      int64_t all_tokens, int64_t tail_tokens) const {
#ifdef EVALSVC_WITH_CUDA
  auto& dest = pf.slot_of(slot);
  pf.side.run_on_side([&] {
    std::vector<const kernels::QuantizedLinear*> layers;
    std::vector<torch::Tensor*> outs;
    for (int p = first; p < last; ++p) {
      if (takes_dense(layer, p, all_tokens, tail_tokens)) {
        layers.push_back(blocks_[layer].q[p].get());
        outs.push_back(&dest[p]);
      }
    }
    kernels::dense_weights_into(layers, outs, prefetch_blocks_);  // nf4: one launch for them all
    if (flag >= 0) kernels::cuda::set_stream_flag(pf.flag[flag], static_cast<int>(layer));
  });
#else
  (void)pf;
  (void)layer;
  (void)first;
  (void)last;
  (void)slot;
  (void)flag;
  (void)all_tokens;
  (void)tail_tokens;
#endif
}

torch::Tensor GPT2ClassifierImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& lengths) {
  EVALSVC_CHECK(input_ids.dim() == 2, InputError, "input_ids must be [batch, seq], got {} dims", input_ids.dim());
  const int64_t B = input_ids.size(0), T = input_ids.size(1);
  EVALSVC_CHECK(T <= config_.n_positions, InputError, "sequence length {} exceeds n_positions {}", T,
                config_.n_positions);
  EVALSVC_CHECK(lengths.dim() == 1 && lengths.size(0) == B, InputError, "lengths must be [{}], got {}", B,
                dims(lengths.sizes()));
  const int64_t E = config_.n_embd, H = config_.n_head, D = E / H;
  const bool train = is_training();
  auto pos = torch::arange(T, torch::TensorOptions().dtype(torch::kLong).device(input_ids.device()));
  // Activation dtype: the variant's base dtype on CUDA; fp32 on CPU (storage stays in the base dtype).
  const auto act = input_ids.is_cuda() ? base_dtype_ : torch::kFloat32;
  torch::Tensor h = (torch::embedding(wte_, input_ids) + torch::embedding(wpe_, pos).unsqueeze(0)).to(act);
  if (train && config_.embd_pdrop > 0) h = torch::dropout(h, config_.embd_pdrop, true);

  // Each residual add is fused with the LayerNorm that follows it (add_layer_norm): attention output + ln_2,
  // MLP output + the next block's ln_1. Only the first ln_1 stands alone, and the last block's MLP residual
  // is a plain add (ln_f acts on the pooled rows only).
  auto a = layer_norm(h, blocks_.front().ln1_w, blocks_.front().ln1_b);

  // The position each row's logits are read at (the last real token), and whether the last block runs there only
  // (set_last_block); then the rows that block's c_proj, c_fc and mlp.c_proj see.
  const auto last = (lengths - 1).clamp_min(0);
  const auto rows = torch::arange(B, last.options());
  const bool prune = !train && (last_block_ == LastBlock::kPruned ||
                                (last_block_ == LastBlock::kAuto && B * T >= kPruneMinTokens));
  pruned_last_forward_ = prune;
  auto tail_tokens = [&](size_t layer) { return prune && layer + 1 == blocks_.size() ? B : B * T; };

  // Weight prefetch (set_weight_prefetch): the side stream starts after everything queued so far (the previous
  // forward's last blocks may still read the slots). With flags (set_prefetch_flags, the default) it makes block
  // 0's two halves at once, then block i + 1's attention half (c_attn, attn.c_proj) once block i's attn.c_proj has
  // run and its MLP half (c_fc, mlp.c_proj) once block i's mlp.c_proj has, all into one slot set. So only one
  // block's copies (13.5 MiB in fp16 for GPT-2 small) are live in L2 beside the block being computed, against 27
  // with whole blocks in two slots; each step down in live copy bytes was faster, 15-54 us a batch-1 forward in
  // all (H200, docs/perf.md "The weight prefetch in halves"). With events: blocks 0 and 1 at once, block i + 2
  // into block i's slot once block i has run. The main stream waits for copies only right before they are read,
  // and the forward's end joins the side stream back (which CUDA graph capture requires).
  WeightPrefetch* pf = prefetch_for(B * T);
  prefetched_last_forward_ = pf != nullptr;
  fused_quant_last_forward_ = false;
#ifdef EVALSVC_WITH_CUDA
  // With flags the add + LayerNorm before each half learns that its copies are ready; only block 0's attention
  // half is waited for with an event (its LayerNorm is not fused with an add). Each flag's setter is launched
  // before its waiter, so a kernel loaded lazily at its first launch never waits for a waiter that waits for it.
  const bool flag_sync = pf != nullptr && prefetch_flags_;
  const size_t n_blocks = blocks_.size();
  // stage(layer, half, slot): that half's copies (0: c_attn and attn.c_proj, 1: c_fc and mlp.c_proj) or, with half
  // -1, the whole block's; with flags its flag is set after them.
  auto stage = [&](size_t layer, int half, size_t slot) {
    const int first = half < 0 ? 0 : 2 * half, last = half < 0 ? 4 : 2 * half + 2;
    stage_copies(*pf, layer, first, last, slot, flag_sync ? half : -1, B * T, tail_tokens(layer));
  };
  if (pf) {
    pf->side.record_current(WeightPrefetch::kStart);
    pf->side.side_waits(WeightPrefetch::kStart);
    if (flag_sync) {
      // Flags from -1 each forward, on the side stream (block 0's event orders it before every wait on them), so
      // that no value left by a forward that stopped part-way can pass for this one's.
      pf->side.run_on_side([&] { pf->flags.fill_(-1); });
      stage(0, WeightPrefetch::kAttentionHalf, 0);
      pf->side.record_side(WeightPrefetch::ready(0));
      stage(0, WeightPrefetch::kMlpHalf, 0);
    } else {
      for (size_t l = 0; l < std::min<size_t>(2, n_blocks); ++l) {
        stage(l, -1, l % 2);
        pf->side.record_side(WeightPrefetch::ready(l % 2));
      }
    }
  }
#endif
  // L2 prefetch (set_l2_prefetch), where the products read their stored weights: blocks 0 and 1 at the start,
  // block i + 1 when block i starts.
  L2Prefetch* l2 = pf ? nullptr : l2_prefetch_for(B * T);
  l2_prefetched_last_forward_ = l2 != nullptr;
#ifdef EVALSVC_WITH_CUDA
  if (l2) {
    for (size_t l = 0; l < std::min<size_t>(2, blocks_.size()); ++l) l2->warm(l);
  }
#endif
  const torch::Tensor* dense = nullptr;  // this block's four prefetched weights, or null
  InputCodes a_codes;                    // a as per-token codes (add_layer_norm with a consumer), or undefined
  for (size_t i = 0; i < blocks_.size(); ++i) {
    const auto& blk = blocks_[i];
#ifdef EVALSVC_WITH_CUDA
    if (pf) {
      const size_t s = flag_sync ? 0 : i % 2;
      if (!flag_sync || i == 0) pf->side.current_waits(WeightPrefetch::ready(s));
      dense = pf->slot_of(s).data();
    }
    if (l2 && i >= 1 && i + 1 < blocks_.size()) l2->warm(i + 1);
#endif
    // A pruned last block's products may see too few rows to multiply by a dense weight (nf4's fused kernels).
    auto dense_of = [&](int p) { return dense && takes_dense(i, p, B * T, tail_tokens(i)) ? dense + p : nullptr; };
    auto qkv = linear(blk, 0, a, kernels::Activation::kNone, dense_of(0), a_codes, act)
                   .view({B, T, 3, H, D})
                   .permute({2, 0, 3, 1, 4});  // [3, B, H, T, D]
    torch::Tensor attn;
    if (prune && i + 1 == blocks_.size()) {
      // Keys and values at every position, the query at the read position only: causal attention for that one
      // query is attention over the keys up to it. From here on the block's rows are those positions, [B, 1, E].
      using torch::indexing::Slice;
      const auto q = qkv[0].index({rows, Slice(), last}).unsqueeze(2);                   // [B, H, 1, D]
      const auto keep = (pos.unsqueeze(0) <= last.unsqueeze(1)).view({B, 1, 1, T});  // key t <= last[b]
      attn = compat::attention(q, qkv[1], qkv[2], keep, /*causal=*/false, 0.0);
      h = h.index({rows, last}).unsqueeze(1);
    } else {
      attn = compat::attention(qkv[0], qkv[1], qkv[2], torch::Tensor(), /*causal=*/true,
                               train ? config_.attn_pdrop : 0.0);
    }
    attn = attn.transpose(1, 2).reshape({B, attn.size(2), E});
    auto o = linear(blk, 1, attn, kernels::Activation::kNone, dense_of(1));
    if (train && config_.resid_pdrop > 0) o = torch::dropout(o, config_.resid_pdrop, true);
    torch::Tensor mlp_flag;  // this block's MLP half, with flag_sync
#ifdef EVALSVC_WITH_CUDA
    // After "copies read" (freed) of what the next copies overwrite, which the main stream records here.
    auto restage = [&](int freed, size_t layer, int half, size_t slot) {
      pf->side.record_current(freed);
      pf->side.side_waits(freed);
      stage(layer, half, slot);
    };
    if (flag_sync) {
      if (i + 1 < n_blocks) restage(WeightPrefetch::freed(0), i + 1, WeightPrefetch::kAttentionHalf, 0);
      mlp_flag = pf->flag[WeightPrefetch::kMlpHalf];
    }
#endif
    torch::Tensor m;
    InputCodes m_codes;
    std::tie(h, m) = add_layer_norm(h, o, blk.ln2_w, blk.ln2_b, blk.q[2].get(), &m_codes, mlp_flag,
                                    static_cast<int>(i));
    m = linear(blk, 2, m, kernels::Activation::kGeluTanh, dense_of(2), m_codes, act);
    m = linear(blk, 3, m, kernels::Activation::kNone, dense_of(3));
#ifdef EVALSVC_WITH_CUDA
    if (flag_sync && i + 1 < n_blocks) restage(WeightPrefetch::freed(1), i + 1, WeightPrefetch::kMlpHalf, 0);
    if (pf && !flag_sync && i + 2 < n_blocks) {
      restage(WeightPrefetch::freed(i % 2), i + 2, -1, i % 2);
      pf->side.record_side(WeightPrefetch::ready(i % 2));
    }
#endif
    if (train && config_.resid_pdrop > 0) m = torch::dropout(m, config_.resid_pdrop, true);
    if (i + 1 < blocks_.size()) {
      torch::Tensor wait_flag;  // block i + 1's attention half, with flag_sync
#ifdef EVALSVC_WITH_CUDA
      if (flag_sync) wait_flag = pf->flag[WeightPrefetch::kAttentionHalf];
#endif
      std::tie(h, a) = add_layer_norm(h, m, blocks_[i + 1].ln1_w, blocks_[i + 1].ln1_b, blocks_[i + 1].q[0].get(),
                                      &a_codes, wait_flag, static_cast<int>(i + 1));
    } else {
      h = h + m;
    }
  }
#ifdef EVALSVC_WITH_CUDA
  if (flag_sync) {
    pf->side.record_side(WeightPrefetch::kSideEnd);
    pf->side.current_waits(WeightPrefetch::kSideEnd);
  }
  if (l2) {
    l2->side.record_side(L2Prefetch::kDone);
    l2->side.current_waits(L2Prefetch::kDone);
  }
#endif
  // The final LayerNorm and the head act per position: apply them only at the last real token.
  auto pooled = prune ? h.select(1, 0) : h.index({rows, last});
  pooled = layer_norm(pooled, lnf_w_, lnf_b_);
  const auto head_dt = autocast_ != torch::kFloat32 ? autocast_ : pooled.scalar_type();
  return torch::linear(pooled.to(head_dt), score_w_.to(head_dt)).to(torch::kFloat32);
}

std::vector<std::pair<std::string, torch::Tensor*>> GPT2ClassifierImpl::plain_tensors() {
  std::vector<std::pair<std::string, torch::Tensor*>> out = {{"transformer.wte.weight", &wte_},
                                                             {"transformer.wpe.weight", &wpe_},
                                                             {"transformer.ln_f.weight", &lnf_w_},
                                                             {"transformer.ln_f.bias", &lnf_b_},
                                                             {"score.weight", &score_w_}};
  for (size_t l = 0; l < blocks_.size(); ++l) {
    auto& blk = blocks_[l];
    out.emplace_back(block_key(l, "ln_1.weight"), &blk.ln1_w);
    out.emplace_back(block_key(l, "ln_1.bias"), &blk.ln1_b);
    out.emplace_back(block_key(l, "ln_2.weight"), &blk.ln2_w);
    out.emplace_back(block_key(l, "ln_2.bias"), &blk.ln2_b);
  }
  return out;
}

std::map<std::string, torch::Tensor> GPT2ClassifierImpl::hf_state_dict() const {
  std::map<std::string, torch::Tensor> s;
  auto cpu = [](const torch::Tensor& t) { return t.detach().to(torch::kCPU, torch::kFloat32).contiguous(); };
  for (auto& [k, t] : const_cast<GPT2ClassifierImpl*>(this)->plain_tensors()) s[k] = cpu(*t);
  for (size_t l = 0; l < blocks_.size(); ++l) {
    const auto& blk = blocks_[l];
    for (int p = 0; p < 4; ++p) {
      torch::Tensor w = blk.q[p] ? blk.q[p]->dequantized_weight() : blk.w[p];
      // Hugging Face Conv1D stores [in, out].
      s[block_key(l, kProjectionNames[p]) + ".weight"] = cpu(w).t().contiguous();
      s[block_key(l, kProjectionNames[p]) + ".bias"] = cpu(blk.b[p]);
    }
  }
  return s;
}

void GPT2ClassifierImpl::load_hf_state_dict(const std::map<std::string, torch::Tensor>& state, bool with_head) {
  EVALSVC_CHECK(!blocks_.empty() && !blocks_[0].q[0], InputError, "cannot load fp32 weights into a quantized model");
  torch::NoGradGuard no_grad;
  auto take = [&](const std::string& key, torch::Tensor& dst, bool transpose) {
    auto it = state.find(key);
    if (it == state.end()) throw FormatError(fmt::format("checkpoint has no tensor '{}'", key));
    torch::Tensor src = it->second;
    if (transpose) src = src.t();
    if (src.sizes() != dst.sizes()) {
      throw FormatError(fmt::format("tensor '{}' has shape {}, expected {}{}", key, dims(it->second.sizes()),
                                    dims(transpose ? dst.t().sizes() : dst.sizes()), transpose ? " (Conv1D [in, out])" : ""));
    }
    dst.copy_(src.to(dst.dtype()));
  };
  for (auto& [k, t] : plain_tensors()) {
    if (with_head || k != "score.weight") take(k, *t, false);
  }
  for (size_t l = 0; l < blocks_.size(); ++l) {
    auto& blk = blocks_[l];
    for (int p = 0; p < 4; ++p) {
      take(block_key(l, kProjectionNames[p]) + ".weight", blk.w[p], true);
      take(block_key(l, kProjectionNames[p]) + ".bias", blk.b[p], false);
    }
  }
}

void GPT2ClassifierImpl::quantize(kernels::Method method, torch::ScalarType base_dtype,
                                  const kernels::QuantOptions& options) {
  EVALSVC_CHECK(!blocks_.empty() && !blocks_[0].q[0], InputError, "model is already quantized ({})",
                kernels::method_name(method_));
  torch::NoGradGuard no_grad;
  eval();
  // The quantized layers compute in the variant's base dtype (fp32 for the reference's int8 "scratch").
  kernels::QuantOptions opts = options;
  opts.compute_dtype = base_dtype;
  auto conv = [&](torch::Tensor& t) { t = t.detach().to(base_dtype); };
  for (auto& [k, t] : plain_tensors()) conv(*t);
  for (auto& blk : blocks_) {
    for (int p = 0; p < 4; ++p) {
      blk.q[p] = kernels::quantize_linear(method, blk.w[p].detach().to(torch::kFloat32), blk.b[p].detach(), opts);
      blk.w[p] = torch::Tensor();  // free the fp32 copy: the variant's memory is what it stores
      conv(blk.b[p]);
    }
  }
  method_ = method;
  base_dtype_ = base_dtype;
  autocast_ = torch::kFloat32;
  prefetch_.reset();
  l2_.reset();
}

std::map<std::string, torch::Tensor> GPT2ClassifierImpl::variant_state_dict() const {
  EVALSVC_CHECK(!blocks_.empty() && blocks_[0].q[0], InputError, "variant_state_dict() needs a quantized model");
  std::map<std::string, torch::Tensor> s;
  auto cpu = [](const torch::Tensor& t) { return t.detach().to(torch::kCPU).contiguous(); };
  for (auto& [k, t] : const_cast<GPT2ClassifierImpl*>(this)->plain_tensors()) s[k] = cpu(*t);
  for (size_t l = 0; l < blocks_.size(); ++l) {
    const auto& blk = blocks_[l];
    for (int p = 0; p < 4; ++p) {
      for (const auto& [k, t] : blk.q[p]->state()) s[block_key(l, kProjectionNames[p]) + "." + k] = cpu(t);
    }
  }
  return s;
}

void GPT2ClassifierImpl::load_variant_state_dict(const std::map<std::string, torch::Tensor>& state,
                                                 kernels::Method method, torch::ScalarType base_dtype,
                                                 const kernels::QuantOptions& options) {
  torch::NoGradGuard no_grad;
  eval();
  auto take = [&](const std::string& key, torch::Tensor& dst) {
    auto it = state.find(key);
    if (it == state.end()) throw FormatError(fmt::format("variant checkpoint has no tensor '{}'", key));
    if (it->second.sizes() != dst.sizes()) {
      throw FormatError(fmt::format("tensor '{}' has shape {}, expected {}", key, dims(it->second.sizes()), dims(dst.sizes())));
    }
    dst = it->second.to(base_dtype).contiguous();
  };
  for (auto& [k, t] : plain_tensors()) take(k, *t);
  kernels::QuantOptions opts = options;
  opts.compute_dtype = base_dtype;
  for (size_t l = 0; l < blocks_.size(); ++l) {
    auto& blk = blocks_[l];
    for (int p = 0; p < 4; ++p) {
      const std::string prefix = block_key(l, kProjectionNames[p]) + ".";
      std::map<std::string, torch::Tensor> sub;
      for (auto it = state.lower_bound(prefix); it != state.end() && it->first.rfind(prefix, 0) == 0; ++it) {
        sub[it->first.substr(prefix.size())] = it->second;
      }
      blk.q[p] = kernels::load_linear(method, sub, opts);
      EVALSVC_CHECK(blk.q[p]->out_features() == blk.w[p].size(0) && blk.q[p]->in_features() == blk.w[p].size(1),
                    FormatError, "{}: quantized layer is {}x{}, the config implies {}x{}", prefix,
                    blk.q[p]->out_features(), blk.q[p]->in_features(), blk.w[p].size(0), blk.w[p].size(1));
      if (sub.count("bias")) blk.b[p] = sub["bias"].to(base_dtype);
      blk.w[p] = torch::Tensor();
    }
  }
  method_ = method;
  base_dtype_ = base_dtype;
  autocast_ = torch::kFloat32;
  prefetch_.reset();
  l2_.reset();
}

const kernels::QuantizedLinear* GPT2ClassifierImpl::projection(int64_t layer, Projection p) const {
  EVALSVC_CHECK(layer >= 0 && layer < static_cast<int64_t>(blocks_.size()), InputError, "layer {} out of range", layer);
  return blocks_[static_cast<size_t>(layer)].q[static_cast<int>(p)].get();
}

void GPT2ClassifierImpl::to_device(const torch::Device& device) {
  torch::NoGradGuard no_grad;
  prefetch_.reset();
  l2_.reset();
  auto mv = [&](torch::Tensor& t) {
    if (!t.defined()) return;
    const bool rg = t.requires_grad();
    t = t.detach().to(device);
    if (rg) t.set_requires_grad(true);
  };
  for (auto& [k, t] : plain_tensors()) mv(*t);
  for (auto& blk : blocks_) {
    for (int p = 0; p < 4; ++p) {
      mv(blk.w[p]);
      mv(blk.b[p]);
      if (blk.q[p]) blk.q[p]->to(device);
    }
  }
}

torch::Device GPT2ClassifierImpl::device() const { return wte_.device(); }

}  // namespace evalsvc::worker
