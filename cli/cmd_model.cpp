// `qbench model fetch NAME [--dest DIR] [--source URL_BASE]`: downloads a GPT-2 checkpoint from the hub.
// `qbench model info PATH`: prints a checkpoint's config, kind and tensor count/bytes without loading it.
#include <chrono>
#include <iostream>
#include <memory>

#include <fmt/format.h>

#include "commands.h"
#include "evalsvc/common/error.h"
#include "evalsvc/worker/checkpoint.h"
#include "evalsvc/worker/fetch.h"

namespace evalsvc::cli {
namespace {

std::string human_bytes(uint64_t n) {
  if (n >= (1ull << 30)) return fmt::format("{:.2f} GiB", n / double(1ull << 30));
  if (n >= (1ull << 20)) return fmt::format("{:.2f} MiB", n / double(1ull << 20));
  if (n >= (1ull << 10)) return fmt::format("{:.1f} KiB", n / double(1ull << 10));
  return fmt::format("{} B", n);
}

struct FetchArgs {
  std::string model = "gpt2";
  std::string dest;
  std::string source;
  bool force = false;
  bool quiet = false;
  int attempts = 5;
};

struct InfoArgs {
  std::string path;
  bool json = false;
};

int run_fetch(const FetchArgs& a) {
  worker::FetchOptions opt;
  opt.force = a.force;
  opt.max_attempts = a.attempts;
  if (!a.quiet) {
    // Progress on stderr, at most every 2 s, so stdout keeps only the result line.
    auto last = std::make_shared<std::chrono::steady_clock::time_point>();
    opt.progress = [last](const std::string& file, uint64_t done, uint64_t total) {
      const auto now = std::chrono::steady_clock::now();
      if (now - *last < std::chrono::seconds(2)) return;
      *last = now;
      if (total > 0) {
        std::cerr << fmt::format("  {}: {} of {} ({:.1f}%)\n", file, human_bytes(done), human_bytes(total),
                                 100.0 * double(done) / double(total));
      } else {
        std::cerr << fmt::format("  {}: {}\n", file, human_bytes(done));
      }
    };
  }
  const std::string source = a.source.empty() ? worker::hub_source(a.model) : a.source;
  const std::filesystem::path dest = a.dest.empty() ? std::filesystem::path("models") / a.model : std::filesystem::path(a.dest);
  const auto r = worker::fetch_model(source, dest, opt);
  if (r.already_present) {
    std::cout << fmt::format("{}: already present and valid (use --force to download again)\n", dest.string());
  } else {
    std::cout << fmt::format("{}: downloaded {} from {}{}{}\n", dest.string(), human_bytes(r.bytes_downloaded),
                             source, r.resumed_transfers > 0 ? fmt::format(" ({} resumed)", r.resumed_transfers) : "",
                             r.sha256_verified ? ", sha256 verified" : "");
  }
  return kOk;
}

int run_info(const InfoArgs& a) {
  const auto s = worker::inspect_checkpoint(a.path);
  uint64_t params = 0;
  for (const auto& [dt, n] : s.params_by_dtype) params += static_cast<uint64_t>(n);
  if (a.json) {
    nlohmann::json j = {{"weights", s.weights_path.string()},
                        {"config_path", s.config_path.string()},
                        {"kind", worker::to_string(s.kind)},
                        {"tensors", s.tensor_count},
                        {"tensor_bytes", s.tensor_bytes},
                        {"file_bytes", s.file_bytes},
                        {"parameters", params},
                        {"parameters_by_dtype", s.params_by_dtype},
                        {"metadata", s.metadata},
                        {"config", s.config.to_json()}};
    std::cout << j.dump(2) << "\n";
    return kOk;
  }
  const auto& c = s.config;
  std::cout << fmt::format("weights      {} ({})\n", s.weights_path.string(), human_bytes(s.file_bytes));
  std::cout << fmt::format("config       {}\n", s.config_path.string());
  std::cout << fmt::format("kind         {}\n", worker::to_string(s.kind));
  std::cout << fmt::format("model        n_layer={} n_embd={} n_head={} n_inner={} n_positions={} vocab_size={} "
                           "num_labels={} pad_token_id={} layer_norm_epsilon={}\n",
                           c.n_layer, c.n_embd, c.n_head, c.inner(), c.n_positions, c.vocab_size, c.num_labels,
                           c.pad_token_id, c.layer_norm_epsilon);
  std::cout << fmt::format("tensors      {} in the file, {} of tensor data\n", s.tensor_count,
                           human_bytes(s.tensor_bytes));
  std::cout << fmt::format("parameters   {}", params);
  for (const auto& [dt, n] : s.params_by_dtype) std::cout << fmt::format("  {}: {}", dt, n);
  std::cout << "\n";
  for (const auto& [k, v] : s.metadata) std::cout << fmt::format("metadata     {} = {}\n", k, v);
  return kOk;
}

CommandRegistrar reg("model", "Fetch a GPT-2 checkpoint from the Hugging Face hub, or describe one",
                     [](CLI::App& sub) -> RunFn {
  sub.require_subcommand(1);
  auto fetch_args = std::make_shared<FetchArgs>();
  CLI::App* fetch = sub.add_subcommand(
      "fetch", "Download config.json + model.safetensors (resumable, verified) of a hub GPT-2 model");
  fetch->add_option("model", fetch_args->model, "hub model name (default gpt2)");
  fetch->add_option("--dest", fetch_args->dest, "destination folder (default models/<model>)");
  fetch->add_option("--source", fetch_args->source,
                    "URL base holding config.json and model.safetensors (default "
                    "https://huggingface.co/<model>/resolve/main/; http, https or file://)");
  fetch->add_option("--attempts", fetch_args->attempts, "transfers per file before giving up (resuming each time)")
      ->check(CLI::Range(1, 100));
  fetch->add_flag("--force", fetch_args->force, "download even when the destination already holds a valid checkpoint");
  fetch->add_flag("--quiet", fetch_args->quiet, "no progress lines");

  auto info_args = std::make_shared<InfoArgs>();
  CLI::App* info = sub.add_subcommand("info", "Print a checkpoint's config, kind and tensor count/bytes");
  info->add_option("path", info_args->path, "checkpoint folder, or a .safetensors file with config.json beside it")
      ->required();
  info->add_flag("--json", info_args->json, "print JSON");

  return [fetch, info, fetch_args, info_args]() -> int {
    if (fetch->parsed()) return run_fetch(*fetch_args);
    if (info->parsed()) return run_info(*info_args);
    return kUsage;
  };
});

}  // namespace
}  // namespace evalsvc::cli
