// `qbench train`: trains and evaluates a preset directly, without the job system (the model core on its own:
// useful for debugging a model, and the reference the job system's results must equal).
#include <fstream>
#include <iostream>

#include "commands.h"
#include "evalsvc/common/error.h"
#include "evalsvc/common/log.h"
#include "evalsvc/common/metrics.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/worker/ag_news.h"
#include "evalsvc/worker/checkpoint.h"
#include "evalsvc/worker/dataset.h"
#include "evalsvc/worker/device.h"
#include "evalsvc/worker/evaluate.h"
#include "evalsvc/worker/preset.h"
#include "evalsvc/worker/tokenizer.h"

namespace evalsvc::cli {
namespace {

namespace fs = std::filesystem;
using namespace evalsvc::worker;

struct TrainArgs {
  std::string preset = "tiny";
  std::string data, train_csv, test_csv, device = "auto", out, init, cache;
  int64_t epochs = 0, batch_size = 0, threads = 0, pad_multiple = 0;
  double lr = 0, validation_fraction = -1;
  uint64_t seed = 0;
  size_t train_limit = 0, test_limit = 0;
  bool resume = true;
};

int run_train(const TrainArgs& a) {
  RunConfig rc = preset_run(a.preset);
  if (a.epochs > 0) rc.train.epochs = a.epochs;
  if (a.batch_size > 0) rc.train.batch_size = a.batch_size;
  if (a.pad_multiple > 0) rc.train.pad_multiple = a.pad_multiple;
  if (a.lr > 0) rc.train.lr = a.lr;
  if (a.seed > 0) rc.train.seed = a.seed;
  if (a.train_limit > 0) rc.train_limit = a.train_limit;
  if (a.test_limit > 0) rc.test_limit = a.test_limit;
  if (a.validation_fraction >= 0) rc.validation_fraction = a.validation_fraction;
  set_cpu_threads(static_cast<int>(a.threads));

  const torch::Device device = pick_device(a.device);
  const fs::path data = data_dir(a.data.empty() ? std::nullopt : std::optional<std::string>(a.data));
  const fs::path train_csv = a.train_csv.empty() ? data / "ag_news" / "train_first10429.csv" : fs::path(a.train_csv);
  const fs::path test_csv = a.test_csv.empty() ? data / "ag_news" / "test.csv" : fs::path(a.test_csv);
  const fs::path out = a.out.empty() ? fs::path("var") / "runs" / a.preset : fs::path(a.out);
  const fs::path cache = a.cache.empty() ? fs::path("var") / "cache" : fs::path(a.cache);
  spdlog::info("qbench train: preset {}, device {}, train {}, test {}", a.preset, device.str(), train_csv.string(),
               test_csv.string());

  const auto t0 = std::chrono::steady_clock::now();
  Tokenizer tok = Tokenizer::load(data / "gpt2");
  bool hit = false;
  TokenizedDataset train_all = load_or_tokenize(train_csv, tok, rc.max_len, cache, rc.train_limit, &hit);
  spdlog::info("train rows: {} ({}), {} truncated at {} tokens", train_all.size(), hit ? "cache hit" : "tokenized",
               train_all.truncated_rows, rc.max_len);
  TokenizedDataset test = load_or_tokenize(test_csv, tok, rc.max_len, cache, rc.test_limit, &hit);
  spdlog::info("test rows: {} ({})", test.size(), hit ? "cache hit" : "tokenized");
  TokenizedDataset train_set = train_all, validation;
  if (rc.validation_fraction > 0) {
    auto split = stratified_split(train_all.labels, rc.validation_fraction, rc.train.seed);
    train_set = select(train_all, split.train);
    validation = select(train_all, split.validation);
  }

  GPT2Classifier model(rc.model, rc.train.seed);
  if (!a.init.empty()) {
    Checkpoint ck = load_checkpoint(a.init);
    model = GPT2Classifier(ck.config, rc.train.seed);
    model->load_hf_state_dict(ck.state, ck.kind == CheckpointKind::kClassifier);
    rc.model = ck.config;
    spdlog::info("initialised from {} ({})", a.init, ck.kind == CheckpointKind::kClassifier ? "classifier" : "base model");
  } else {
    spdlog::info("random initialisation (no pretrained weights)");
  }
  if (a.resume) rc.train.state_dir = out / "train_state";
  TrainResult tr = train(model, train_set, validation, rc.train, device);
  Predictions p = predict(model, test, rc.eval_batch_size, device);
  const auto m = compute_metrics(p.labels, p.preds, static_cast<int>(rc.model.num_labels));
  const auto ci = wilson_interval(static_cast<int64_t>(std::llround(m.accuracy * static_cast<double>(m.n))), m.n);
  const double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  save_checkpoint(out / "model", rc.model, model->hf_state_dict(), {{"qbench_preset", a.preset}});
  nlohmann::json j;
  j["config"] = rc.to_json();
  j["device"] = describe_device(device);
  j["training"] = tr.to_json();
  j["test"] = {{"n", m.n},
               {"accuracy", m.accuracy},
               {"accuracy_ci95", {ci.low, ci.high}},
               {"macro_precision", m.macro_precision},
               {"macro_recall", m.macro_recall},
               {"macro_f1", m.macro_f1},
               {"eval_seconds", p.seconds},
               {"eval_samples_per_s", p.samples_per_s}};
  for (size_t c = 0; c < m.per_class.size(); ++c) j["test"]["f1_" + std::string(kClassNames[c])] = m.per_class[c].f1;
  j["test"]["confusion"] = m.confusion;
  j["wall_seconds"] = total_s;
  write_file_atomic(out / "metrics.json", j.dump(2) + "\n");
  std::cout << j.dump(2) << std::endl;
  spdlog::info("test accuracy {:.4f} [{:.4f}, {:.4f}], macro F1 {:.4f}; training {:.1f} s ({:.0f} samples/s); total {:.1f} s",
               m.accuracy, ci.low, ci.high, m.macro_f1, tr.seconds, tr.samples_per_s, total_s);
  spdlog::info("checkpoint and metrics in {}", out.string());
  return kOk;
}

CommandRegistrar reg("train", "Train and evaluate a preset directly (no job system)", [](CLI::App& sub) -> RunFn {
  auto a = std::make_shared<TrainArgs>();
  sub.add_option("--preset", a->preset, "tiny | seed")->capture_default_str();
  sub.add_option("--data", a->data, "data folder with ag_news/ and gpt2/ (default: QBENCH_DATA_DIR or ../shared/data)");
  sub.add_option("--train", a->train_csv, "train CSV (default: DATA/ag_news/train_first10429.csv)");
  sub.add_option("--test", a->test_csv, "test CSV (default: DATA/ag_news/test.csv)");
  sub.add_option("--device", a->device, "auto | cpu | cuda | cuda:N")->capture_default_str();
  sub.add_option("--out", a->out, "output folder (default var/runs/PRESET)");
  sub.add_option("--cache", a->cache, "tokenized-dataset cache folder (default var/cache)");
  sub.add_option("--init", a->init, "initialise from a Hugging Face checkpoint (folder with config.json + model.safetensors)");
  sub.add_option("--epochs", a->epochs, "override the preset's epochs");
  sub.add_option("--batch-size", a->batch_size, "override the preset's batch size");
  sub.add_option("--pad-multiple", a->pad_multiple, "round batch lengths up to a multiple of N (default 8 on CUDA, 1 on CPU)");
  sub.add_option("--lr", a->lr, "override the preset's peak learning rate");
  sub.add_option("--seed", a->seed, "override the seed");
  sub.add_option("--train-limit", a->train_limit, "use only the first N train rows");
  sub.add_option("--test-limit", a->test_limit, "use only the first N test rows");
  sub.add_option("--validation-fraction", a->validation_fraction, "hold out this fraction of train (stratified)");
  sub.add_option("--threads", a->threads, "CPU threads (libtorch's, and OpenBLAS's where it is the BLAS)");
  sub.add_flag("!--no-resume", a->resume, "ignore and overwrite a saved training state in OUT/train_state");
  return [a] { return run_train(*a); };
});

}  // namespace
}  // namespace evalsvc::cli
