#include "evalsvc/worker/parity.h"

#include <nlohmann/json.hpp>

#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/worker/checkpoint.h"
#include "evalsvc/worker/gpt2.h"

namespace evalsvc::worker {

ParityResult check_parity(const std::filesystem::path& dir, const std::string& dtype, const torch::Device& device) {
  const auto logits_file = dir / "logits.json";
  nlohmann::json ref;
  try {
    ref = nlohmann::json::parse(read_file(logits_file));
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(fmt::format("{}: not valid JSON: {}", logits_file.string(), e.what()));
  }
  if (!ref.contains("logits") || !ref["logits"].contains(dtype)) {
    throw FormatError(fmt::format("{}: no logits recorded for dtype '{}'", logits_file.string(), dtype));
  }
  Checkpoint ck = load_checkpoint(dir);
  GPT2Classifier model(ck.config, 0);
  model->load_hf_state_dict(ck.state, /*with_head=*/true);
  model->eval();
  if (dtype == "fp16") {
    model->quantize(kernels::Method::kFp16, torch::kFloat16, {});
  } else if (dtype == "bf16") {
    model->quantize(kernels::Method::kBf16, torch::kBFloat16, {});
  } else if (dtype != "fp32") {
    throw InputError(fmt::format("parity dtype '{}' unknown: expected fp32, fp16 or bf16", dtype));
  }
  model->to_device(device);

  const auto ids_json = ref.at("input_ids");
  const int64_t B = static_cast<int64_t>(ids_json.size());
  const int64_t T = static_cast<int64_t>(ids_json.at(0).size());
  auto ids = torch::empty({B, T}, torch::kLong);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) ids[b][t] = ids_json[b][t].get<int64_t>();
  std::vector<int64_t> lens = ref.at("lengths").get<std::vector<int64_t>>();
  auto lengths = torch::tensor(lens, torch::kLong);

  torch::NoGradGuard ng;
  auto got = model->forward(ids.to(device), lengths.to(device)).to(torch::kCPU);
  const auto& want = ref["logits"][dtype];
  ParityResult r;
  r.dtype = dtype;
  for (int64_t b = 0; b < B; ++b) {
    int64_t arg_want = 0, arg_got = 0;
    for (int64_t c = 0; c < got.size(1); ++c) {
      const double w = want[b][c].get<double>();
      const double g = got[b][c].item<double>();
      r.max_abs_diff = std::max(r.max_abs_diff, std::abs(w - g));
      r.max_abs_logit = std::max(r.max_abs_logit, std::abs(w));
      if (w > want[b][arg_want].get<double>()) arg_want = c;
      if (g > got[b][arg_got].item<double>()) arg_got = c;
    }
    r.same_argmax = r.same_argmax && arg_want == arg_got;
  }
  return r;
}

}  // namespace evalsvc::worker
