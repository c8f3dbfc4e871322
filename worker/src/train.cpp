#include "evalsvc/worker/train.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>

#include "evalsvc/common/error.h"
#include "evalsvc/common/log.h"
#include "evalsvc/worker/device.h"
#include "evalsvc/worker/evaluate.h"

namespace fs = std::filesystem;

namespace evalsvc::worker {

nlohmann::json TrainResult::to_json() const {
  nlohmann::json j;
  j["steps"] = steps;
  j["samples"] = samples;
  j["seconds"] = seconds;
  j["samples_per_s"] = samples_per_s;
  j["final_loss"] = final_loss;
  j["resumed_from_step"] = resumed_from_step;
  j["padded_tokens"] = padded_tokens;
  j["real_tokens"] = real_tokens;
  j["epochs"] = nlohmann::json::array();
  for (const auto& e : epochs) {
    j["epochs"].push_back({{"epoch", e.epoch},
                           {"mean_loss", e.mean_loss},
                           {"seconds", e.seconds},
                           {"samples_per_s", e.samples_per_s},
                           {"validation_accuracy", e.validation_accuracy}});
  }
  return j;
}

Batch make_batch(const TokenizedDataset& data, const std::vector<size_t>& idx, const torch::Device& device,
                 int64_t pad_to, int64_t pad_id, int64_t pad_multiple) {
  EVALSVC_CHECK(!idx.empty(), InputError, "empty batch");
  int64_t T = pad_to;
  if (T <= 0) {
    for (size_t i : idx) T = std::max<int64_t>(T, static_cast<int64_t>(data.row(i).size()));
    if (pad_multiple <= 0) pad_multiple = device.is_cuda() ? 8 : 1;
    T = std::max(T, std::min<int64_t>((T + pad_multiple - 1) / pad_multiple * pad_multiple, data.max_len));
  }
  T = std::max<int64_t>(T, 1);
  const int64_t B = static_cast<int64_t>(idx.size());
  auto ids = torch::full({B, T}, pad_id, torch::kLong);
  auto lengths = torch::empty({B}, torch::kLong);
  auto labels = torch::empty({B}, torch::kLong);
  auto* ip = ids.data_ptr<int64_t>();
  auto* lp = lengths.data_ptr<int64_t>();
  auto* yp = labels.data_ptr<int64_t>();
  for (int64_t b = 0; b < B; ++b) {
    auto row = data.row(idx[static_cast<size_t>(b)]);
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(row.size()), T);
    EVALSVC_CHECK(n > 0, InputError, "dataset row {} has no tokens", idx[static_cast<size_t>(b)]);
    std::copy(row.begin(), row.begin() + n, ip + b * T);
    lp[b] = n;
    yp[b] = data.labels[idx[static_cast<size_t>(b)]];
  }
  Batch batch;
  batch.rows = idx;
  if (device.is_cuda()) {
    batch.ids = ids.pin_memory().to(device, /*non_blocking=*/true);
    batch.lengths = lengths.pin_memory().to(device, true);
    batch.labels = labels.pin_memory().to(device, true);
  } else {
    batch.ids = ids;
    batch.lengths = lengths;
    batch.labels = labels;
  }
  return batch;
}

std::vector<std::vector<size_t>> bucketed_batches(const TokenizedDataset& data, int64_t batch_size,
                                                  int64_t bucket_batches, uint64_t seed) {
  EVALSVC_CHECK(batch_size > 0, InputError, "batch_size must be > 0, got {}", batch_size);
  std::vector<size_t> order(data.size());
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  const size_t window = static_cast<size_t>(batch_size * std::max<int64_t>(bucket_batches, 1));
  std::vector<std::vector<size_t>> batches;
  for (size_t start = 0; start < order.size(); start += window) {
    const size_t end = std::min(order.size(), start + window);
    std::stable_sort(order.begin() + static_cast<std::ptrdiff_t>(start), order.begin() + static_cast<std::ptrdiff_t>(end),
                     [&](size_t a, size_t b) { return data.row(a).size() < data.row(b).size(); });
    for (size_t s = start; s < end; s += static_cast<size_t>(batch_size)) {
      batches.emplace_back(order.begin() + static_cast<std::ptrdiff_t>(s),
                           order.begin() + static_cast<std::ptrdiff_t>(std::min(end, s + static_cast<size_t>(batch_size))));
    }
  }
  std::shuffle(batches.begin(), batches.end(), rng);
  return batches;
}

namespace {

double lr_at(int64_t step, int64_t total, int64_t warmup, double base) {
  if (warmup > 0 && step < warmup) return base * static_cast<double>(step + 1) / static_cast<double>(warmup);
  const double progress = total > warmup ? static_cast<double>(step - warmup) / static_cast<double>(total - warmup) : 1.0;
  return base * 0.5 * (1.0 + std::cos(M_PI * std::min(1.0, progress)));
}

/// AdamW (decoupled weight decay, as torch.optim.AdamW) over one flat fp32 buffer that every parameter is a
/// view of. libtorch's C++ AdamW loops over tensors, ~10 kernel launches each: 150 tensors make a GPT-2 step
/// launch-bound. Flat, one step is ~10 launches whatever the model, and gradient clipping is one norm.
class FlatAdamW {
 public:
  FlatAdamW(const std::vector<torch::Tensor>& decay, const std::vector<torch::Tensor>& no_decay, const TrainOptions& o)
      : o_(o) {
    int64_t n = 0;
    for (const auto& t : decay) n += t.numel();
    for (const auto& t : no_decay) n += t.numel();
    auto opts = decay.front().options().requires_grad(false);
    params_flat_ = torch::empty({n}, opts);
    grads_flat_ = torch::zeros({n}, opts);
    m_ = torch::zeros({n}, opts);
    v_ = torch::zeros({n}, opts);
    decay_mask_ = torch::zeros({n}, opts);
    torch::NoGradGuard ng;
    int64_t off = 0;
    auto adopt = [&](const torch::Tensor& t, bool wd) {
      const int64_t k = t.numel();
      params_flat_.narrow(0, off, k).copy_(t.detach().reshape({k}));
      if (wd) decay_mask_.narrow(0, off, k).fill_(1.0);
      torch::Tensor p = t;
      p.set_data(params_flat_.narrow(0, off, k).view(t.sizes()));  // the model's tensor now lives in the buffer
      p.mutable_grad() = grads_flat_.narrow(0, off, k).view(t.sizes());  // autograd accumulates in place here
      params_.push_back(p);
      off += k;
    };
    for (const auto& t : decay) adopt(t, true);
    for (const auto& t : no_decay) adopt(t, false);
  }

  void zero_grad() { grads_flat_.zero_(); }

  /// Clips the global gradient norm to `max_norm` without a host synchronisation.
  void clip(double max_norm) {
    auto norm = grads_flat_.norm();
    grads_flat_.mul_((max_norm / (norm + 1e-6)).clamp_max(1.0));
  }

  void step(double lr) {
    torch::NoGradGuard ng;
    ++step_;
    const double bc1 = 1.0 - std::pow(o_.adam_beta1, static_cast<double>(step_));
    const double bc2 = 1.0 - std::pow(o_.adam_beta2, static_cast<double>(step_));
    if (o_.weight_decay > 0) params_flat_.addcmul_(params_flat_, decay_mask_, -lr * o_.weight_decay);
    m_.mul_(o_.adam_beta1).add_(grads_flat_, 1.0 - o_.adam_beta1);
    v_.mul_(o_.adam_beta2).addcmul_(grads_flat_, grads_flat_, 1.0 - o_.adam_beta2);
    auto denom = (v_.sqrt() / std::sqrt(bc2)).add_(o_.adam_eps);
    params_flat_.addcdiv_(m_, denom, -lr / bc1);
  }

  void save(torch::serialize::OutputArchive& ar) const {
    ar.write("flat_params", params_flat_.cpu());
    ar.write("adam_m", m_.cpu());
    ar.write("adam_v", v_.cpu());
    ar.write("adam_step", torch::tensor(step_));
  }
  void load(torch::serialize::InputArchive& ar) {
    torch::NoGradGuard ng;
    torch::Tensor p, m, v, st;
    ar.read("flat_params", p);
    ar.read("adam_m", m);
    ar.read("adam_v", v);
    ar.read("adam_step", st);
    EVALSVC_CHECK(p.numel() == params_flat_.numel(), FormatError, "training state has {} parameters, model {}",
                  p.numel(), params_flat_.numel());
    params_flat_.copy_(p);
    m_.copy_(m);
    v_.copy_(v);
    step_ = st.item<int64_t>();
  }

 private:
  TrainOptions o_;
  torch::Tensor params_flat_, grads_flat_, m_, v_, decay_mask_;
  std::vector<torch::Tensor> params_;
  int64_t step_ = 0;
};

std::string fmt_eta(double s) {
  const int64_t t = static_cast<int64_t>(s);
  return fmt::format("{:02d}:{:02d}", t / 60, t % 60);
}

/// Identity of a training run: a saved state is only resumed by the same configuration.
std::string run_key(const GPT2Classifier& model, const TokenizedDataset& data, const TrainOptions& o) {
  return fmt::format("{}|{}|{}|{}|{}|{}|{}|{}|{}", model->config().to_json().dump(), data.size(), data.tokens.size(),
                     o.epochs, o.batch_size, o.lr, o.seed, o.bucket_batches, o.pad_multiple);
}

void save_state(const fs::path& dir, const std::string& key, int64_t step, int64_t epoch, const FlatAdamW& opt) {
  torch::serialize::OutputArchive ar;
  ar.write("key", torch::tensor(std::vector<int64_t>(key.begin(), key.end())));
  ar.write("step", torch::tensor(step));
  ar.write("epoch", torch::tensor(epoch));
  opt.save(ar);
  fs::create_directories(dir);
  const fs::path tmp = dir / "train_state.pt.tmp";
  ar.save_to(tmp.string());
  fs::rename(tmp, dir / "train_state.pt");  // atomic: a crash leaves the previous state intact
}

/// Returns {step, epoch} restored, or {0, 0} when there is no matching state.
std::pair<int64_t, int64_t> load_state(const fs::path& dir, const std::string& key, FlatAdamW& opt) {
  const fs::path file = dir / "train_state.pt";
  if (dir.empty() || !fs::exists(file)) return {0, 0};
  torch::serialize::InputArchive ar;
  try {
    ar.load_from(file.string());
  } catch (const std::exception& e) {
    spdlog::warn("training state {} is unreadable ({}); starting from scratch", file.string(), e.what());
    return {0, 0};
  }
  torch::Tensor k, step, epoch;
  ar.read("key", k);
  auto* kp = k.data_ptr<int64_t>();
  std::string saved(static_cast<size_t>(k.numel()), ' ');
  for (int64_t i = 0; i < k.numel(); ++i) saved[static_cast<size_t>(i)] = static_cast<char>(kp[i]);
  if (saved != key) {
    spdlog::warn("training state {} belongs to another configuration; starting from scratch", file.string());
    return {0, 0};
  }
  ar.read("step", step);
  ar.read("epoch", epoch);
  opt.load(ar);
  return {step.item<int64_t>(), epoch.item<int64_t>()};
}

}  // namespace

TrainResult train(GPT2Classifier& model, const TokenizedDataset& train_set, const TokenizedDataset& validation,
                  const TrainOptions& o, const torch::Device& device) {
  EVALSVC_CHECK(train_set.size() > 0, InputError, "training set is empty");
  EVALSVC_CHECK(o.epochs > 0, InputError, "epochs must be > 0, got {}", o.epochs);
  EVALSVC_CHECK(o.lr > 0, InputError, "lr must be > 0, got {}", o.lr);
  model->to_device(device);
  model->train();
  model->set_autocast(device.is_cuda() && o.bf16_on_cuda ? torch::kBFloat16 : torch::kFloat32);

  FlatAdamW opt(model->decay_parameters(), model->no_decay_parameters(), o);

  const int64_t steps_per_epoch =
      (static_cast<int64_t>(train_set.size()) + o.batch_size - 1) / o.batch_size;
  const int64_t total = steps_per_epoch * o.epochs;
  const int64_t warmup = static_cast<int64_t>(std::llround(o.warmup_fraction * static_cast<double>(total)));
  const std::string key = run_key(model, train_set, o);

  TrainResult result;
  auto [step, start_epoch] = o.state_dir.empty() ? std::pair<int64_t, int64_t>{0, 0}
                                                 : load_state(o.state_dir, key, opt);
  result.resumed_from_step = step;
  if (step > 0) spdlog::info("resuming training at step {} of {} (epoch {})", step, total, start_epoch + 1);

  const bool tty = o.progress && ::isatty(2);
  const auto t0 = std::chrono::steady_clock::now();
  auto last_save = t0;
  double last_loss = 0;
  for (int64_t epoch = start_epoch; epoch < o.epochs; ++epoch) {
    const auto te = std::chrono::steady_clock::now();
    auto batches = bucketed_batches(train_set, o.batch_size, o.bucket_batches, o.seed + static_cast<uint64_t>(epoch));
    const int64_t first = step - epoch * steps_per_epoch;  // batches already done in this epoch (resume)
    torch::Tensor loss_sum = torch::zeros({}, torch::TensorOptions().device(device));
    int64_t n_batches = 0, epoch_samples = 0;
    for (int64_t bi = std::max<int64_t>(first, 0); bi < static_cast<int64_t>(batches.size()); ++bi) {
      const auto& idx = batches[static_cast<size_t>(bi)];
      Batch batch = make_batch(train_set, idx, device, 0, 50256, o.pad_multiple);
      result.padded_tokens += batch.ids.numel();
      for (size_t i : idx) result.real_tokens += static_cast<int64_t>(train_set.row(i).size());
      const double lr = lr_at(step, total, warmup, o.lr);
      opt.zero_grad();
      auto logits = model->forward(batch.ids, batch.lengths);
      auto loss = torch::nn::functional::cross_entropy(logits, batch.labels);
      loss.backward();
      if (o.grad_clip > 0) opt.clip(o.grad_clip);
      opt.step(lr);
      loss_sum += loss.detach();
      ++n_batches;
      ++step;
      epoch_samples += static_cast<int64_t>(idx.size());
      result.samples += static_cast<int64_t>(idx.size());
      if (tty && (step % 10 == 0 || bi + 1 == static_cast<int64_t>(batches.size()))) {
        const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const double rate = static_cast<double>(result.samples) / std::max(el, 1e-9);
        const double eta = static_cast<double>(total - step) * static_cast<double>(o.batch_size) / std::max(rate, 1e-9);
        fmt::print(stderr, "\repoch {}/{} step {}/{} loss {:.4f} {:.0f} samples/s ETA {}   ", epoch + 1, o.epochs,
                   step, total, loss.item<double>(), rate, fmt_eta(eta));
      }
      if (!o.state_dir.empty() && o.checkpoint_every_steps > 0 && step % o.checkpoint_every_steps == 0) {
        save_state(o.state_dir, key, step, epoch, opt);
      }
    }
    if (tty) fmt::print(stderr, "\n");
    synchronize(device);
    EpochRecord rec;
    rec.epoch = epoch + 1;
    rec.mean_loss = n_batches > 0 ? loss_sum.item<double>() / static_cast<double>(n_batches) : 0.0;
    rec.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count();
    rec.samples_per_s = static_cast<double>(epoch_samples) / std::max(rec.seconds, 1e-9);
    last_loss = rec.mean_loss;
    if (validation.size() > 0) {
      auto p = predict(model, validation, 256, device);
      int64_t correct = 0;
      for (size_t i = 0; i < p.preds.size(); ++i) correct += p.preds[i] == p.labels[i];
      rec.validation_accuracy = static_cast<double>(correct) / static_cast<double>(p.preds.size());
      model->train();
    }
    spdlog::info("epoch {}/{}: loss {:.4f}, {:.1f} s, {:.0f} samples/s{}", rec.epoch, o.epochs, rec.mean_loss,
                 rec.seconds, rec.samples_per_s,
                 rec.validation_accuracy >= 0 ? fmt::format(", validation accuracy {:.4f}", rec.validation_accuracy) : "");
    result.epochs.push_back(rec);
    if (!o.state_dir.empty() && o.checkpoint_every_steps == 0 && epoch + 1 < o.epochs &&
        std::chrono::steady_clock::now() - last_save >= o.checkpoint_interval) {
      save_state(o.state_dir, key, step, epoch + 1, opt);
      last_save = std::chrono::steady_clock::now();
    }
  }
  synchronize(device);
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  result.steps = step;
  result.samples_per_s = static_cast<double>(result.samples) / std::max(result.seconds, 1e-9);
  result.final_loss = last_loss;
  model->eval();
  model->set_autocast(torch::kFloat32);
  return result;
}

}  // namespace evalsvc::worker
