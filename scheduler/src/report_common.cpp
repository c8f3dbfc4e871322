// Helpers shared by the renderers: method names and descriptions, spec summary, escaping, dispatch.
#include <algorithm>

#include "evalsvc/common/error.h"
#include "evalsvc/scheduler/report.h"
#include "report_internal.h"

namespace evalsvc::scheduler {
namespace report_detail {
namespace {

struct MethodInfo {
  const char* method;
  const char* title;
  const char* description;
};

// SPEC section 2: what each method does to the 48 block projections.
const MethodInfo kMethods[] = {
    {"fp32", "FP32", "no quantization, float32 weights and compute (reference)"},
    {"fp16", "FP16", "no quantization, float16 weights and compute"},
    {"bf16", "BF16", "no quantization, bfloat16 weights and compute"},
    {"int8-sym", "INT8 symmetric (per tensor)",
     "int8 symmetric, scale = absmax / 127 per tensor, weight-only (dequantized inside the GEMM)"},
    {"int8-sym-channel", "INT8 symmetric (per channel)",
     "int8 symmetric, scale = absmax / 127 per output channel, weight-only"},
    {"int8-w8a8", "INT8 W8A8",
     "int8 weights per output channel and activations per token, int8 GEMM with int32 accumulate"},
    {"llm-int8", "LLM.int8", "bitsandbytes Linear8bitLt layout: int8 row-wise with fp16 outlier columns (|x| >= 6.0)"},
    {"nf4", "NF4", "bitsandbytes Linear4bit nf4: 64-weight blocks, 16 NormalFloat levels, double-quantized absmax"},
    {"fp8-e4m3", "FP8 E4M3", "FP8 E4M3 W8A8, per-channel weight scale and per-token activation scale (CUDA 8.9+)"},
};

const MethodInfo* find_method(std::string method) {
  std::replace(method.begin(), method.end(), '_', '-');
  for (const auto& m : kMethods) {
    if (method == m.method) return &m;
  }
  return nullptr;
}

std::string json_string(const nlohmann::json& j, std::initializer_list<const char*> path) {
  const nlohmann::json* cur = &j;
  for (const char* key : path) {
    if (!cur->is_object()) return "";
    auto it = cur->find(key);
    if (it == cur->end()) return "";
    cur = &*it;
  }
  if (cur->is_string()) return cur->get<std::string>();
  if (cur->is_number()) return cur->dump();
  return "";
}

}  // namespace

std::string method_title(const std::string& method) {
  const MethodInfo* m = find_method(method);
  return m ? m->title : method;
}

std::string method_description(const std::string& method) {
  const MethodInfo* m = find_method(method);
  return m ? m->description : "method not described in SPEC section 2";
}

std::string variant_heading(const VariantFigures& v) {
  return fmt::format("{}: {}, base {}", v.name, method_title(v.method), v.base_dtype);
}

SpecSummary summarize_spec(const ReportData& d) {
  SpecSummary s;
  const auto& spec = d.spec;
  if (auto v = json_string(spec, {"model", "config"}); !v.empty()) {
    s.model_config = v == "gpt2" ? "GPT-2 Small (124M parameters, 12 layers, 768 wide)" : v;
  }
  if (auto v = json_string(spec, {"model", "init"}); !v.empty()) s.model_init = "fine-tuned from " + v;
  std::string train = json_string(spec, {"data", "train"});
  if (train.empty()) train = "the data folder's AG News train file";
  const std::string train_limit = json_string(spec, {"data", "train_limit"});
  s.train_rows = train_limit.empty() || train_limit == "0" ? "all rows of " + train
                                                           : "first " + train_limit + " rows of " + train;
  std::string test = json_string(spec, {"data", "test"});
  if (test.empty()) test = "AG News test.csv";
  const std::string test_limit = json_string(spec, {"data", "test_limit"});
  s.test_rows = test_limit.empty() || test_limit == "0" ? "all rows of " + test
                                                        : "first " + test_limit + " rows of " + test;
  if (auto v = json_string(spec, {"data", "max_len"}); !v.empty()) s.max_len = v + " tokens";
  return s;
}

std::string html_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string md_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|' || c == '\\' || c == '*' || c == '_' || c == '`') out += '\\';
    out += (c == '\n' || c == '\r') ? ' ' : c;
  }
  return out;
}

std::string peak_devices(const VariantFigures& v) {
  const VariantMemory& m = v.memory;
  if (m.peak_mem_batch1_bytes && m.peak_mem_max_batch_bytes) {
    if (v.peak_mem_batch1_on == v.peak_mem_max_batch_on) return v.peak_mem_batch1_on.label();
    return fmt::format("batch 1: {}; batch {}: {}", v.peak_mem_batch1_on.label(),
                       m.max_batch_size ? std::to_string(*m.max_batch_size) : "max", v.peak_mem_max_batch_on.label());
  }
  if (m.peak_mem_batch1_bytes) return v.peak_mem_batch1_on.label();
  if (m.peak_mem_max_batch_bytes) return v.peak_mem_max_batch_on.label();
  return "";
}

std::string sqnr_summary(const std::optional<QuantErrorFigures>& q) {
  if (!q) return kNotMeasured;
  if (!q->min_db) return fmt::format("exact: all {} projections store the fp32 weights unchanged", q->projections);
  std::string s = fmt::format("min {} ({}), median {} over {} projections", db(*q->min_db), q->min_at,
                              median_cell(*q), q->projections);
  if (q->exact > 0) s += fmt::format(" ({} exact)", q->exact);
  return s;
}

}  // namespace report_detail

std::optional<ReportFormat> parse_report_format(const std::string& s) {
  if (s == "text" || s == "txt") return ReportFormat::kText;
  if (s == "markdown" || s == "md") return ReportFormat::kMarkdown;
  if (s == "json") return ReportFormat::kJson;
  if (s == "html") return ReportFormat::kHtml;
  return std::nullopt;
}

std::string render_report(const ReportData& data, ReportFormat format) {
  switch (format) {
    case ReportFormat::kText: return render_text(data);
    case ReportFormat::kMarkdown: return render_markdown(data);
    case ReportFormat::kJson: return render_json(data);
    case ReportFormat::kHtml: return render_html(data);
  }
  throw InternalError("render_report: unknown format");
}

}  // namespace evalsvc::scheduler
