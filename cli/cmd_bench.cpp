// `qbench bench`: the bench job's measurements (batch-1 latency, throughput sweep, peak memory and, with
// --test-set, the test-set rate over real AG News rows with dynamic padding) on a randomly initialised model,
// outside the service. Speed does not depend on the weights' values, so this is
// how qbench is compared with the Hugging Face peer in one call on one card (scripts/peer_bench_hf.py, then
// scripts/bench_ratios.py). One JSON line per method on stdout.
#include <iostream>

#include "commands.h"
#include "evalsvc/common/error.h"
#include "evalsvc/common/experiment_spec.h"
#include "evalsvc/common/log.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/worker/benchmark.h"
#include "evalsvc/worker/dataset.h"
#include "evalsvc/worker/device.h"
#include "evalsvc/worker/gpt2.h"
#include "evalsvc/worker/preset.h"
#include "evalsvc/worker/tokenizer.h"

#if EVALSVC_WITH_CUDA
#include "evalsvc/kernels/cuda_ops.h"
#endif

namespace evalsvc::cli {
namespace {

struct BenchArgs {
  std::vector<std::string> methods = {"fp32", "fp16", "bf16", "int8-sym", "int8-sym-channel", "int8-w8a8", "llm-int8", "nf4"};
  std::string base;  // empty: each method's default base dtype
  std::string config = "gpt2";
  std::string device = "auto";
  int threads = 0;  // 0: libtorch's and OpenBLAS's defaults (one thread a core each)
  std::vector<int64_t> batch_sizes = {1, 8, 32, 128, 512};
  int64_t seq_len = 128, warmup = 20, iters = 200;
  bool no_graph = false;
  bool no_prefetch = false;
  int prefetch_blocks = worker::GPT2ClassifierImpl::kDefaultPrefetchBlocks;
  bool no_l2_prefetch = false;
  bool prefetch_events = false;
  bool no_fused_quant = false;
  std::string last_block = "auto";
  std::string fp8_gemm = "auto";
  std::string pdl = "on";
  bool test_set = false;
  std::string data;    // data folder (ag_news/, gpt2/); empty: the default search
  std::string cache = "var/cache";
  int64_t test_rows = 0;                       // 0: all 7,600
  int64_t eval_batch_size = EvalSpec{}.batch_size;
  int64_t max_len = DataSpec{}.max_len;
};

CommandRegistrar reg("bench", "Time batch-1 latency and a throughput sweep of quantized variants (random weights)",
                     [](CLI::App& sub) -> RunFn {
  auto a = std::make_shared<BenchArgs>();
  sub.add_option("--methods", a->methods, "methods to time (fp32 fp16 bf16 int8-sym int8-sym-channel int8-w8a8 llm-int8 nf4 fp8-e4m3; default: all "
                 "but fp8-e4m3, which needs CUDA kernels)")
      ->delimiter(',');
  sub.add_option("--base", a->base, "base dtype for every method (default: each method's own)");
  sub.add_option("--config", a->config, "model config: gpt2 | tiny")->capture_default_str();
  sub.add_option("--device", a->device, "auto | cpu | cuda | cuda:N")->capture_default_str();
  sub.add_option("--threads", a->threads,
                 "CPU threads (libtorch's, and OpenBLAS's where it is the BLAS; 0: one a core each); the device label "
                 "names them")
      ->check(CLI::Range(0, 4096))
      ->capture_default_str();
  sub.add_option("--batch-sizes", a->batch_sizes, "throughput sweep")->delimiter(',');
  sub.add_option("--seq-len", a->seq_len, "tokens per row (every row full, no padding)")->capture_default_str();
  sub.add_option("--warmup", a->warmup, "untimed forwards first")->capture_default_str();
  sub.add_option("--iters", a->iters, "timed batch-1 forwards")->capture_default_str();
  sub.add_flag("--no-graph", a->no_graph, "time eager batch-1 forwards instead of CUDA graph replays");
  sub.add_flag("--no-prefetch", a->no_prefetch,
               "weight-only variants dequantize each weight right before its product instead of ahead of it on a "
               "side stream (for comparing the two)");
  sub.add_option("--prefetch-blocks", a->prefetch_blocks,
                 "threads the prefetch's dequantization may use at once, in units of 1024 (nf4: blocks of 1024, int8: "
                 "of 256); 0: as many blocks as it needs")
      ->capture_default_str();
  sub.add_flag("--prefetch-events", a->prefetch_events,
               "the prefetch copies whole blocks into two slots and the main stream waits on an event before each "
               "block, instead of copying each half of a block into one slot set with the add + LayerNorm before "
               "the half waiting for a flag the side stream sets after them (for comparing the two)");
  sub.add_flag("--no-l2-prefetch", a->no_l2_prefetch,
               fmt::format("fp16 and bf16 batch-1 graphs do without the side stream that warms L2 with the next "
                           "block's weights (used in CUDA graphs of up to {} tokens; for comparing the two)",
                           worker::GPT2ClassifierImpl::kL2PrefetchMaxTokens));
  sub.add_flag("--no-fused-quant", a->no_fused_quant,
               "projections that quantize their input per token (int8-w8a8, fp8-e4m3, llm-int8) quantize it in a "
               "pass of their own instead of taking codes from the residual add + LayerNorm (for comparing the two)");
  sub.add_option("--last-block", a->last_block,
                 fmt::format("where the last block runs past its c_attn: auto (only at the position the head reads, "
                             "from {} tokens a forward) | pruned (there at every size) | full (at every position, as "
                             "Hugging Face does); the logits are the same (for comparing them)",
                             worker::GPT2ClassifierImpl::kPruneMinTokens))
      ->check(CLI::IsMember({"auto", "pruned", "full"}))
      ->capture_default_str();
  sub.add_option("--fp8-gemm", a->fp8_gemm,
                 "the fp8-e4m3 products: auto (qbench's wgmma kernel for few tokens on Hopper, cuBLASLt otherwise) | "
                 "cublaslt | wgmma | scaled_mm (for comparing them on the whole model)")
      ->check(CLI::IsMember({"auto", "cublaslt", "wgmma", "scaled_mm"}))
      ->capture_default_str();
  sub.add_option("--pdl", a->pdl,
                 "programmatic dependent launch of qbench's own chained kernels on Hopper (each is scheduled while the "
                 "one before it finishes, then waits for it on the device): on | off (for comparing the two)")
      ->check(CLI::IsMember({"on", "off"}))
      ->capture_default_str();
  sub.add_flag("--test-set", a->test_set,
               "also time the test-set rate: the AG News test rows, length-bucketed, each batch padded to its longest row");
  sub.add_option("--data", a->data, "data folder holding ag_news/ and gpt2/ (default: $QBENCH_DATA_DIR or ../shared/data)");
  sub.add_option("--cache", a->cache, "tokenized-dataset cache folder")->capture_default_str();
  sub.add_option("--test-rows", a->test_rows, "first N test rows for --test-set (0: all)")->capture_default_str();
  sub.add_option("--eval-batch-size", a->eval_batch_size, "rows a forward for --test-set")->capture_default_str();
  sub.add_option("--max-len", a->max_len, "tokens kept a row for --test-set")->capture_default_str();
  return [a] {
    worker::set_cpu_threads(a->threads);
    const torch::Device dev = worker::pick_device(a->device);
#if EVALSVC_WITH_CUDA
    using kernels::cuda::Fp8Gemm;
    const Fp8Gemm fp8_gemm = a->fp8_gemm == "cublaslt"    ? Fp8Gemm::kCublasLt
                             : a->fp8_gemm == "wgmma"     ? Fp8Gemm::kWgmma
                             : a->fp8_gemm == "scaled_mm" ? Fp8Gemm::kScaledMm
                                                          : Fp8Gemm::kAuto;
    kernels::cuda::set_fp8_auto_gemm(fp8_gemm);
    kernels::cuda::set_programmatic_launch(a->pdl == "on");
#else
    EVALSVC_CHECK(a->fp8_gemm == "auto", InputError, "--fp8-gemm {}: this build has no CUDA kernels", a->fp8_gemm);
#endif
    const auto cfg = worker::ModelConfig::preset(a->config);
    worker::TokenizedDataset test;
    if (a->test_set) {
      EVALSVC_CHECK(a->eval_batch_size >= 1, InputError, "--eval-batch-size must be >= 1, got {}", a->eval_batch_size);
      EVALSVC_CHECK(a->test_rows >= 0, InputError, "--test-rows must be >= 0, got {}", a->test_rows);
      const auto dir = data_dir(a->data.empty() ? std::nullopt : std::optional<std::string>(a->data));
      const auto tok = worker::Tokenizer::load(dir / "gpt2");
      test = worker::load_or_tokenize(dir / "ag_news" / "test.csv", tok, a->max_len, a->cache,
                                      static_cast<size_t>(a->test_rows), nullptr);
    }
    for (const auto& name : a->methods) {
      // The variant as an experiment spec would give it, built as the bench job builds it.
      VariantSpec v;
      v.name = v.method = name;
      v.base_dtype = a->base.empty() ? default_base_dtype(name) : a->base;
      const std::string& base = v.base_dtype;
      worker::GPT2Classifier model(cfg, 0);
      model->quantize(kernels::parse_method(v.method), worker::dtype_of(base), worker::quant_options(v));
      model->to_device(dev);
      model->set_weight_prefetch(!a->no_prefetch, a->prefetch_blocks);
      model->set_l2_prefetch(!a->no_l2_prefetch);
      model->set_prefetch_flags(!a->prefetch_events);
      model->set_fused_input_quantization(!a->no_fused_quant);
      using LastBlock = worker::GPT2ClassifierImpl::LastBlock;
      model->set_last_block(a->last_block == "pruned" ? LastBlock::kPruned
                            : a->last_block == "full" ? LastBlock::kFull
                                                      : LastBlock::kAuto);
      worker::BenchOptions o;
      o.batch_sizes = a->batch_sizes;
      o.seq_len = a->seq_len;
      o.warmup = a->warmup;
      o.iters = a->iters;
      o.cuda_graph = !a->no_graph;
      const auto r = worker::run_benchmark(model, dev, o);
      nlohmann::json j = r.to_json();
      j["method"] = name;
      j["base_dtype"] = base;
      j["config"] = a->config;
      j["seq_len"] = a->seq_len;
      j["device"] = worker::describe_device(dev);
      if (r.weight_prefetch) {
        j["prefetch_blocks"] = a->prefetch_blocks;
        j["prefetch_sync"] = a->prefetch_events ? "events" : "flags";
      }
      j["fused_input_quantization"] = !a->no_fused_quant;
      j["last_block"] = a->last_block;
      if (v.method == "fp8-e4m3") j["fp8_gemm"] = a->fp8_gemm;
      j["pdl"] = a->pdl;  // asked; r.to_json()'s pdl_used says whether the launches used it
      std::string test_note;
      if (a->test_set) {
        const auto tr = worker::run_test_set_rate(model, test, a->eval_batch_size, dev);
        j["test_set"] = tr.to_json();
        test_note = fmt::format(", test set {:.0f} rows/s", tr.samples_per_s);
      }
      std::cout << j.dump() << std::endl;
      spdlog::info("{} ({}): batch 1 p50 {:.3f} ms{}{}", name, base, r.latency.p50_ms,
                   r.latency.cuda_graph ? " (CUDA graph)" : "", test_note);
    }
    return kOk;
  };
});

}  // namespace
}  // namespace evalsvc::cli
