// ModelConfig <-> config.json, Hugging Face key normalization, and checkpoint save/load. Every
// checkpoint here is generated in the test from a small config; no data files are needed.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/worker/checkpoint.h"
#include "evalsvc/worker/safetensors.h"

namespace fs = std::filesystem;
using namespace evalsvc;
using namespace evalsvc::worker;
using nlohmann::json;

namespace {

ModelConfig small_config() {
  ModelConfig c;
  c.vocab_size = 64;
  c.n_positions = 16;
  c.n_embd = 8;
  c.n_layer = 2;
  c.n_head = 2;
  c.num_labels = 4;
  c.pad_token_id = 63;
  return c;
}

// A state with classifier names (transformer.* + score.weight when with_head).
std::map<std::string, torch::Tensor> make_state(const ModelConfig& cfg, bool with_head, uint64_t seed = 3) {
  torch::manual_seed(seed);
  std::map<std::string, torch::Tensor> s;
  for (const auto& [k, shape] : expected_gpt2_shapes(cfg, with_head)) s[k] = torch::randn(shape);
  return s;
}

// The same body as GPT2Model.save_pretrained writes it: no prefix, plus the causal-mask buffers.
std::map<std::string, torch::Tensor> as_gpt2model_keys(const std::map<std::string, torch::Tensor>& st,
                                                       const ModelConfig& cfg) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& [k, t] : st) out[k.substr(std::string("transformer.").size())] = t;
  for (int64_t i = 0; i < cfg.n_layer; ++i) {
    out["h." + std::to_string(i) + ".attn.bias"] =
        torch::ones({1, 1, cfg.n_positions, cfg.n_positions}, torch::kBool).tril();
    out["h." + std::to_string(i) + ".attn.masked_bias"] = torch::tensor(-1e4);
  }
  return out;
}

std::string format_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const FormatError& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected a FormatError";
  return "";
}

class CheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("qbench_ck_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { evalsvc::remove_tree(dir_); }
  fs::path dir_;
};

}  // namespace

TEST(ModelConfigTest, Presets) {
  const auto g = ModelConfig::preset("gpt2");
  EXPECT_EQ(g.n_layer, 12);
  EXPECT_EQ(g.n_embd, 768);
  EXPECT_EQ(g.n_head, 12);
  EXPECT_EQ(g.n_positions, 1024);
  EXPECT_EQ(g.vocab_size, 50257);
  const auto t = ModelConfig::preset("tiny");
  EXPECT_EQ(t.n_layer, 2);
  EXPECT_EQ(t.n_embd, 128);
  EXPECT_EQ(t.n_head, 4);
  EXPECT_EQ(t.n_positions, 128);
  EXPECT_EQ(t.vocab_size, 50257);
  EXPECT_THROW(ModelConfig::preset("gpt3"), InputError);
  // SPEC section 1: 124,439,808 parameters in the body plus 3,072 in the head.
  int64_t body = 0, head = 0;
  for (const auto& [k, shape] : expected_gpt2_shapes(g, true)) {
    int64_t n = 1;
    for (auto d : shape) n *= d;
    (k == "score.weight" ? head : body) += n;
  }
  EXPECT_EQ(body, 124'439'808);
  EXPECT_EQ(head, 3'072);
}

TEST(ModelConfigTest, ToJsonIsLoadableByTransformersAndRoundTrips) {
  ModelConfig c = small_config();
  c.n_inner = 24;
  c.layer_norm_epsilon = 1e-6;
  const json j = c.to_json();
  EXPECT_EQ(j.at("model_type"), "gpt2");
  EXPECT_EQ(j.at("architectures"), json::array({"GPT2ForSequenceClassification"}));
  EXPECT_EQ(j.at("activation_function"), "gelu_new");
  EXPECT_EQ(j.at("id2label").at("0"), "World");
  EXPECT_EQ(j.at("id2label").at("3"), "Sci/Tech");
  EXPECT_EQ(j.at("label2id").at("Business"), 2);
  EXPECT_EQ(j.at("pad_token_id"), 63);
  EXPECT_EQ(j.at("n_inner"), 24);
  const ModelConfig back = ModelConfig::from_json(json::parse(j.dump()));
  EXPECT_EQ(back.vocab_size, c.vocab_size);
  EXPECT_EQ(back.n_positions, c.n_positions);
  EXPECT_EQ(back.n_embd, c.n_embd);
  EXPECT_EQ(back.n_layer, c.n_layer);
  EXPECT_EQ(back.n_head, c.n_head);
  EXPECT_EQ(back.n_inner, 24);
  EXPECT_EQ(back.num_labels, 4);
  EXPECT_EQ(back.pad_token_id, 63);
  EXPECT_DOUBLE_EQ(back.layer_norm_epsilon, 1e-6);
  EXPECT_TRUE(ModelConfig::preset("gpt2").to_json().at("n_inner").is_null());
  ModelConfig two = small_config();
  two.num_labels = 2;
  EXPECT_EQ(two.to_json().at("id2label").at("1"), "LABEL_1");
}

TEST(ModelConfigTest, ReadsTheHubGpt2Config) {
  // config.json of the hub model gpt2 (GPT2LMHeadModel): no pad token, no labels, n_ctx alongside n_positions.
  const json hub = json::parse(R"({
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
    "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
    "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": null,
    "summary_first_dropout": 0.1, "summary_proj_to_labels": true, "summary_type": "cls_index",
    "summary_use_proj": true, "task_specific_params": {"text-generation": {"do_sample": true, "max_length": 50}},
    "vocab_size": 50257})");
  const ModelConfig c = ModelConfig::from_json(hub);
  EXPECT_EQ(c.n_embd, 768);
  EXPECT_EQ(c.n_layer, 12);
  EXPECT_EQ(c.n_inner, 0);
  EXPECT_EQ(c.inner(), 3072);
  EXPECT_EQ(c.pad_token_id, 50256);  // eos, as GPT-2 classifiers pad with <|endoftext|>
  EXPECT_EQ(c.num_labels, 4);        // qbench's default when the file names no labels
  EXPECT_DOUBLE_EQ(c.layer_norm_epsilon, 1e-5);
}

TEST(ModelConfigTest, FromJsonErrorsNameTheField) {
  const json base = small_config().to_json();
  auto with = [&](const std::string& field, const json& v) {
    json j = base;
    j[field] = v;
    return j;
  };
  auto msg = [](const json& j) { return format_error_of([&] { ModelConfig::from_json(j); }); };
  EXPECT_NE(msg(with("n_embd", "8")).find("'n_embd'"), std::string::npos);
  EXPECT_NE(msg(with("n_layer", 2.5)).find("'n_layer'"), std::string::npos);
  EXPECT_NE(msg(with("layer_norm_epsilon", "1e-5")).find("'layer_norm_epsilon'"), std::string::npos);
  EXPECT_NE(msg(with("pad_token_id", true)).find("'pad_token_id'"), std::string::npos);
  EXPECT_NE(msg(with("n_head", 3)).find("not divisible by n_head 3"), std::string::npos);
  EXPECT_NE(msg(with("n_layer", 0)).find("'n_layer' must be positive"), std::string::npos);
  EXPECT_NE(msg(with("pad_token_id", 64)).find("pad_token_id 64"), std::string::npos);
  EXPECT_NE(msg(with("activation_function", "relu")).find("activation_function"), std::string::npos);
  EXPECT_NE(msg(with("model_type", "llama")).find("model_type"), std::string::npos);
  EXPECT_NE(msg(with("num_labels", 3)).find("disagrees with id2label"), std::string::npos);
  EXPECT_NE(msg(with("id2label", json{{"0", "a"}, {"5", "b"}})).find("id2label key '5'"), std::string::npos);
  EXPECT_NE(msg(with("id2label", json{{"0", 1}})).find("id2label[0]"), std::string::npos);
  EXPECT_NE(msg(json::array()).find("JSON object"), std::string::npos);
  EXPECT_EQ(ModelConfig::from_json(with("n_inner", nullptr)).n_inner, 0);
  json three = base;
  three.erase("num_labels");
  three["id2label"] = {{"0", "a"}, {"1", "b"}, {"2", "c"}};
  EXPECT_EQ(ModelConfig::from_json(three).num_labels, 3);
  json bare = base;
  bare.erase("id2label");
  bare["num_labels"] = 2;
  EXPECT_EQ(ModelConfig::from_json(bare).num_labels, 2);
}

TEST(NormalizeTest, Gpt2ModelAndLmHeadKeysLoadAsBaseModel) {
  const ModelConfig cfg = small_config();
  const auto body = make_state(cfg, /*with_head=*/false);

  CheckpointKind kind = CheckpointKind::kClassifier;
  auto norm = normalize_gpt2_state(as_gpt2model_keys(body, cfg), cfg, &kind);
  EXPECT_EQ(kind, CheckpointKind::kBaseModel);
  ASSERT_EQ(norm.size(), body.size());
  for (const auto& [k, t] : body) EXPECT_TRUE(torch::equal(norm.at(k), t)) << k;

  auto lm = body;  // GPT2LMHeadModel: prefixed body plus the tied lm_head and the mask buffers
  lm["lm_head.weight"] = body.at("transformer.wte.weight");
  lm["transformer.h.0.attn.bias"] = torch::ones({1, 1, 16, 16});
  lm["transformer.h.1.attn.masked_bias"] = torch::tensor(-1e4);
  kind = CheckpointKind::kClassifier;
  norm = normalize_gpt2_state(lm, cfg, &kind);
  EXPECT_EQ(kind, CheckpointKind::kBaseModel);
  EXPECT_EQ(norm.size(), body.size());
  EXPECT_EQ(norm.count("lm_head.weight"), 0u);

  kind = CheckpointKind::kBaseModel;
  norm = normalize_gpt2_state(make_state(cfg, true), cfg, &kind);
  EXPECT_EQ(kind, CheckpointKind::kClassifier);
  EXPECT_EQ(norm.count("score.weight"), 1u);
  EXPECT_NO_THROW(normalize_gpt2_state(make_state(cfg, true), cfg, nullptr));
}

TEST(NormalizeTest, MissingWrongShapeWrongDtypeExtraAndConflictingKeys) {
  const ModelConfig cfg = small_config();
  auto st = make_state(cfg, true);

  auto missing = st;
  missing.erase("transformer.h.1.mlp.c_fc.bias");
  std::string m = format_error_of([&] { normalize_gpt2_state(missing, cfg, nullptr); });
  EXPECT_NE(m.find("missing 1 of"), std::string::npos) << m;
  EXPECT_NE(m.find("transformer.h.1.mlp.c_fc.bias"), std::string::npos) << m;

  auto shape = st;
  shape["transformer.h.0.attn.c_attn.weight"] = torch::randn({24, 8});  // nn.Linear layout, not Conv1D
  m = format_error_of([&] { normalize_gpt2_state(shape, cfg, nullptr); });
  EXPECT_NE(m.find("'transformer.h.0.attn.c_attn.weight' has shape [24, 8], expected [8, 24]"), std::string::npos)
      << m;

  auto head = st;
  head["score.weight"] = torch::randn({3, 8});
  m = format_error_of([&] { normalize_gpt2_state(head, cfg, nullptr); });
  EXPECT_NE(m.find("'score.weight' has shape [3, 8], expected [4, 8]"), std::string::npos) << m;

  auto dtype = st;
  dtype["transformer.ln_f.bias"] = torch::zeros({8}, torch::kInt64);
  m = format_error_of([&] { normalize_gpt2_state(dtype, cfg, nullptr); });
  EXPECT_NE(m.find("'transformer.ln_f.bias' has dtype Long, expected a floating dtype"), std::string::npos) << m;

  auto extra = st;
  extra["transformer.h.2.ln_1.weight"] = torch::ones({8});
  extra["score.bias"] = torch::zeros({4});
  m = format_error_of([&] { normalize_gpt2_state(extra, cfg, nullptr); });
  EXPECT_NE(m.find("2 unexpected weights"), std::string::npos) << m;
  EXPECT_NE(m.find("score.bias"), std::string::npos) << m;
  EXPECT_NE(m.find("transformer.h.2.ln_1.weight"), std::string::npos) << m;

  auto both = st;
  both["wte.weight"] = st.at("transformer.wte.weight");
  m = format_error_of([&] { normalize_gpt2_state(both, cfg, nullptr); });
  EXPECT_NE(m.find("wte.weight / transformer.wte.weight"), std::string::npos) << m;

  // Half-precision checkpoints are fine: any floating dtype is accepted.
  auto half = st;
  for (auto& [k, t] : half) t = t.to(torch::kBFloat16);
  EXPECT_NO_THROW(normalize_gpt2_state(half, cfg, nullptr));
}

TEST_F(CheckpointTest, ClassifierRoundTrip) {
  ModelConfig cfg = small_config();
  cfg.n_inner = 12;  // exercise a non-default MLP width end to end
  const auto st = make_state(cfg, true);
  save_checkpoint(dir_ / "ck", cfg, st, {{"trained_by", "qbench test"}});
  const json written = json::parse(read_file(dir_ / "ck" / "config.json"));
  EXPECT_EQ(written.at("architectures"), json::array({"GPT2ForSequenceClassification"}));
  EXPECT_EQ(written.at("torch_dtype"), "float32");

  for (const fs::path& p : {dir_ / "ck", dir_ / "ck" / "model.safetensors"}) {
    const Checkpoint ck = load_checkpoint(p);
    EXPECT_EQ(ck.kind, CheckpointKind::kClassifier);
    EXPECT_EQ(ck.config.n_inner, 12);
    EXPECT_EQ(ck.config.n_embd, cfg.n_embd);
    EXPECT_EQ(ck.metadata.at("format"), "pt");
    EXPECT_EQ(ck.metadata.at("trained_by"), "qbench test");
    ASSERT_EQ(ck.state.size(), st.size());
    for (const auto& [k, t] : st) EXPECT_TRUE(torch::equal(ck.state.at(k), t)) << k;
  }
  const CheckpointSummary s = inspect_checkpoint(dir_ / "ck");
  EXPECT_EQ(s.kind, CheckpointKind::kClassifier);
  EXPECT_EQ(s.tensor_count, st.size());
  int64_t params = 0;
  for (const auto& [k, t] : st) params += t.numel();
  EXPECT_EQ(s.tensor_bytes, static_cast<uint64_t>(params) * 4);
  EXPECT_EQ(s.params_by_dtype.at("F32"), static_cast<uint64_t>(params));
}

TEST_F(CheckpointTest, BaseModelsLoadFromDiskInBothKeyStyles) {
  const ModelConfig cfg = small_config();
  const auto body = make_state(cfg, false);
  // As GPT2Model.save_pretrained writes it (hub gpt2): no prefix, mask buffers included.
  fs::create_directories(dir_ / "gpt2model");
  write_safetensors(dir_ / "gpt2model" / "model.safetensors", as_gpt2model_keys(body, cfg), {{"format", "pt"}});
  json hub_cfg = cfg.to_json();
  hub_cfg["architectures"] = json::array({"GPT2Model"});
  hub_cfg.erase("id2label");
  hub_cfg.erase("label2id");
  hub_cfg.erase("num_labels");
  write_file_atomic(dir_ / "gpt2model" / "config.json", hub_cfg.dump());
  Checkpoint ck = load_checkpoint(dir_ / "gpt2model");
  EXPECT_EQ(ck.kind, CheckpointKind::kBaseModel);
  EXPECT_EQ(ck.state.size(), body.size());
  EXPECT_TRUE(torch::equal(ck.state.at("transformer.h.1.mlp.c_proj.weight"), body.at("transformer.h.1.mlp.c_proj.weight")));
  EXPECT_EQ(inspect_checkpoint(dir_ / "gpt2model").tensor_count, body.size() + 2 * cfg.n_layer);

  // save_checkpoint of a body writes a GPT2LMHeadModel in bf16, which loads back bit-exact.
  auto bf = body;
  for (auto& [k, t] : bf) t = t.to(torch::kBFloat16);
  save_checkpoint(dir_ / "lm", cfg, bf);
  const json written = json::parse(read_file(dir_ / "lm" / "config.json"));
  EXPECT_EQ(written.at("architectures"), json::array({"GPT2LMHeadModel"}));
  EXPECT_EQ(written.at("torch_dtype"), "bfloat16");
  ck = load_checkpoint(dir_ / "lm");
  EXPECT_EQ(ck.kind, CheckpointKind::kBaseModel);
  EXPECT_EQ(ck.state.at("transformer.wte.weight").scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(ck.state.at("transformer.wte.weight"), bf.at("transformer.wte.weight")));
}

TEST_F(CheckpointTest, LoadErrorsNameTheFile) {
  const ModelConfig cfg = small_config();
  EXPECT_THROW(load_checkpoint(dir_ / "absent"), InputError);
  fs::create_directories(dir_ / "empty");
  EXPECT_THROW(load_checkpoint(dir_ / "empty"), InputError);
  write_file_atomic(dir_ / "bin" / "pytorch_model.bin", "x");
  try {
    load_checkpoint(dir_ / "bin");
    ADD_FAILURE() << "pytorch_model.bin must be refused";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("pytorch_model.bin"), std::string::npos) << e.what();
  }

  save_checkpoint(dir_ / "ck", cfg, make_state(cfg, true));
  write_file_atomic(dir_ / "ck" / "config.json", "{\"n_embd\": ");
  std::string m = format_error_of([&] { load_checkpoint(dir_ / "ck"); });
  EXPECT_NE(m.find("config.json"), std::string::npos) << m;

  // A config that disagrees with the weights: the message names the file, the key and both shapes.
  ModelConfig wider = cfg;
  wider.n_embd = 16;
  write_file_atomic(dir_ / "ck" / "config.json", wider.to_json().dump());
  m = format_error_of([&] { load_checkpoint(dir_ / "ck"); });
  EXPECT_NE(m.find("model.safetensors"), std::string::npos) << m;
  EXPECT_NE(m.find("'transformer.wte.weight' has shape [64, 8], expected [64, 16]"), std::string::npos)
      << m;
  EXPECT_THROW(inspect_checkpoint(dir_ / "ck"), FormatError);

  // A torn weights file: FormatError naming it.
  write_file_atomic(dir_ / "ck" / "config.json", cfg.to_json().dump());
  const std::string bytes = read_file(dir_ / "ck" / "model.safetensors");
  write_file_atomic(dir_ / "ck" / "model.safetensors", bytes.substr(0, bytes.size() / 2));
  m = format_error_of([&] { load_checkpoint(dir_ / "ck"); });
  EXPECT_NE(m.find("model.safetensors"), std::string::npos) << m;

  // save_checkpoint refuses a state that would not load back, and writes nothing.
  auto bad = make_state(cfg, true);
  bad.erase("transformer.wpe.weight");
  EXPECT_THROW(save_checkpoint(dir_ / "never", cfg, bad), InputError);
  EXPECT_FALSE(fs::exists(dir_ / "never" / "model.safetensors"));
}
