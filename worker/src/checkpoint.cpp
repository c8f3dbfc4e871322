#include "evalsvc/worker/checkpoint.h"

#include <algorithm>
#include <cctype>
#include <set>

#include <fmt/ranges.h>

#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/worker/safetensors.h"

namespace fs = std::filesystem;

namespace evalsvc::worker {
namespace {

constexpr const char* kPrefix = "transformer.";

bool starts_with(const std::string& s, std::string_view p) { return s.rfind(p, 0) == 0; }

std::string shape_str(c10::IntArrayRef shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

// True for h.<digits>.attn.bias / h.<digits>.attn.masked_bias (with or without the prefix): the causal
// mask buffers older transformers saved with the weights. They are constants, not parameters.
bool is_mask_buffer(const std::string& key) {
  std::string_view k = key;
  if (k.substr(0, 12) == kPrefix) k.remove_prefix(12);
  if (k.substr(0, 2) != "h.") return false;
  k.remove_prefix(2);
  size_t digits = 0;
  while (digits < k.size() && std::isdigit(static_cast<unsigned char>(k[digits]))) ++digits;
  if (digits == 0) return false;
  k.remove_prefix(digits);
  return k == ".attn.bias" || k == ".attn.masked_bias";
}

// Keys saved by GPT2Model (no prefix) that live under "transformer." in the classifier's naming.
bool is_body_key_without_prefix(const std::string& key) {
  return starts_with(key, "wte.") || starts_with(key, "wpe.") || starts_with(key, "h.") || starts_with(key, "ln_f.");
}

struct Paths {
  fs::path config, weights;
};

Paths resolve_paths(const fs::path& dir_or_file) {
  EVALSVC_CHECK(fs::exists(dir_or_file), InputError, "checkpoint '{}' does not exist", dir_or_file.string());
  Paths p;
  if (fs::is_directory(dir_or_file)) {
    p.config = dir_or_file / "config.json";
    p.weights = dir_or_file / "model.safetensors";
    if (!fs::exists(p.weights)) {
      // Name the formats we do not read, so the user knows what to convert rather than what is missing.
      if (fs::exists(dir_or_file / "model.safetensors.index.json")) {
        throw InputError(fmt::format("checkpoint '{}' is sharded (model.safetensors.index.json); qbench reads a "
                                     "single model.safetensors",
                                     dir_or_file.string()));
      }
      if (fs::exists(dir_or_file / "pytorch_model.bin")) {
        throw InputError(fmt::format("checkpoint '{}' has pytorch_model.bin (pickle) but no model.safetensors; "
                                     "convert it with transformers' save_pretrained(safe_serialization=True)",
                                     dir_or_file.string()));
      }
      throw InputError(fmt::format("checkpoint folder '{}' has no model.safetensors", dir_or_file.string()));
    }
  } else {
    p.weights = dir_or_file;
    p.config = dir_or_file.parent_path().empty() ? fs::path("config.json") : dir_or_file.parent_path() / "config.json";
  }
  EVALSVC_CHECK(fs::exists(p.config), InputError, "checkpoint '{}' has no config.json beside it (looked for '{}')",
                dir_or_file.string(), p.config.string());
  return p;
}

ModelConfig read_config(const fs::path& path) {
  const std::string text = read_file(path);
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  EVALSVC_CHECK(!j.is_discarded(), FormatError, "{}: not valid JSON", path.string());
  try {
    return ModelConfig::from_json(j);
  } catch (const FormatError& e) {
    throw FormatError(fmt::format("{}: {}", path.string(), e.what()));
  }
}

// The floating dtype most of the state is stored in, as transformers names it for config.json.
std::string torch_dtype_name(const std::map<std::string, torch::Tensor>& state) {
  std::map<torch::ScalarType, int64_t> count;
  for (const auto& [k, t] : state) count[t.scalar_type()] += t.numel();
  auto best = std::max_element(count.begin(), count.end(), [](auto& a, auto& b) { return a.second < b.second; });
  if (best == count.end()) return "float32";
  switch (best->first) {
    case torch::kFloat16: return "float16";
    case torch::kBFloat16: return "bfloat16";
    case torch::kFloat64: return "float64";
    default: return "float32";
  }
}

}  // namespace

const char* to_string(CheckpointKind kind) {
  return kind == CheckpointKind::kClassifier ? "classifier" : "base";
}

std::vector<std::pair<std::string, std::vector<int64_t>>> expected_gpt2_shapes(const ModelConfig& cfg,
                                                                                bool with_head) {
  const int64_t E = cfg.n_embd, I = cfg.inner();
  std::vector<std::pair<std::string, std::vector<int64_t>>> out;
  out.push_back({"transformer.wte.weight", {cfg.vocab_size, E}});
  out.push_back({"transformer.wpe.weight", {cfg.n_positions, E}});
  for (int64_t i = 0; i < cfg.n_layer; ++i) {
    const std::string p = fmt::format("transformer.h.{}.", i);
    out.push_back({p + "ln_1.weight", {E}});
    out.push_back({p + "ln_1.bias", {E}});
    out.push_back({p + "attn.c_attn.weight", {E, 3 * E}});
    out.push_back({p + "attn.c_attn.bias", {3 * E}});
    out.push_back({p + "attn.c_proj.weight", {E, E}});
    out.push_back({p + "attn.c_proj.bias", {E}});
    out.push_back({p + "ln_2.weight", {E}});
    out.push_back({p + "ln_2.bias", {E}});
    out.push_back({p + "mlp.c_fc.weight", {E, I}});
    out.push_back({p + "mlp.c_fc.bias", {I}});
    out.push_back({p + "mlp.c_proj.weight", {I, E}});
    out.push_back({p + "mlp.c_proj.bias", {E}});
  }
  out.push_back({"transformer.ln_f.weight", {E}});
  out.push_back({"transformer.ln_f.bias", {E}});
  if (with_head) out.push_back({"score.weight", {cfg.num_labels, E}});
  return out;
}

std::map<std::string, torch::Tensor> normalize_gpt2_state(std::map<std::string, torch::Tensor> state,
                                                          const ModelConfig& cfg, CheckpointKind* kind_out) {
  std::map<std::string, torch::Tensor> norm;
  std::vector<std::string> conflicts;
  for (auto& [key, t] : state) {
    if (key == "lm_head.weight" || is_mask_buffer(key)) continue;
    std::string k = is_body_key_without_prefix(key) ? kPrefix + key : key;
    if (!norm.emplace(k, std::move(t)).second) conflicts.push_back(key + " / " + k);
  }
  EVALSVC_CHECK(conflicts.empty(), FormatError,
                "checkpoint holds the same weight with and without the 'transformer.' prefix: {}",
                fmt::join(conflicts, ", "));

  const bool with_head = norm.count("score.weight") > 0;
  const auto expected = expected_gpt2_shapes(cfg, with_head);
  std::vector<std::string> missing;
  std::set<std::string> known;
  for (const auto& [key, shape] : expected) {
    known.insert(key);
    auto it = norm.find(key);
    if (it == norm.end()) {
      missing.push_back(key);
      continue;
    }
    const torch::Tensor& t = it->second;
    EVALSVC_CHECK(t.defined(), FormatError, "checkpoint weight '{}' is undefined", key);
    EVALSVC_CHECK(t.sizes().vec() == shape, FormatError,
                  "checkpoint weight '{}' has shape {}, expected {} for n_embd={} n_layer={} n_positions={} "
                  "vocab_size={} n_inner={} num_labels={}",
                  key, shape_str(t.sizes()), shape_str(shape), cfg.n_embd, cfg.n_layer, cfg.n_positions,
                  cfg.vocab_size, cfg.inner(), cfg.num_labels);
    EVALSVC_CHECK(t.is_floating_point(), FormatError, "checkpoint weight '{}' has dtype {}, expected a floating dtype",
                  key, c10::toString(t.scalar_type()));
  }
  if (!missing.empty()) {
    const size_t shown = std::min<size_t>(missing.size(), 8);
    throw FormatError(fmt::format("checkpoint is missing {} of {} expected weights: {}{}", missing.size(),
                                  expected.size(), fmt::join(missing.begin(), missing.begin() + shown, ", "),
                                  missing.size() > shown ? ", ..." : ""));
  }
  std::vector<std::string> extra;
  for (const auto& [key, t] : norm) {
    if (!known.count(key)) extra.push_back(key);
  }
  if (!extra.empty()) {
    const size_t shown = std::min<size_t>(extra.size(), 8);
    throw FormatError(fmt::format("checkpoint has {} unexpected weights for a GPT-2 with n_layer={}: {}{}",
                                  extra.size(), cfg.n_layer, fmt::join(extra.begin(), extra.begin() + shown, ", "),
                                  extra.size() > shown ? ", ..." : ""));
  }
  if (kind_out != nullptr) *kind_out = with_head ? CheckpointKind::kClassifier : CheckpointKind::kBaseModel;
  return norm;
}

Checkpoint load_checkpoint(const fs::path& dir_or_file) {
  const Paths p = resolve_paths(dir_or_file);
  Checkpoint ck;
  ck.config = read_config(p.config);
  SafetensorsFile f = read_safetensors(p.weights);
  ck.metadata = std::move(f.metadata);
  try {
    ck.state = normalize_gpt2_state(std::move(f.tensors), ck.config, &ck.kind);
  } catch (const FormatError& e) {
    throw FormatError(fmt::format("{} (config {}): {}", p.weights.string(), p.config.string(), e.what()));
  }
  return ck;
}

CheckpointSummary inspect_checkpoint(const fs::path& dir_or_file) {
  const Paths p = resolve_paths(dir_or_file);
  CheckpointSummary s;
  s.config_path = p.config;
  s.weights_path = p.weights;
  s.config = read_config(p.config);
  const SafetensorsHeader h = read_safetensors_header(p.weights);
  s.file_bytes = fs::file_size(p.weights);
  s.metadata = h.metadata;
  s.tensor_count = h.entries.size();
  // Validate names and shapes through the same code as a real load, with empty stand-in tensors of the
  // right shape and dtype (torch::empty with zero strides allocates nothing).
  std::map<std::string, torch::Tensor> meta;
  for (const auto& [key, e] : h.entries) {
    s.tensor_bytes += e.end - e.begin;
    meta[key] = torch::empty_strided(e.shape, std::vector<int64_t>(e.shape.size(), 0),
                                     torch::TensorOptions().dtype(*torch_dtype_of(e.dtype)));
  }
  std::map<std::string, torch::Tensor> norm;
  try {
    norm = normalize_gpt2_state(std::move(meta), s.config, &s.kind);
  } catch (const FormatError& e) {
    throw FormatError(fmt::format("{} (config {}): {}", p.weights.string(), p.config.string(), e.what()));
  }
  for (const auto& [key, t] : norm) s.params_by_dtype[*safetensors_dtype_name(t.scalar_type())] += t.numel();
  return s;
}

void save_checkpoint(const fs::path& dir, const ModelConfig& cfg, const std::map<std::string, torch::Tensor>& hf_state,
                     const std::map<std::string, std::string>& metadata) {
  CheckpointKind kind{};
  // Validation also puts every weight under its normalized name, so what is saved always loads back.
  std::map<std::string, torch::Tensor> state;
  try {
    state = normalize_gpt2_state(hf_state, cfg, &kind);
  } catch (const FormatError& e) {
    throw InputError(fmt::format("refusing to save checkpoint to '{}': {}", dir.string(), e.what()));
  }
  nlohmann::json config = cfg.to_json();
  // A body without a head is what GPT2LMHeadModel saves (its lm_head is tied to wte and not stored).
  config["architectures"] = nlohmann::json::array(
      {kind == CheckpointKind::kClassifier ? "GPT2ForSequenceClassification" : "GPT2LMHeadModel"});
  config["torch_dtype"] = torch_dtype_name(state);
  std::map<std::string, std::string> meta = metadata;
  meta["format"] = "pt";
  fs::create_directories(dir);
  write_safetensors(dir / "model.safetensors", state, meta);
  write_file_atomic(dir / "config.json", config.dump(2) + "\n");
}

}  // namespace evalsvc::worker
