#include "evalsvc/worker/evaluate.h"

#include <algorithm>
#include <chrono>
#include <numeric>

#include "evalsvc/common/error.h"
#include "evalsvc/worker/device.h"
#include "evalsvc/worker/train.h"

namespace evalsvc::worker {

Predictions predict(GPT2Classifier& model, const TokenizedDataset& data, int64_t batch_size,
                    const torch::Device& device) {
  EVALSVC_CHECK(batch_size > 0, InputError, "batch_size must be > 0, got {}", batch_size);
  const size_t n = data.size();
  const int64_t L = model->config().num_labels;
  Predictions out;
  out.num_labels = L;
  out.labels.assign(data.labels.begin(), data.labels.end());
  out.preds.assign(n, -1);
  out.logits.assign(n * static_cast<size_t>(L), 0.0f);
  if (n == 0) return out;

  // Longest rows first: batches of similar length pad little, and the first batch sizes the allocator.
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return data.row(a).size() > data.row(b).size(); });

  model->eval();
  torch::NoGradGuard no_grad;
  synchronize(device);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::pair<std::vector<size_t>, torch::Tensor>> pending;
  for (size_t s = 0; s < n; s += static_cast<size_t>(batch_size)) {
    std::vector<size_t> idx(order.begin() + static_cast<std::ptrdiff_t>(s),
                            order.begin() + static_cast<std::ptrdiff_t>(std::min(n, s + static_cast<size_t>(batch_size))));
    Batch batch = make_batch(data, idx, device);
    // Keep results on the device until the end so the host never waits inside the loop.
    pending.emplace_back(std::move(idx), model->forward(batch.ids, batch.lengths));
  }
  for (auto& [idx, logits] : pending) {
    auto cpu = logits.to(torch::kCPU, torch::kFloat32).contiguous();
    auto arg = cpu.argmax(1);
    const float* lp = cpu.data_ptr<float>();
    const int64_t* ap = arg.data_ptr<int64_t>();
    for (size_t b = 0; b < idx.size(); ++b) {
      out.preds[idx[b]] = static_cast<int32_t>(ap[b]);
      std::copy(lp + b * static_cast<size_t>(L), lp + (b + 1) * static_cast<size_t>(L),
                out.logits.begin() + static_cast<std::ptrdiff_t>(idx[b] * static_cast<size_t>(L)));
    }
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  out.samples_per_s = static_cast<double>(n) / std::max(out.seconds, 1e-9);
  return out;
}

}  // namespace evalsvc::worker
