// Experiment spec: parsing, validation with JSON-path messages, presets, overrides, normalized JSON.
// The rules are documented for users in docs/spec.md; keep the two in step.
#include "evalsvc/common/experiment_spec.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <initializer_list>
#include <limits>
#include <map>
#include <set>

#include "evalsvc/common/error.h"

namespace evalsvc {

using nlohmann::json;

namespace {

// Limits that keep a spec from describing absurd or unrepresentable work. The shard cap bounds the job graph
// (variants x shards eval jobs); the variant cap keeps the graph (and the report) readable.
constexpr int64_t kMaxShards = 1024;
constexpr size_t kMaxVariants = 64;
constexpr int64_t kMaxBatch = int64_t{1} << 20;
constexpr int64_t kMaxEpochs = 10000;
constexpr int64_t kMaxAttempts = 100;
constexpr int64_t kMaxBenchRuns = 1'000'000;
constexpr int64_t kMaxLenLimit = 1024;  // the largest context of any known model config
constexpr size_t kMaxNameLength = 64;

/// What a method accepts. One table, so the method list lives in one place (SPEC section 2).
struct MethodInfo {
  const char* name;
  const char* default_base;  // base dtype when the spec names none
  const char* fixed_base;    // plain methods run entirely in their own dtype; nullptr = any base dtype
  bool cuda_only;
  std::vector<const char*> options;  // the VariantOptions fields the method reads
};

const std::vector<MethodInfo>& method_table() {
  static const std::vector<MethodInfo> table = {
      {"fp32", "fp32", "fp32", false, {}},
      {"fp16", "fp16", "fp16", false, {}},
      {"bf16", "bf16", "bf16", false, {}},
      {"int8-sym", "fp32", nullptr, false, {}},
      {"int8-sym-channel", "fp16", nullptr, false, {}},
      {"int8-w8a8", "fp16", nullptr, false, {}},
      {"llm-int8", "fp16", nullptr, false, {"outlier_threshold"}},
      {"nf4", "fp16", nullptr, false, {"double_quant", "block_size"}},
      {"fp8-e4m3", "bf16", nullptr, true, {}},  // bf16: what the rowwise fp8 product emits
  };
  return table;
}

const MethodInfo* find_method(std::string_view name) {
  for (const auto& m : method_table()) {
    if (name == m.name) return &m;
  }
  return nullptr;
}

const std::vector<std::string> kBaseDtypes = {"fp32", "fp16", "bf16"};
const std::vector<std::string> kModelConfigs = {"tiny", "gpt2"};
const std::vector<std::string> kDevices = {"cpu", "cuda"};

template <typename Range>
std::string join_names(const Range& names) {
  std::string out;
  for (const auto& n : names) {
    if (!out.empty()) out += ", ";
    out += n;
  }
  return out;
}

/// "string \"abc\"", "number 3.5", "array", ... for messages; long values are cut so a message stays a line.
std::string describe(const json& v) {
  if (v.is_object()) return "object";
  if (v.is_array()) return "array";
  if (v.is_null()) return "null";
  // replace: a string with invalid UTF-8 must still make a message, not a second exception.
  std::string text = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  const char* type = v.is_string() ? "string" : v.is_boolean() ? "boolean" : "number";
  return fmt::format("{} {}", type, text);
}

std::string child(const std::string& path, std::string_view key) {
  return path.empty() ? std::string(key) : fmt::format("{}.{}", path, key);
}
std::string element(const std::string& path, size_t index) { return fmt::format("{}[{}]", path, index); }

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw InputError(fmt::format("{}: {}", path.empty() ? "spec" : path, what));
}

/// Rejects any field of `obj` not in `allowed`, so a typo ("epoch") is never silently ignored.
void check_fields(const json& obj, const std::string& path, std::initializer_list<const char*> allowed) {
  if (!obj.is_object()) fail(path, "expected an object, got " + describe(obj));
  for (const auto& item : obj.items()) {
    const bool known = std::any_of(allowed.begin(), allowed.end(), [&](const char* a) { return item.key() == a; });
    if (!known) fail(child(path, item.key()), fmt::format("unknown field (expected one of {})", join_names(allowed)));
  }
}

int64_t to_int(const json& v, const std::string& path, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) fail(path, "expected an integer, got " + describe(v));
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    fail(path, fmt::format("must be in [{}, {}], got {}", lo, hi, v.dump()));
  }
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) fail(path, fmt::format("must be in [{}, {}], got {}", lo, hi, x));
  return x;
}

/// `ok` says whether a finite value is in range; `range` describes the range for the message.
double to_double(const json& v, const std::string& path, const std::function<bool(double)>& ok, const char* range) {
  if (!v.is_number()) fail(path, "expected a number, got " + describe(v));
  const double x = v.get<double>();
  if (!std::isfinite(x) || !ok(x)) fail(path, fmt::format("must be {}, got {}", range, v.dump()));
  return x;
}

bool to_bool(const json& v, const std::string& path) {
  if (!v.is_boolean()) fail(path, "expected true or false, got " + describe(v));
  return v.get<bool>();
}

std::string to_string_value(const json& v, const std::string& path) {
  if (!v.is_string()) fail(path, "expected a string, got " + describe(v));
  // A stored spec is serialized again (PostgreSQL jsonb, queue payloads); strict dump() rejects bad UTF-8.
  try {
    (void)v.dump();
  } catch (const json::exception&) {
    fail(path, "is not valid UTF-8");
  }
  return v.get<std::string>();
}

std::string to_choice(const json& v, const std::string& path, const std::vector<std::string>& choices,
                      const char* what) {
  std::string s = to_string_value(v, path);
  if (std::find(choices.begin(), choices.end(), s) == choices.end()) {
    fail(path, fmt::format("unknown {} '{}' (expected one of {})", what, s, join_names(choices)));
  }
  return s;
}

/// null or a non-empty path string.
std::optional<std::string> to_optional_path(const json& v, const std::string& path) {
  if (v.is_null()) return std::nullopt;
  if (!v.is_string()) fail(path, "expected null or a path string, got " + describe(v));
  std::string s = v.get<std::string>();
  if (s.empty()) fail(path, "must be null or a non-empty path, got an empty string");
  return to_string_value(v, path);
}

bool valid_name(std::string_view s) {
  if (s.empty() || s.size() > kMaxNameLength) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
           c == '-';
  });
}

std::string to_name(const json& v, const std::string& path) {
  std::string s = to_string_value(v, path);
  if (!valid_name(s)) {
    fail(path, fmt::format("'{}' is not a valid name ([A-Za-z0-9_.-], 1 to {} characters)", s, kMaxNameLength));
  }
  return s;
}

/// Calls `read` with the value and path of `obj[key]` when the field is present.
void field(const json& obj, const std::string& path, const char* key,
           const std::function<void(const json&, const std::string&)>& read) {
  auto it = obj.find(key);
  if (it != obj.end()) read(*it, child(path, key));
}

VariantSpec variant_from_method(const std::string& method) {
  const MethodInfo* info = find_method(method);
  EVALSVC_ASSERT(info != nullptr, "variant_from_method: unknown method '{}'", method);
  return VariantSpec{method, method, info->default_base, VariantOptions{}};
}

std::vector<VariantSpec> variants_from_methods(std::initializer_list<const char*> methods) {
  std::vector<VariantSpec> out;
  for (const char* m : methods) out.push_back(variant_from_method(m));
  return out;
}

/// A preset's complete spec, except for the name.
std::optional<ExperimentSpec> preset_defaults(std::string_view preset) {
  ExperimentSpec s;
  if (preset == "tiny") {
    // Sized for a 2-core CPU: the 2-layer model trains in minutes; every method with a CPU path is compared.
    s.model.config = "tiny";
    s.train.epochs = 3;
    s.train.batch_size = 32;
    s.train.lr = 1e-3;
    s.variants =
        variants_from_methods({"fp32", "fp16", "bf16", "int8-sym", "int8-sym-channel", "int8-w8a8", "llm-int8", "nf4"});
    s.device = "cpu";
    s.eval.shards = 4;
    s.bench.batch_sizes = {1, 8, 32};
    s.bench.warmup = 3;
    s.bench.iters = 20;
    s.bench.test_set_rows = 1000;  // the whole test set would add ~15 s per variant on 2 cores
  } else if (preset == "seed") {
    // The reference report's setting (GPT-2 Small, 10 epochs, max length 128) plus the methods beyond it.
    s.model.config = "gpt2";
    s.train.epochs = 10;
    s.train.batch_size = 64;
    s.train.lr = 2e-4;
    s.variants =
        variants_from_methods({"fp32", "fp16", "bf16", "int8-sym", "int8-w8a8", "llm-int8", "nf4", "fp8-e4m3"});
    s.device = "cuda";
    s.eval.shards = 8;
    s.bench.batch_sizes = {1, 8, 32, 128, 512};
    s.bench.warmup = 20;
    s.bench.iters = 200;
  } else {
    return std::nullopt;
  }
  s.preset = std::string(preset);
  return s;
}

int64_t context_of(const std::string& config) { return config == "tiny" ? 128 : 1024; }

/// One variant, in string or object form. `method_path` receives where the method was named, so later
/// cross-field checks (device) point at it.
VariantSpec parse_variant(const json& v, const std::string& path, std::string& method_path) {
  if (v.is_string()) {
    method_path = path;
    const std::string method = v.get<std::string>();
    if (!find_method(method)) {
      fail(path, fmt::format("unknown method '{}' (expected one of {})", method, join_names(known_methods())));
    }
    // A bare method is also the variant's name, so it must be usable as one.
    if (!valid_name(method)) fail(path, fmt::format("'{}' is not a valid variant name", method));
    return variant_from_method(method);
  }
  if (!v.is_object())
    fail(path, "expected a method name or an object {name, method, base_dtype, options}, got " + describe(v));
  check_fields(v, path, {"name", "method", "base_dtype", "options"});
  method_path = child(path, "method");
  auto mit = v.find("method");
  if (mit == v.end()) fail(method_path, "required");
  const std::string method = to_string_value(*mit, method_path);
  const MethodInfo* info = find_method(method);
  if (!info) {
    fail(method_path, fmt::format("unknown method '{}' (expected one of {})", method, join_names(known_methods())));
  }
  VariantSpec out = variant_from_method(method);
  field(v, path, "name", [&](const json& x, const std::string& p) { out.name = to_name(x, p); });
  field(v, path, "base_dtype", [&](const json& x, const std::string& p) {
    out.base_dtype = to_choice(x, p, kBaseDtypes, "base dtype");
    if (info->fixed_base && out.base_dtype != info->fixed_base) {
      fail(p, fmt::format("method '{}' runs entirely in {}, so base_dtype '{}' is not possible (leave it out or "
                          "use '{}')",
                          method, info->fixed_base, out.base_dtype, info->fixed_base));
    }
  });
  field(v, path, "options", [&](const json& opts, const std::string& p) {
    if (!opts.is_object()) fail(p, "expected an object, got " + describe(opts));
    for (const auto& item : opts.items()) {
      const bool takes =
          std::any_of(info->options.begin(), info->options.end(), [&](const char* o) { return item.key() == o; });
      if (!takes) {
        fail(child(p, item.key()),
             info->options.empty()
                 ? fmt::format("not an option of method '{}' (it takes none)", method)
                 : fmt::format("not an option of method '{}' (its options: {})", method, join_names(info->options)));
      }
    }
    field(opts, p, "double_quant",
          [&](const json& x, const std::string& q) { out.options.double_quant = to_bool(x, q); });
    field(opts, p, "outlier_threshold", [&](const json& x, const std::string& q) {
      out.options.outlier_threshold = to_double(
          x, q, [](double t) { return t >= 0; }, ">= 0");
    });
    field(opts, p, "block_size", [&](const json& x, const std::string& q) {
      const int64_t b = to_int(x, q, 32, 4096);
      // A block must hold whole bytes of two 4-bit codes and tile the bnb kernels: powers of two only.
      if ((b & (b - 1)) != 0) fail(q, fmt::format("must be a power of two in [32, 4096], got {}", b));
      out.options.block_size = b;
    });
  });
  return out;
}

/// Splits `train.epochs`, `variants[1].method` into keys and indices. nullopt on bad syntax.
struct PathStep {
  std::string key;  // empty for an index step
  size_t index = 0;
};
std::optional<std::vector<PathStep>> split_path(std::string_view path) {
  std::vector<PathStep> steps;
  size_t i = 0;
  const auto is_key_char = [](char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  };
  while (i < path.size()) {
    if (!steps.empty()) {
      if (path[i] == '[') {
        const size_t close = path.find(']', i);
        if (close == std::string_view::npos || close == i + 1 || close - i > 10) return std::nullopt;
        size_t idx = 0;
        for (size_t k = i + 1; k < close; ++k) {
          if (path[k] < '0' || path[k] > '9') return std::nullopt;
          idx = idx * 10 + static_cast<size_t>(path[k] - '0');
        }
        steps.push_back({"", idx});
        i = close + 1;
        continue;
      }
      if (path[i] != '.') return std::nullopt;
      ++i;
    }
    const size_t start = i;
    while (i < path.size() && is_key_char(path[i])) ++i;
    if (i == start) return std::nullopt;
    steps.push_back({std::string(path.substr(start, i - start)), 0});
  }
  if (steps.empty()) return std::nullopt;
  return steps;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

/// `override '<assignment>'`, cut to a line for long values (a whole variants list).
std::string override_label(std::string_view assignment) {
  constexpr size_t kMax = 100;
  if (assignment.size() <= kMax) return fmt::format("override '{}'", assignment);
  return fmt::format("override '{}...'", assignment.substr(0, kMax - 3));
}

/// Sets the field `assignment` names in `j` (a spec in JSON form). InputError for bad syntax, `preset`, or a
/// path through a field that is not an object or list, or past the end of a list.
void set_path(json& j, std::string_view assignment) {
  const std::string label = override_label(assignment);
  const size_t eq = assignment.find('=');
  EVALSVC_CHECK(eq != std::string_view::npos, InputError, "{}: expected path=value (e.g. train.epochs=2)", label);
  const std::string_view path_text = trim(assignment.substr(0, eq));
  const std::string_view value_text = trim(assignment.substr(eq + 1));
  const auto steps = split_path(path_text);
  EVALSVC_CHECK(steps.has_value(), InputError,
                "{}: '{}' is not a field path (expected keys joined by '.', with [N] for list elements, e.g. "
                "variants[1].method)",
                label, path_text);
  EVALSVC_CHECK(!(steps->size() == 1 && (*steps)[0].key == "preset"), InputError,
                "{}: preset: cannot be overridden (start from that preset instead)", label);

  // JSON when it is JSON (numbers, true, null, lists), a plain string otherwise: `name=my-run`.
  json value = json::parse(value_text.begin(), value_text.end(), nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = std::string(value_text);

  json* at = &j;
  std::string where;
  for (const auto& step : *steps) {
    if (!step.key.empty()) {
      EVALSVC_CHECK(at->is_object(), InputError, "{}: {} is {}, not an object with field '{}'", label, where,
                    describe(*at), step.key);
      where = child(where, step.key);
      // A missing key is created here and then rejected by parse() as an unknown field, with its path.
      at = &(*at)[step.key];
    } else {
      EVALSVC_CHECK(at->is_array(), InputError, "{}: {} is {}, not a list", label, where, describe(*at));
      EVALSVC_CHECK(step.index < at->size(), InputError, "{}: {}: index out of range ({} has {} entries)", label,
                    element(where, step.index), where, at->size());
      where = element(where, step.index);
      at = &(*at)[step.index];
    }
  }
  *at = std::move(value);
  // A new method makes the old base_dtype and options meaningless (fixed-base methods, per-method options):
  // the variant restarts from the new method's defaults, keeping its name.
  if (steps->size() == 3 && (*steps)[0].key == "variants" && (*steps)[1].key.empty() && (*steps)[2].key == "method") {
    json& variant = j["variants"][(*steps)[1].index];
    if (variant.is_object() && variant.contains("name")) {
      variant = {{"name", variant["name"]}, {"method", variant["method"]}};
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------

const std::vector<std::string>& known_methods() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const auto& m : method_table()) n.emplace_back(m.name);
    return n;
  }();
  return names;
}

bool is_known_method(std::string_view method) { return find_method(method) != nullptr; }

bool method_needs_cuda(std::string_view method) {
  const MethodInfo* info = find_method(method);
  return info != nullptr && info->cuda_only;
}

std::string default_base_dtype(std::string_view method) {
  const MethodInfo* info = find_method(method);
  EVALSVC_CHECK(info != nullptr, InputError, "unknown method '{}' (expected one of {})", method,
                join_names(known_methods()));
  return info->default_base;
}

const std::vector<std::string>& known_presets() {
  static const std::vector<std::string> names = {"tiny", "seed"};
  return names;
}

json VariantSpec::to_json() const {
  json opts = json::object();
  if (const MethodInfo* info = find_method(method)) {
    for (const char* o : info->options) {
      const std::string_view key = o;
      if (key == "double_quant") opts[o] = options.double_quant;
      if (key == "outlier_threshold") opts[o] = options.outlier_threshold;
      if (key == "block_size") opts[o] = options.block_size;
    }
  }
  return {{"name", name}, {"method", method}, {"base_dtype", base_dtype}, {"options", opts}};
}

ExperimentSpec ExperimentSpec::parse(const json& j) {
  if (!j.is_object()) throw InputError("spec: expected a JSON object, got " + describe(j));
  check_fields(
      j, "",
      {"name", "preset", "model", "data", "train", "variants", "baseline", "eval", "bench", "device", "max_attempts"});

  ExperimentSpec s;
  // null = no preset: the normalized form of a spec without one says so explicitly.
  if (auto it = j.find("preset"); it != j.end() && !it->is_null()) {
    const std::string preset = to_choice(*it, "preset", known_presets(), "preset");
    s = *preset_defaults(preset);
  }

  auto name_it = j.find("name");
  if (name_it == j.end()) fail("name", "required");
  s.name = to_name(*name_it, "name");

  field(j, "", "model", [&](const json& m, const std::string& p) {
    check_fields(m, p, {"config", "init"});
    field(m, p, "config", [&](const json& x, const std::string& q) {
      s.model.config = to_choice(x, q, kModelConfigs, "model config");
    });
    field(m, p, "init", [&](const json& x, const std::string& q) { s.model.init = to_optional_path(x, q); });
  });
  if (s.model.config.empty()) fail("model.config", "required when no preset is given (tiny or gpt2)");

  field(j, "", "data", [&](const json& d, const std::string& p) {
    check_fields(d, p, {"train", "test", "train_limit", "test_limit", "max_len", "validation_fraction"});
    field(d, p, "train", [&](const json& x, const std::string& q) { s.data.train = to_optional_path(x, q); });
    field(d, p, "test", [&](const json& x, const std::string& q) { s.data.test = to_optional_path(x, q); });
    const int64_t max_rows = std::numeric_limits<int32_t>::max();  // sample indices are int4 in PostgreSQL
    field(d, p, "train_limit",
          [&](const json& x, const std::string& q) { s.data.train_limit = to_int(x, q, 0, max_rows); });
    field(d, p, "test_limit",
          [&](const json& x, const std::string& q) { s.data.test_limit = to_int(x, q, 0, max_rows); });
    field(d, p, "max_len",
          [&](const json& x, const std::string& q) { s.data.max_len = to_int(x, q, 1, kMaxLenLimit); });
    field(d, p, "validation_fraction", [&](const json& x, const std::string& q) {
      s.data.validation_fraction = to_double(
          x, q, [](double f) { return f >= 0 && f < 0.5; }, "in [0, 0.5)");
    });
  });

  field(j, "", "train", [&](const json& t, const std::string& p) {
    check_fields(t, p, {"epochs", "batch_size", "lr", "weight_decay", "warmup_fraction", "grad_clip", "seed"});
    // 0 = no fine-tuning: the experiment quantizes and evaluates model.init as it is (checked below).
    field(t, p, "epochs", [&](const json& x, const std::string& q) { s.train.epochs = to_int(x, q, 0, kMaxEpochs); });
    field(t, p, "batch_size",
          [&](const json& x, const std::string& q) { s.train.batch_size = to_int(x, q, 1, kMaxBatch); });
    field(t, p, "lr", [&](const json& x, const std::string& q) {
      s.train.lr = to_double(
          x, q, [](double v) { return v > 0; }, "> 0");
    });
    field(t, p, "weight_decay", [&](const json& x, const std::string& q) {
      s.train.weight_decay = to_double(
          x, q, [](double v) { return v >= 0; }, ">= 0");
    });
    field(t, p, "warmup_fraction", [&](const json& x, const std::string& q) {
      s.train.warmup_fraction = to_double(
          x, q, [](double v) { return v >= 0 && v < 1; }, "in [0, 1)");
    });
    field(t, p, "grad_clip", [&](const json& x, const std::string& q) {
      s.train.grad_clip = to_double(
          x, q, [](double v) { return v >= 0; }, ">= 0 (0 = no clipping)");
    });
    field(t, p, "seed", [&](const json& x, const std::string& q) {
      if (!x.is_number_integer()) fail(q, "expected an integer, got " + describe(x));
      if (!x.is_number_unsigned() && x.get<int64_t>() < 0) fail(q, fmt::format("must be >= 0, got {}", x.dump()));
      s.train.seed = x.get<uint64_t>();
    });
  });

  // Where each variant's method was named, for the device check below.
  std::vector<std::string> method_paths;
  if (auto it = j.find("variants"); it != j.end()) {
    if (!it->is_array()) fail("variants", "expected an array of variants, got " + describe(*it));
    if (it->empty()) fail("variants", "must list at least one variant");
    if (it->size() > kMaxVariants)
      fail("variants", fmt::format("at most {} variants, got {}", kMaxVariants, it->size()));
    s.variants.clear();
    std::map<std::string, size_t> seen;
    for (size_t i = 0; i < it->size(); ++i) {
      const std::string path = element("variants", i);
      std::string method_path;
      VariantSpec v = parse_variant((*it)[i], path, method_path);
      if (auto dup = seen.find(v.name); dup != seen.end()) {
        const std::string name_path = (*it)[i].is_object() && (*it)[i].contains("name") ? child(path, "name") : path;
        fail(name_path,
             fmt::format("duplicate variant name '{}' (also variants[{}]; give one a \"name\")", v.name, dup->second));
      }
      seen.emplace(v.name, i);
      s.variants.push_back(std::move(v));
      method_paths.push_back(std::move(method_path));
    }
  } else {
    if (s.variants.empty()) fail("variants", "required when no preset is given");
    for (size_t i = 0; i < s.variants.size(); ++i) method_paths.push_back(element("variants", i));
  }

  field(j, "", "baseline", [&](const json& x, const std::string& q) { s.baseline = to_name(x, q); });
  field(j, "", "eval", [&](const json& e, const std::string& p) {
    check_fields(e, p, {"shards", "batch_size"});
    field(e, p, "shards", [&](const json& x, const std::string& q) { s.eval.shards = to_int(x, q, 1, kMaxShards); });
    field(e, p, "batch_size",
          [&](const json& x, const std::string& q) { s.eval.batch_size = to_int(x, q, 1, kMaxBatch); });
  });
  field(j, "", "bench", [&](const json& b, const std::string& p) {
    check_fields(b, p, {"enabled", "batch_sizes", "seq_len", "warmup", "iters", "test_set_rows"});
    field(b, p, "enabled", [&](const json& x, const std::string& q) { s.bench.enabled = to_bool(x, q); });
    field(b, p, "batch_sizes", [&](const json& x, const std::string& q) {
      if (!x.is_array()) fail(q, "expected an array of batch sizes, got " + describe(x));
      if (x.empty()) fail(q, "must list at least one batch size");
      if (x.size() > 64) fail(q, fmt::format("at most 64 batch sizes, got {}", x.size()));
      std::vector<int64_t> sizes;
      for (size_t i = 0; i < x.size(); ++i) {
        const int64_t bs = to_int(x[i], element(q, i), 1, kMaxBatch);
        // Results are keyed by batch size, so a repeated one would overwrite the first.
        if (std::find(sizes.begin(), sizes.end(), bs) != sizes.end()) {
          fail(element(q, i), fmt::format("batch size {} is listed twice", bs));
        }
        sizes.push_back(bs);
      }
      s.bench.batch_sizes = std::move(sizes);
    });
    field(b, p, "seq_len",
          [&](const json& x, const std::string& q) { s.bench.seq_len = to_int(x, q, 1, kMaxLenLimit); });
    field(b, p, "warmup",
          [&](const json& x, const std::string& q) { s.bench.warmup = to_int(x, q, 0, kMaxBenchRuns); });
    field(b, p, "iters", [&](const json& x, const std::string& q) { s.bench.iters = to_int(x, q, 1, kMaxBenchRuns); });
    field(b, p, "test_set_rows",
          [&](const json& x, const std::string& q) { s.bench.test_set_rows = to_int(x, q, 0, std::numeric_limits<int32_t>::max()); });
  });
  field(j, "", "device", [&](const json& x, const std::string& q) { s.device = to_choice(x, q, kDevices, "device"); });
  field(j, "", "max_attempts",
        [&](const json& x, const std::string& q) { s.max_attempts = static_cast<int>(to_int(x, q, 1, kMaxAttempts)); });

  // Checks across fields, once every default is in place.
  if (!s.find_variant(s.baseline)) {
    std::vector<std::string> names;
    for (const auto& v : s.variants) names.push_back(v.name);
    fail("baseline", fmt::format("'{}' is not one of the variants ({})", s.baseline, join_names(names)));
  }
  for (size_t i = 0; i < s.variants.size(); ++i) {
    if (s.device != "cuda" && method_needs_cuda(s.variants[i].method)) {
      fail(method_paths[i], fmt::format("method '{}' needs device cuda (FP8 matrix products need compute capability "
                                        "8.9+), but device is '{}'",
                                        s.variants[i].method, s.device));
    }
  }
  if (s.train.epochs == 0 && !s.model.init) {
    fail("train.epochs", "0 (no training) needs model.init: a fine-tuned classifier checkpoint to evaluate as it is");
  }
  const int64_t context = s.model_context();
  if (s.data.max_len > context) {
    fail("data.max_len",
         fmt::format("{} exceeds the context of model '{}' ({} positions)", s.data.max_len, s.model.config, context));
  }
  if (s.bench.seq_len > context) {
    fail("bench.seq_len",
         fmt::format("{} exceeds the context of model '{}' ({} positions)", s.bench.seq_len, s.model.config, context));
  }
  return s;
}

ExperimentSpec ExperimentSpec::parse_text(std::string_view text, std::string_view source) {
  // nlohmann keeps the last of two equal keys silently; a spec with `"epochs"` twice is a mistake worth
  // naming, so the parser callback tracks the keys of every open object and where it is.
  struct Frame {
    bool array = false;
    std::set<std::string> keys;
    std::string key;
    size_t index = 0;
  };
  std::vector<Frame> stack;
  const auto here = [&stack](const std::string& key) {
    std::string p;
    for (size_t i = 0; i + 1 < stack.size(); ++i) {
      p = stack[i].array ? element(p, stack[i].index) : child(p, stack[i].key);
    }
    return child(p, key);
  };
  const json::parser_callback_t track = [&](int, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start: stack.push_back(Frame{}); break;
      case json::parse_event_t::array_start: stack.push_back(Frame{true, {}, {}, 0}); break;
      case json::parse_event_t::key: {
        Frame& f = stack.back();
        std::string key = parsed.get<std::string>();
        if (!f.keys.insert(key).second) {
          throw InputError(fmt::format("{}: {}: field given twice", source, here(key)));
        }
        f.key = std::move(key);
        break;
      }
      case json::parse_event_t::value:
        if (!stack.empty() && stack.back().array) ++stack.back().index;
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        stack.pop_back();
        if (!stack.empty() && stack.back().array) ++stack.back().index;
        break;
    }
    return true;
  };
  json j;
  try {
    j = json::parse(text.begin(), text.end(), track);
  } catch (const json::exception& e) {
    throw InputError(fmt::format("{}: invalid JSON: {}", source, e.what()));
  }
  try {
    return parse(j);
  } catch (const InputError& e) {
    throw InputError(fmt::format("{}: {}", source, e.what()));
  }
}

ExperimentSpec ExperimentSpec::from_preset(const std::string& preset_name) {
  auto s = preset_defaults(preset_name);
  EVALSVC_CHECK(s.has_value(), InputError, "preset: unknown preset '{}' (expected one of {})", preset_name,
                join_names(known_presets()));
  s->name = preset_name;
  return *s;
}

void ExperimentSpec::apply_override(std::string_view assignment) { apply_overrides({std::string(assignment)}); }

void ExperimentSpec::apply_overrides(const std::vector<std::string>& assignments) {
  json j = to_json();
  for (const auto& a : assignments) {
    set_path(j, a);
    // Normalize between steps when the partial result is valid, so a later path can address what an earlier
    // one set in short form (`variants=["fp32","nf4"]` then `variants[1].options.block_size=128`). A middle
    // state may be invalid (new variants, baseline not yet changed): only the end result must pass.
    try {
      j = parse(j).to_json();
    } catch (const InputError&) {
    }
  }
  try {
    *this = parse(j);
  } catch (const InputError& e) {
    std::string label;
    for (const auto& a : assignments) label += (label.empty() ? "" : " + ") + override_label(a);
    throw InputError(fmt::format("{}: {}", label.empty() ? "overrides" : label, e.what()));
  }
}

json ExperimentSpec::to_json() const {
  const auto opt = [](const std::optional<std::string>& s) { return s ? json(*s) : json(nullptr); };
  json variants_json = json::array();
  for (const auto& v : variants) variants_json.push_back(v.to_json());
  return {
      {"name", name},
      {"preset", opt(preset)},
      {"model", {{"config", model.config}, {"init", opt(model.init)}}},
      {"data",
       {{"train", opt(data.train)},
        {"test", opt(data.test)},
        {"train_limit", data.train_limit},
        {"test_limit", data.test_limit},
        {"max_len", data.max_len},
        {"validation_fraction", data.validation_fraction}}},
      {"train",
       {{"epochs", train.epochs},
        {"batch_size", train.batch_size},
        {"lr", train.lr},
        {"weight_decay", train.weight_decay},
        {"warmup_fraction", train.warmup_fraction},
        {"grad_clip", train.grad_clip},
        {"seed", train.seed}}},
      {"variants", variants_json},
      {"baseline", baseline},
      {"eval", {{"shards", eval.shards}, {"batch_size", eval.batch_size}}},
      {"bench",
       {{"enabled", bench.enabled},
        {"batch_sizes", bench.batch_sizes},
        {"seq_len", bench.seq_len},
        {"warmup", bench.warmup},
        {"iters", bench.iters},
        {"test_set_rows", bench.test_set_rows}}},
      {"device", device},
      {"max_attempts", max_attempts},
  };
}

const VariantSpec* ExperimentSpec::find_variant(std::string_view variant_name) const {
  for (const auto& v : variants) {
    if (v.name == variant_name) return &v;
  }
  return nullptr;
}

int64_t ExperimentSpec::model_context() const {
  // Mirrors worker::ModelConfig::preset (tiny: n_positions 128, gpt2: 1024); common cannot link the worker.
  return context_of(model.config);
}

}  // namespace evalsvc
