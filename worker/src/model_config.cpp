// ModelConfig <-> Hugging Face GPT2Config (config.json), and the named presets.
#include <string>
#include <vector>

#include "evalsvc/common/error.h"
#include "evalsvc/worker/gpt2.h"

namespace evalsvc::worker {
namespace {

// AG News class names in label order (SPEC section 1: classes 1..4 -> labels 0..3).
const std::vector<std::string>& ag_news_labels() {
  static const std::vector<std::string> names = {"World", "Sports", "Business", "Sci/Tech"};
  return names;
}

std::string label_name(int64_t i, int64_t num_labels) {
  if (num_labels == static_cast<int64_t>(ag_news_labels().size())) return ag_news_labels()[static_cast<size_t>(i)];
  return "LABEL_" + std::to_string(i);  // what transformers names labels it was not told about
}

// Integer field: absent keeps the default; JSON null only where `null_ok` (n_inner); floats such as 768.0
// are refused because transformers itself would fail on them later with a far worse message.
void read_int(const nlohmann::json& j, const char* field, int64_t& out, bool null_ok = false) {
  auto it = j.find(field);
  if (it == j.end()) return;
  if (it->is_null() && null_ok) {
    out = 0;
    return;
  }
  EVALSVC_CHECK(it->is_number_integer(), FormatError, "config.json: field '{}' must be an integer, got {} ({})",
                field, it->type_name(), it->dump());
  out = it->get<int64_t>();
}

void read_double(const nlohmann::json& j, const char* field, double& out) {
  auto it = j.find(field);
  if (it == j.end()) return;
  EVALSVC_CHECK(it->is_number(), FormatError, "config.json: field '{}' must be a number, got {} ({})", field,
                it->type_name(), it->dump());
  out = it->get<double>();
}

// Options that change GPT-2's arithmetic in ways qbench's model does not implement: accepting them
// silently would evaluate a different network than the checkpoint describes.
void check_supported_variant(const nlohmann::json& j) {
  if (auto it = j.find("model_type"); it != j.end()) {
    EVALSVC_CHECK(it->is_string() && it->get<std::string>() == "gpt2", FormatError,
                  "config.json: model_type must be \"gpt2\", got {}", it->dump());
  }
  if (auto it = j.find("activation_function"); it != j.end() && !it->is_null()) {
    const bool ok = it->is_string() && (it->get<std::string>() == "gelu_new" ||
                                        it->get<std::string>() == "gelu_pytorch_tanh");
    EVALSVC_CHECK(ok, FormatError,
                  "config.json: activation_function {} is not supported (qbench's GPT-2 uses the tanh GELU, "
                  "\"gelu_new\")",
                  it->dump());
  }
  if (auto it = j.find("scale_attn_weights"); it != j.end()) {
    EVALSVC_CHECK(it->is_boolean(), FormatError, "config.json: field 'scale_attn_weights' must be a boolean, got {}",
                  it->dump());
    EVALSVC_CHECK(it->get<bool>(), FormatError, "config.json: scale_attn_weights=false is not supported");
  }
  if (auto it = j.find("scale_attn_by_inverse_layer_idx"); it != j.end()) {
    EVALSVC_CHECK(it->is_boolean(), FormatError,
                  "config.json: field 'scale_attn_by_inverse_layer_idx' must be a boolean, got {}", it->dump());
    EVALSVC_CHECK(!it->get<bool>(), FormatError, "config.json: scale_attn_by_inverse_layer_idx=true is not supported");
  }
}

void validate(const ModelConfig& c) {
  auto positive = [](const char* field, int64_t v) {
    EVALSVC_CHECK(v > 0, FormatError, "config.json: field '{}' must be positive, got {}", field, v);
  };
  positive("vocab_size", c.vocab_size);
  positive("n_positions", c.n_positions);
  positive("n_embd", c.n_embd);
  positive("n_layer", c.n_layer);
  positive("n_head", c.n_head);
  positive("num_labels", c.num_labels);
  EVALSVC_CHECK(c.n_inner >= 0, FormatError, "config.json: field 'n_inner' must be null or positive, got {}",
                c.n_inner);
  EVALSVC_CHECK(c.n_embd % c.n_head == 0, FormatError,
                "config.json: n_embd {} is not divisible by n_head {} (each head needs n_embd / n_head dims)",
                c.n_embd, c.n_head);
  EVALSVC_CHECK(c.layer_norm_epsilon > 0, FormatError, "config.json: layer_norm_epsilon must be > 0, got {}",
                c.layer_norm_epsilon);
  for (auto [field, p] : {std::pair{"resid_pdrop", c.resid_pdrop}, std::pair{"embd_pdrop", c.embd_pdrop},
                          std::pair{"attn_pdrop", c.attn_pdrop}}) {
    EVALSVC_CHECK(p >= 0 && p < 1, FormatError, "config.json: {} must be in [0, 1), got {}", field, p);
  }
  EVALSVC_CHECK(c.initializer_range >= 0, FormatError, "config.json: initializer_range must be >= 0, got {}",
                c.initializer_range);
  EVALSVC_CHECK(c.pad_token_id >= 0 && c.pad_token_id < c.vocab_size, FormatError,
                "config.json: pad_token_id {} is outside the vocabulary [0, {})", c.pad_token_id, c.vocab_size);
}

}  // namespace

ModelConfig ModelConfig::preset(const std::string& name) {
  ModelConfig c;  // the defaults are GPT-2 Small (124M)
  if (name == "gpt2") return c;
  if (name == "tiny") {
    c.n_layer = 2;
    c.n_embd = 128;
    c.n_head = 4;
    c.n_positions = 128;
    return c;
  }
  throw InputError(fmt::format("unknown model preset '{}' (known: gpt2, tiny)", name));
}

ModelConfig ModelConfig::from_json(const nlohmann::json& j) {
  EVALSVC_CHECK(j.is_object(), FormatError, "config.json must be a JSON object, got {}", j.type_name());
  check_supported_variant(j);
  ModelConfig c;
  read_int(j, "vocab_size", c.vocab_size);
  // Old configs carry the context length as n_ctx only; n_positions wins when both are there.
  read_int(j, "n_ctx", c.n_positions);
  read_int(j, "n_positions", c.n_positions);
  read_int(j, "n_embd", c.n_embd);
  read_int(j, "n_layer", c.n_layer);
  read_int(j, "n_head", c.n_head);
  read_int(j, "n_inner", c.n_inner, /*null_ok=*/true);
  read_double(j, "layer_norm_epsilon", c.layer_norm_epsilon);
  read_double(j, "resid_pdrop", c.resid_pdrop);
  read_double(j, "embd_pdrop", c.embd_pdrop);
  read_double(j, "attn_pdrop", c.attn_pdrop);
  read_double(j, "initializer_range", c.initializer_range);

  // transformers derives num_labels from id2label when it is there (that is what save_pretrained writes);
  // a bare num_labels also counts. Without either, qbench's default (4, AG News) stays.
  std::optional<int64_t> from_map;
  if (auto it = j.find("id2label"); it != j.end() && !it->is_null()) {
    EVALSVC_CHECK(it->is_object() && !it->empty(), FormatError,
                  "config.json: field 'id2label' must be a non-empty object, got {}", it->dump());
    std::vector<bool> seen(it->size(), false);
    for (const auto& [k, v] : it->items()) {
      size_t pos = 0;
      long long id = -1;
      try {
        id = std::stoll(k, &pos);
      } catch (const std::exception&) {
        pos = 0;
      }
      EVALSVC_CHECK(pos == k.size() && id >= 0 && id < static_cast<long long>(seen.size()) && !seen[id],
                    FormatError, "config.json: id2label key '{}' is not a distinct label id in [0, {})", k,
                    seen.size());
      EVALSVC_CHECK(v.is_string(), FormatError, "config.json: id2label[{}] must be a string, got {}", k, v.dump());
      seen[static_cast<size_t>(id)] = true;
    }
    from_map = static_cast<int64_t>(it->size());
    c.num_labels = *from_map;
  }
  if (j.contains("num_labels")) {
    int64_t n = 0;
    read_int(j, "num_labels", n);
    EVALSVC_CHECK(!from_map || *from_map == n, FormatError,
                  "config.json: num_labels {} disagrees with id2label, which has {} entries", n, *from_map);
    c.num_labels = n;
  }

  // GPT-2 has no pad token; classifiers pad with <|endoftext|>, which is eos_token_id and the last id.
  if (auto it = j.find("pad_token_id"); it != j.end() && !it->is_null()) {
    read_int(j, "pad_token_id", c.pad_token_id);
  } else if (auto eos = j.find("eos_token_id"); eos != j.end() && !eos->is_null()) {
    read_int(j, "eos_token_id", c.pad_token_id);
  } else {
    c.pad_token_id = c.vocab_size - 1;
  }
  validate(c);
  return c;
}

nlohmann::json ModelConfig::to_json() const {
  validate(*this);
  nlohmann::json id2label = nlohmann::json::object(), label2id = nlohmann::json::object();
  for (int64_t i = 0; i < num_labels; ++i) {
    const std::string name = label_name(i, num_labels);
    id2label[std::to_string(i)] = name;
    label2id[name] = i;
  }
  // Everything GPT2Config.__init__ takes, so that transformers reproduces this exact model with
  // GPT2ForSequenceClassification.from_pretrained(dir) and does not fall back to its own defaults.
  return {
      {"model_type", "gpt2"},
      {"architectures", nlohmann::json::array({"GPT2ForSequenceClassification"})},
      {"vocab_size", vocab_size},
      {"n_positions", n_positions},
      {"n_ctx", n_positions},
      {"n_embd", n_embd},
      {"n_layer", n_layer},
      {"n_head", n_head},
      {"n_inner", n_inner > 0 ? nlohmann::json(n_inner) : nlohmann::json(nullptr)},
      {"activation_function", "gelu_new"},
      {"resid_pdrop", resid_pdrop},
      {"embd_pdrop", embd_pdrop},
      {"attn_pdrop", attn_pdrop},
      {"layer_norm_epsilon", layer_norm_epsilon},
      {"initializer_range", initializer_range},
      {"scale_attn_weights", true},
      {"scale_attn_by_inverse_layer_idx", false},
      {"reorder_and_upcast_attn", false},
      {"use_cache", true},
      {"summary_type", "cls_index"},
      {"summary_use_proj", true},
      {"summary_activation", nullptr},
      {"summary_proj_to_labels", true},
      {"summary_first_dropout", 0.1},
      {"bos_token_id", vocab_size - 1},
      {"eos_token_id", vocab_size - 1},
      {"pad_token_id", pad_token_id},
      {"num_labels", num_labels},
      {"id2label", id2label},
      {"label2id", label2id},
      {"problem_type", "single_label_classification"},
  };
}

}  // namespace evalsvc::worker
