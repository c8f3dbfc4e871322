// Self-contained HTML report with inline SVG charts drawn here. No charting library: the report must open
// offline, from a file, years later, with nothing to fetch or vendor-update; six simple chart types are
// a few hundred lines of SVG, and drawing them here keeps their numbers identical to the tables'.
// A Content-Security-Policy forbids every network fetch.
#include <algorithm>
#include <cmath>
#include <limits>

#include "evalsvc/scheduler/report.h"
#include "report_internal.h"

namespace evalsvc::scheduler {

using namespace report_detail;

namespace {

const char* kPalette[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                          "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"};
const char* color(size_t i) { return kPalette[i % 10]; }

std::string esc(const std::string& s) { return html_escape(s); }

/// About 5 "nice" tick values covering [lo, hi].
std::vector<double> nice_ticks(double lo, double hi) {
  if (!(hi > lo)) hi = lo + 1;
  const double raw = (hi - lo) / 5.0;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  }
  std::vector<double> t;
  for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) t.push_back(std::abs(v) < step * 1e-9 ? 0 : v);
  return t;
}

std::string tick_label(double v) {
  if (std::fabs(v) >= 1000) return fmt::format("{:.0f}", v);
  if (std::fabs(v - std::round(v)) < 1e-9) return fmt::format("{:.0f}", v);
  return fmt::format("{:.2f}", v);
}

/// A plot area with linear axes; maps data to pixels and draws the frame, ticks and labels.
struct Plot {
  double w = 640, h = 340, left = 70, right = 20, top = 30, bottom = 50;
  double x0 = 0, x1 = 1, y0 = 0, y1 = 1;
  double px(double x) const { return left + (x - x0) / (x1 - x0) * (w - left - right); }
  double py(double y) const { return h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom); }
  std::string open(const std::string& chart, const std::string& title, const std::string& extra_attr = "") const {
    return fmt::format("<svg data-chart=\"{}\"{} xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" "
                       "viewBox=\"0 0 {} {}\" role=\"img\"><title>{}</title>"
                       "<text x=\"{}\" y=\"18\" class=\"t\">{}</text>",
                       chart, extra_attr, w, h, w, h, esc(title), left, esc(title));
  }
  std::string axes(const std::string& xlabel, const std::string& ylabel, bool x_ticks = true,
                   const std::vector<std::pair<double, std::string>>& x_custom = {}) const {
    std::string s = fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" class=\"frame\"/>", left, top,
                                w - left - right, h - top - bottom);
    for (double t : nice_ticks(y0, y1)) {
      if (t < y0 - 1e-12 || t > y1 + 1e-12) continue;
      s += fmt::format("<line x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\" class=\"grid\"/>"
                       "<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"yl\">{}</text>",
                       left, w - right, py(t), py(t), left - 6, py(t) + 4, tick_label(t));
    }
    if (x_ticks) {
      for (double t : nice_ticks(x0, x1)) {
        if (t < x0 - 1e-12 || t > x1 + 1e-12) continue;
        s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"xl\">{}</text>", px(t), h - bottom + 16, tick_label(t));
      }
    }
    for (const auto& [x, label] : x_custom) {
      s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"xl\">{}</text>", px(x), h - bottom + 16, esc(label));
    }
    s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"xt\">{}</text>", (left + w - right) / 2, h - 12, esc(xlabel));
    s += fmt::format("<text transform=\"translate(16 {:.1f}) rotate(-90)\" class=\"xt\">{}</text>",
                     (top + h - bottom) / 2, esc(ylabel));
    return s;
  }
};

std::string no_data(const std::string& chart, const std::string& title, const std::string& why) {
  Plot p;
  p.h = 80;
  return p.open(chart, title, " data-empty=\"true\"") +
         fmt::format("<text x=\"{}\" y=\"50\" class=\"nd\">{}</text></svg>", p.left, esc(why));
}

std::string legend(const std::vector<std::pair<std::string, std::string>>& items, double x, double y) {
  std::string s;
  for (size_t i = 0; i < items.size(); ++i) {
    s += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"10\" height=\"10\" fill=\"{}\"/>"
                     "<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"lg\">{}</text>",
                     x, y + i * 14, items[i].second, x + 14, y + 9 + i * 14, esc(items[i].first));
  }
  return s;
}

std::string accuracy_memory_chart(const ReportData& d) {
  const std::string title = "Accuracy (95% Wilson interval) vs footprint (a), MiB";
  std::vector<size_t> idx;
  for (size_t i = 0; i < d.variants.size(); ++i) {
    const auto& v = d.variants[i];
    if (v.metrics && v.accuracy_ci && v.memory.footprint_bytes) idx.push_back(i);
  }
  if (idx.empty()) return no_data("accuracy-memory", title, "no variant has both accuracy and footprint (a) figures");
  Plot p;
  p.right = 160;
  double xmin = 1e300, xmax = 0, ymin = 100, ymax = 0;  // y in percent
  for (size_t i : idx) {
    const auto& v = d.variants[i];
    const double x = *v.memory.footprint_bytes / kMiB;
    xmin = std::min(xmin, x), xmax = std::max(xmax, x);
    ymin = std::min(ymin, v.accuracy_ci->low * 100), ymax = std::max(ymax, v.accuracy_ci->high * 100);
  }
  const double xpad = std::max(1.0, (xmax - xmin) * 0.08), ypad = std::max(0.05, (ymax - ymin) * 0.1);
  p.x0 = std::max(0.0, xmin - xpad), p.x1 = xmax + xpad, p.y0 = ymin - ypad, p.y1 = ymax + ypad;
  std::string s = p.open("accuracy-memory", title) + p.axes("footprint (a) with mask buffers, MiB", "accuracy, %");
  std::vector<std::pair<std::string, std::string>> items;
  for (size_t i : idx) {
    const auto& v = d.variants[i];
    const double x = p.px(*v.memory.footprint_bytes / kMiB);
    s += fmt::format("<g><title>{}: {} ({} to {}), {}</title>"
                     "<line x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"{}\" stroke-width=\"2\"/>"
                     "<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"5\" fill=\"{}\"/></g>",
                     esc(v.name), pct(v.metrics->accuracy), pct(v.accuracy_ci->low), pct(v.accuracy_ci->high),
                     mib(*v.memory.footprint_bytes), x, x, p.py(v.accuracy_ci->low * 100), p.py(v.accuracy_ci->high * 100),
                     color(i), x, p.py(v.metrics->accuracy * 100), color(i));
    items.push_back({v.name, color(i)});
  }
  return s + legend(items, p.w - p.right + 12, p.top) + "</svg>";
}

/// Variants of one device with their value, for bar charts. An empty `device` leaves the device out of the
/// title (figures that are not device measurements); a non-finite value draws no bar (not measured, not 0).
std::string bar_chart(const std::string& chart, const std::string& title, const std::string& device,
                      const std::vector<std::string>& names, const std::vector<std::vector<double>>& series,
                      const std::vector<std::string>& series_names, const std::string& ylabel) {
  Plot p;
  size_t longest = 0;
  for (const auto& n : series_names) longest = std::max(longest, n.size());
  p.right = std::max(120.0, 30.0 + 6.5 * static_cast<double>(longest));  // room for the legend's text
  p.w = std::max(640.0, 90.0 * names.size() + p.left + p.right);
  double ymin = 0, ymax = 0;  // bars start at 0; a negative value (an SQNR below 0 dB) extends the axis down
  for (const auto& s : series)
    for (double v : s)
      if (std::isfinite(v)) ymin = std::min(ymin, v), ymax = std::max(ymax, v);
  p.y0 = ymin < 0 ? ymin * 1.1 : 0, p.y1 = ymax > 0 ? ymax * 1.1 : 1;
  p.x0 = 0, p.x1 = static_cast<double>(names.size());
  std::vector<std::pair<double, std::string>> xl;
  for (size_t i = 0; i < names.size(); ++i) xl.push_back({i + 0.5, names[i]});
  std::string s = (device.empty() ? p.open(chart, title)
                                  : p.open(chart, title + " on " + device, " data-device=\"" + esc(device) + "\"")) +
                  p.axes("variant", ylabel, false, xl);
  const double slot = (p.px(1) - p.px(0)) * 0.8 / series.size();
  std::vector<std::pair<std::string, std::string>> items;
  for (size_t k = 0; k < series.size(); ++k) {
    items.push_back({series_names[k], color(k)});
    for (size_t i = 0; i < names.size(); ++i) {
      const double v = series[k][i];
      if (!std::isfinite(v)) continue;
      const double x = p.px(i + 0.1) + k * slot;
      s += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"{}\"><title>{} {}: "
                       "{:.2f}</title></rect>",
                       x, p.py(std::max(v, 0.0)), slot * 0.95, std::fabs(p.py(0) - p.py(v)), color(k), esc(names[i]),
                       esc(series_names[k]), v);
    }
  }
  return s + legend(items, p.w - p.right + 12, p.top) + "</svg>";
}

std::vector<std::string> devices_of(const Findings& f) {
  std::vector<std::string> out;
  for (const auto& s : f.speed) out.push_back(s.device);
  return out;
}

std::string latency_charts(const ReportData& d, const Findings& f) {
  std::string out;
  for (const auto& dev : devices_of(f)) {
    std::vector<std::string> names;
    std::vector<std::vector<double>> series(2);
    for (const auto& v : d.variants) {
      if (v.status == VariantStatus::kFailed || !v.latency || v.latency->on.device != dev) continue;
      names.push_back(v.name);
      series[0].push_back(v.latency->p50_ms);
      series[1].push_back(v.latency->p99_ms);
    }
    if (!names.empty()) out += bar_chart("latency", "Batch-1 latency, ms (lower is better)", dev, names, series, {"p50", "p99"}, "ms");
  }
  return out.empty() ? no_data("latency", "Batch-1 latency", "no latency figures measured") : out;
}

std::string throughput_charts(const ReportData& d, const Findings& f) {
  std::string out;
  for (const auto& dev : devices_of(f)) {
    std::vector<std::string> names;
    std::vector<std::vector<double>> series(1);
    for (const auto& v : d.variants) {
      if (v.status == VariantStatus::kFailed || !v.best_throughput || v.best_throughput->on.device != dev) continue;
      names.push_back(fmt::format("{} (b{})", v.name, v.best_throughput->batch_size));
      series[0].push_back(v.best_throughput->samples_per_s);
    }
    if (!names.empty()) out += bar_chart("throughput", "Best throughput, samples/s (higher is better)", dev, names, series,
                                         {"best of sweep"}, "samples/s");
  }
  return out.empty() ? no_data("throughput", "Throughput", "no throughput figures measured") : out;
}

std::string sweep_charts(const ReportData& d, const Findings& f) {
  std::string out;
  for (const auto& dev : devices_of(f)) {
    std::vector<size_t> idx;
    int bmin = 1 << 30, bmax = 0;
    double ymax = 0;
    for (size_t i = 0; i < d.variants.size(); ++i) {
      const auto& v = d.variants[i];
      bool any = false;
      for (const auto& t : v.sweep) {
        if (t.on.device != dev || v.status == VariantStatus::kFailed) continue;
        any = true;
        bmin = std::min(bmin, t.batch_size), bmax = std::max(bmax, t.batch_size);
        ymax = std::max(ymax, t.samples_per_s);
      }
      if (any) idx.push_back(i);
    }
    if (idx.empty()) continue;
    Plot p;
    p.right = 160;
    p.x0 = std::log2(static_cast<double>(bmin)) - 0.3, p.x1 = std::log2(static_cast<double>(bmax)) + 0.3;
    p.y0 = 0, p.y1 = ymax > 0 ? ymax * 1.1 : 1;
    std::vector<std::pair<double, std::string>> xl;
    for (int b = 1; b <= bmax; b *= 2) {
      if (b >= bmin) xl.push_back({std::log2(static_cast<double>(b)), std::to_string(b)});
    }
    std::string s = p.open("sweep", "Throughput vs batch size on " + dev, " data-device=\"" + esc(dev) + "\"") +
                    p.axes("batch size (log scale)", "samples/s", false, xl);
    std::vector<std::pair<std::string, std::string>> items;
    for (size_t i : idx) {
      std::string pts;
      std::string dots;
      for (const auto& t : d.variants[i].sweep) {
        if (t.on.device != dev) continue;
        const double x = p.px(std::log2(static_cast<double>(t.batch_size))), y = p.py(t.samples_per_s);
        pts += fmt::format("{:.1f},{:.1f} ", x, y);
        dots += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"3\" fill=\"{}\"><title>{} b{}: {:.2f} samples/s"
                            "</title></circle>",
                            x, y, color(i), esc(d.variants[i].name), t.batch_size, t.samples_per_s);
      }
      s += fmt::format("<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"2\"/>{}", pts, color(i), dots);
      items.push_back({d.variants[i].name, color(i)});
    }
    out += s + legend(items, p.w - p.right + 12, p.top) + "</svg>";
  }
  return out.empty() ? no_data("sweep", "Throughput vs batch size", "no throughput sweep measured") : out;
}

/// White (low) to dark blue (high) over [lo, hi].
std::string heat(double v, double lo, double hi) {
  const double t = hi > lo ? std::clamp((v - lo) / (hi - lo), 0.0, 1.0) : 1.0;
  const int r = static_cast<int>(247 - t * (247 - 8)), g = static_cast<int>(251 - t * (251 - 69)),
            b = static_cast<int>(255 - t * (255 - 148));
  return fmt::format("rgb({},{},{})", r, g, b);
}

std::string f1_heatmap(const ReportData& d) {
  const std::string title = "Per-class F1, % (color scaled to the range shown)";
  std::vector<const VariantFigures*> vs;
  for (const auto& v : d.variants) {
    if (v.metrics) vs.push_back(&v);
  }
  if (vs.empty()) return no_data("f1-heatmap", title, "no variant has accuracy figures");
  double lo = 1, hi = 0;
  for (const auto* v : vs)
    for (const auto& c : v->metrics->per_class) lo = std::min(lo, c.f1), hi = std::max(hi, c.f1);
  const double cw = 100, ch = 26, left = 170, top = 50;
  const size_t nc = d.class_names.size();
  Plot p;
  p.w = left + cw * nc + 20, p.h = top + ch * vs.size() + 20, p.left = left;
  std::string s = p.open("f1-heatmap", title);
  for (size_t c = 0; c < nc; ++c) {
    s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"xl\">{}</text>", left + cw * (c + 0.5), top - 8,
                     esc(d.class_names[c]));
  }
  for (size_t r = 0; r < vs.size(); ++r) {
    s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"yl\">{}</text>", left - 8, top + ch * (r + 0.65),
                     esc(vs[r]->name));
    for (size_t c = 0; c < nc; ++c) {
      const double f1 = vs[r]->metrics->per_class[c].f1;
      const double t = hi > lo ? (f1 - lo) / (hi - lo) : 1.0;
      s += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{}\" height=\"{}\" fill=\"{}\"/>"
                       "<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"cell\" fill=\"{}\">{:.2f}</text>",
                       left + cw * c, top + ch * r, cw - 2, ch - 2, heat(f1, lo, hi), left + cw * (c + 0.5) - 1,
                       top + ch * (r + 0.65), t > 0.55 ? "#fff" : "#000", f1 * 100);
    }
  }
  return s + "</svg>";
}

std::string confusion_charts(const ReportData& d) {
  std::string out;
  for (const auto& v : d.variants) {
    if (!v.metrics) continue;
    const auto& m = v.metrics->confusion;
    const size_t nc = m.size();
    int64_t mx = 1;
    for (const auto& r : m)
      for (int64_t x : r) mx = std::max(mx, x);
    const double cs = 56, left = 90, top = 60;
    Plot p;
    p.w = left + cs * nc + 20, p.h = top + cs * nc + 30, p.left = 10;
    std::string s = p.open("confusion", "Confusion: " + v.name, " data-variant=\"" + esc(v.name) + "\"");
    s += fmt::format("<text x=\"{:.1f}\" y=\"36\" class=\"xl\">predicted</text>", left + cs * nc / 2);
    for (size_t c = 0; c < nc; ++c) {
      s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"xl\">{}</text>", left + cs * (c + 0.5), top - 6,
                       esc(d.class_names[c]));
      s += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" class=\"yl\">{}</text>", left - 6, top + cs * (c + 0.55),
                       esc(d.class_names[c]));
    }
    for (size_t r = 0; r < nc; ++r) {
      for (size_t c = 0; c < nc; ++c) {
        const double t = static_cast<double>(m[r][c]) / mx;
        s += fmt::format("<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{}\" height=\"{}\" fill=\"{}\"><title>true {}, "
                         "predicted {}: {}</title></rect><text x=\"{:.1f}\" y=\"{:.1f}\" class=\"cell\" fill=\"{}\">{}"
                         "</text>",
                         left + cs * c, top + cs * r, cs - 2, cs - 2, heat(t, 0, 1), esc(d.class_names[r]),
                         esc(d.class_names[c]), m[r][c], left + cs * (c + 0.5) - 1, top + cs * (r + 0.55),
                         t > 0.55 ? "#fff" : "#000", m[r][c]);
      }
    }
    out += s + "</svg>";
  }
  return out.empty() ? no_data("confusion", "Confusion matrices", "no variant has accuracy figures") : out;
}

/// SQNR per projection, one line per variant, projections in layer order on the x axis. Exact
/// projections have no finite SQNR: they are left out of the line and named in the legend.
std::string sqnr_chart(const ReportData& d) {
  const std::string title = "Weight SQNR per projection, dB (higher is closer to the fp32 weights)";
  std::vector<size_t> idx;
  size_t max_points = 0;
  double ymin = 1e300, ymax = -1e300;
  for (size_t i = 0; i < d.variants.size(); ++i) {
    const auto& q = d.variants[i].quant_error;
    if (!q || !q->min_db) continue;
    idx.push_back(i);
    max_points = std::max(max_points, q->layers.size());
    for (const auto& e : q->layers) {
      if (e.sqnr_db) ymin = std::min(ymin, *e.sqnr_db), ymax = std::max(ymax, *e.sqnr_db);
    }
  }
  if (idx.empty()) {
    bool any = false;
    for (const auto& v : d.variants) any |= v.quant_error.has_value();
    return no_data("sqnr", title, any ? "every measured projection is stored exactly (no quantization error)"
                                      : "no quantization error measured");
  }
  Plot p;
  p.right = 190;
  p.w = std::max(720.0, 14.0 * max_points + p.left + p.right);
  const double pad = std::max(1.0, (ymax - ymin) * 0.1);
  p.x0 = -0.5, p.x1 = max_points - 0.5, p.y0 = ymin - pad, p.y1 = ymax + pad;
  // One label per block, at its first projection.
  std::vector<std::pair<double, std::string>> xl;
  const auto& first = d.variants[idx[0]].quant_error->layers;
  const int every = std::max(1, (first.back().layer + 1 + 11) / 12);  // at most 12 labels
  for (size_t k = 0; k < first.size(); ++k) {
    if (first[k].projection == "attn.c_attn" && first[k].layer % every == 0)
      xl.push_back({static_cast<double>(k), fmt::format("h.{}", first[k].layer)});
  }
  std::string s = p.open("sqnr", title) + p.axes("projection (block h.N: attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj)",
                                                 "SQNR, dB", false, xl);
  std::vector<std::pair<std::string, std::string>> items;
  for (size_t i : idx) {
    const auto& q = *d.variants[i].quant_error;
    // An exact projection breaks the line: no segment is drawn through a point that has no value.
    std::vector<std::string> segments(1);
    std::string dots;
    for (size_t k = 0; k < q.layers.size(); ++k) {
      const auto& e = q.layers[k];
      if (!e.sqnr_db) {
        if (!segments.back().empty()) segments.emplace_back();
        continue;
      }
      const double x = p.px(static_cast<double>(k)), y = p.py(*e.sqnr_db);
      segments.back() += fmt::format("{:.1f},{:.1f} ", x, y);
      dots += fmt::format("<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"2.5\" fill=\"{}\"><title>{} h.{}.{}: {}</title>"
                          "</circle>",
                          x, y, color(i), esc(d.variants[i].name), e.layer, esc(e.projection), db(*e.sqnr_db));
    }
    for (const auto& pts : segments) {
      if (!pts.empty()) s += fmt::format("<polyline points=\"{}\" fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\"/>", pts, color(i));
    }
    s += dots;
    items.push_back({d.variants[i].name + (q.exact ? fmt::format(" ({} exact)", q.exact) : ""), color(i)});
  }
  for (size_t i = 0; i < d.variants.size(); ++i) {
    const auto& q = d.variants[i].quant_error;
    if (q && !q->min_db) items.push_back({d.variants[i].name + ": exact", "#cccccc"});
  }
  return s + legend(items, p.w - p.right + 12, p.top) + "</svg>";
}

const char* kStyle = R"css(
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1100px;color:#222}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0;font-size:13px;display:block;overflow-x:auto;max-width:100%}th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}
.warn{background:#fff4e5;border-left:4px solid #f0a030;padding:6px 10px}
.nm{color:#999;font-style:italic}.charts svg{display:block;margin:12px 0;background:#fff}
.charts svg[data-chart="confusion"]{display:inline-block;margin-right:16px}
svg .t{font-size:14px;font-weight:600}svg .frame{fill:none;stroke:#888}svg .grid{stroke:#eee}
svg .yl{font-size:11px;text-anchor:end}svg .xl{font-size:11px;text-anchor:middle}svg .xt{font-size:12px;text-anchor:middle}
svg .lg{font-size:11px}svg .nd{font-size:13px;fill:#999;font-style:italic}svg .cell{font-size:11px;text-anchor:middle}
)css";

/// Checks after load that every chart is in the DOM and laid out; the result lands in
/// <body data-rendered> for headless tests, and a missing chart is a console error.
const char* kCheckScript = R"js(
window.addEventListener('load', function () {
  var want = document.body.getAttribute('data-charts').split(' ');
  var missing = [];
  want.forEach(function (name) {
    var svgs = document.querySelectorAll('svg[data-chart="' + name + '"]');
    var ok = svgs.length > 0;
    svgs.forEach(function (s) { var b = s.getBoundingClientRect(); if (!(b.width > 0 && b.height > 0)) ok = false; });
    if (!ok) missing.push(name);
  });
  document.body.setAttribute('data-rendered', missing.length ? 'missing:' + missing.join(',') : 'ok:' + want.length);
  if (missing.length) console.error('qbench report: charts missing or not laid out: ' + missing.join(', '));
});
)js";

std::string td(const std::string& s, bool not_measured = false) {
  return not_measured ? "<td class=\"nm\">" + esc(s) + "</td>" : "<td>" + esc(s) + "</td>";
}
std::string td_opt_mib(const std::optional<int64_t>& b) { return b ? td(mib(*b)) : td(kNotMeasured, true); }

}  // namespace

const std::vector<std::string>& html_chart_names() {
  static const std::vector<std::string> names = {"accuracy-memory", "latency", "throughput", "sweep", "f1-heatmap",
                                                 "confusion", "sqnr"};
  return names;
}

std::string render_html(const ReportData& d) {
  const Findings f = derive_findings(d);
  const SpecSummary spec = summarize_spec(d);
  std::string o;
  o += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
       "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'; img-src data:\">"
       "<title>qbench report: " + esc(d.experiment_name) + "</title><style>" + kStyle + "</style></head>\n";
  o += "<body data-charts=\"" + join(html_chart_names(), " ") + "\">\n";
  o += "<h1>Quantization comparison: " + esc(d.experiment_name) + "</h1>\n";
  o += fmt::format("<p>Experiment id {}, state {}, created {}{}. Generated {} by qbench {}. Model: {}, {}. Data: train "
                   "{}; test {}.</p>\n",
                   d.experiment_id, esc(d.state), esc(d.created_at), d.finished_at ? ", finished " + esc(*d.finished_at) : "",
                   esc(d.generated_at), esc(d.qbench_version), esc(spec.model_config), esc(spec.model_init),
                   esc(spec.train_rows), esc(spec.test_rows));
  for (const auto& w : f.warnings) o += "<p class=\"warn\">" + esc(w) + "</p>\n";

  o += "<h2>Summary</h2>\n<table><tr><th>variant</th><th>method</th><th>base</th><th>status</th><th>accuracy</th>"
       "<th>95% CI</th><th>&Delta; points</th><th>McNemar p</th><th>agreement</th><th>macro F1</th><th>95% CI</th>"
       "<th>(a) MiB</th><th>(a) no buffers</th><th>(b) runtime</th><th>(c) peak b1</th><th>(c) peak max batch</th></tr>\n";
  for (const auto& v : d.variants) {
    o += "<tr>" + td(v.name + (d.baseline && v.name == *d.baseline ? " (baseline)" : "")) + td(method_title(v.method)) +
         td(v.base_dtype);
    o += v.status == VariantStatus::kFailed ? "<td title=\"" + esc(v.error.value_or("")) + "\">failed</td>"
                                            : td(to_string(v.status));
    if (v.metrics) {
      o += td(pct(v.metrics->accuracy)) + td(pct(v.accuracy_ci->low) + " to " + pct(v.accuracy_ci->high));
    } else {
      o += td("n/a", true) + td("n/a", true);
    }
    o += v.vs_baseline ? td(signed_points(v.accuracy_delta.value_or(0))) +
                             td(pvalue(v.vs_baseline->p_value) + (v.vs_baseline->significant ? "" : " (not significant)")) +
                             td(pct(v.vs_baseline->agreement))
                       : td("") + td("") + td("");
    if (v.metrics) {
      o += td(pct(v.metrics->macro_f1)) +
           (v.macro_f1_ci ? td(pct(v.macro_f1_ci->low) + " to " + pct(v.macro_f1_ci->high)) : td("n/a", true));
    } else {
      o += td("n/a", true) + td("n/a", true);
    }
    o += td_opt_mib(v.memory.footprint_bytes) + td_opt_mib(v.memory.footprint_no_buffers_bytes) +
         td_opt_mib(v.memory.runtime_bytes) + td_opt_mib(v.memory.peak_mem_batch1_bytes) +
         td_opt_mib(v.memory.peak_mem_max_batch_bytes) + "</tr>\n";
  }
  o += "</table>\n<p>(a) and (b) are counted from the tensor shapes and dtypes; (c) is measured on the device named "
       "below.</p>\n";
  // Every measured figure of the summary with its device and software, in a table of its own so that the
  // long labels do not squeeze the figures.
  o += "<h3>Where the figures were measured</h3>\n<table><tr><th>variant</th><th>predictions (accuracy, F1) "
       "computed on</th><th>(c) peaks measured on</th><th>latency measured on</th><th>SQNR computed on</th></tr>\n";
  for (const auto& v : d.variants) {
    const std::string peaks = peak_devices(v);
    o += "<tr>" + td(v.name) + (v.metrics ? td(v.evaluated_on.label()) : td(kNotMeasured, true)) +
         (peaks.empty() ? td(kNotMeasured, true) : td(peaks)) +
         (v.latency ? td(v.latency->on.label()) : td(kNotMeasured, true)) +
         (v.quant_error ? td(v.quant_error->on.label()) : td(kNotMeasured, true)) + "</tr>\n";
  }
  o += "</table>\n";

  o += "<h2>Weight quantization error (SQNR)</h2>\n<table><tr><th>variant</th><th>projections</th><th>min SQNR</th>"
       "<th>lowest at</th><th>median SQNR</th><th>exact</th><th>computed on</th></tr>\n";
  for (const auto& v : d.variants) {
    if (!v.quant_error) {
      o += "<tr>" + td(v.name) + td(kNotMeasured, true) + td("") + td("") + td("") + td("") + td("") + "</tr>\n";
      continue;
    }
    const QuantErrorFigures& q = *v.quant_error;
    o += "<tr>" + td(v.name) + td(std::to_string(q.projections)) + td(q.min_db ? db(*q.min_db) : "exact") +
         td(q.min_at) + td(median_cell(q)) + td(std::to_string(q.exact)) + td(q.on.label()) + "</tr>\n";
  }
  o += "</table>\n<p>SQNR = 10 log10(&sum; w&sup2; / &sum; (w &minus; w&prime;)&sup2;) per projection, w the fp32 "
       "weight, w&prime; the stored weight dequantized; &ldquo;exact&rdquo; = no error. Chart <em>sqnr</em> below "
       "shows every projection.</p>\n";

  o += "<h2>Speed (compared only within one device)</h2>\n";
  for (const auto& s : f.speed) {
    o += "<h3>" + esc(s.device) + "</h3>\n<table><tr><th>variant</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th>"
         "<th>best samples/s</th><th>at batch</th><th>measured on</th></tr>\n";
    for (const auto& v : d.variants) {
      const bool lat = v.latency && v.latency->on.device == s.device;
      const bool thr = v.best_throughput && v.best_throughput->on.device == s.device;
      if (!lat && !thr) continue;
      o += "<tr>" + td(v.name) + (lat ? td(fmt::format("{:.2f}", v.latency->p50_ms)) + td(fmt::format("{:.2f}", v.latency->p90_ms)) +
                                          td(fmt::format("{:.2f}", v.latency->p99_ms))
                                    : td(kNotMeasured, true) + td("") + td("")) +
           (thr ? td(fmt::format("{:.2f}", v.best_throughput->samples_per_s)) + td(std::to_string(v.best_throughput->batch_size))
                : td(kNotMeasured, true) + td("")) +
           td(lat ? v.latency->on.label() : v.best_throughput->on.label()) + "</tr>\n";
    }
    o += "</table>\n";
  }
  if (!f.speed_not_measured.empty()) o += "<p class=\"nm\">Latency not measured: " + esc(join(f.speed_not_measured)) + "</p>\n";
  // End-to-end evaluation rates, one table per device (never compared across devices).
  const std::vector<std::string> rate_devices =
      devices_of(d.variants, [](const VariantFigures& v) { return v.dataset_rate ? &v.dataset_rate->on : nullptr; });
  for (const auto& dev : rate_devices) {
    o += "<h3>End-to-end evaluation rate on " + esc(dev) + " (tokenize + forward + write, summed worker time)</h3>\n"
         "<table><tr><th>variant</th><th>samples/s</th><th>samples</th><th>shards</th><th>measured on</th></tr>\n";
    for (const auto& v : d.variants) {
      if (!v.dataset_rate || v.dataset_rate->on.device != dev) continue;
      const DatasetRate& r = *v.dataset_rate;
      o += "<tr>" + td(v.name) + td(fmt::format("{:.2f}", r.samples_per_s)) + td(std::to_string(r.samples)) +
           td(std::to_string(r.shards)) + td(r.on.label()) + "</tr>\n";
    }
    o += "</table>\n";
  }
  const std::vector<std::string> test_devices =
      devices_of(d.variants, [](const VariantFigures& v) { return v.test_set_rate ? &v.test_set_rate->on : nullptr; });
  for (const auto& dev : test_devices) {
    o += "<h3>Test-set rate on " + esc(dev) + " (bench job: test rows padded per batch to their longest, forward only)</h3>\n"
         "<table><tr><th>variant</th><th>samples/s</th><th>rows</th><th>batch</th><th>measured on</th></tr>\n";
    for (const auto& v : d.variants) {
      if (!v.test_set_rate || v.test_set_rate->on.device != dev) continue;
      const TestSetRate& t = *v.test_set_rate;
      o += "<tr>" + td(v.name) + td(fmt::format("{:.2f}", t.samples_per_s)) + td(std::to_string(t.rows)) +
           td(std::to_string(t.batch_size)) + td(t.on.label()) + "</tr>\n";
    }
    o += "</table>\n";
  }

  o += "<h2>Charts</h2>\n<div class=\"charts\">\n";
  o += accuracy_memory_chart(d) + "\n" + latency_charts(d, f) + "\n" + throughput_charts(d, f) + "\n" +
       sweep_charts(d, f) + "\n" + f1_heatmap(d) + "\n" + confusion_charts(d) + "\n" + sqnr_chart(d) + "\n</div>\n";

  o += "<h2>Key findings</h2>\n<ul>\n";
  for (const auto& t : f.trade_offs) o += "<li>" + esc(t) + "</li>\n";
  o += "</ul>\n<h2>Recommendations</h2>\n<ul>\n";
  for (const auto& r : f.recommendations) o += "<li>" + esc(r) + "</li>\n";
  o += "</ul>\n<h2>Technical notes</h2>\n<ul>\n";
  std::vector<std::string> seen;
  for (const auto& v : d.variants) {
    if (std::find(seen.begin(), seen.end(), v.method) != seen.end()) continue;
    seen.push_back(v.method);
    o += "<li>" + esc(method_title(v.method)) + ": " + esc(method_description(v.method)) + "</li>\n";
  }
  if (d.training) {
    o += "<li>Training: " + esc(fmt::format("{} epochs in {:.1f} s on {}", d.training->epochs, d.training->seconds,
                                             d.training->on.label())) +
         ".</li>\n";
  }
  o += "<li>Memory in MiB: (a) Hugging Face get_memory_footprint() with and without the causal-mask buffers, (b) all "
       "bytes needed to run, (c) peak device memory during inference.</li>\n"
       "<li>Accuracy interval: Wilson 95%; macro F1 interval: bootstrap, 1,000 resamples, seed 1234; differences: "
       "McNemar exact test, significant when p &lt; 0.05.</li>\n</ul>\n";
  o += std::string("<script>") + kCheckScript + "</script>\n</body></html>\n";
  return o;
}

// ---------------------------------------------------------------------------------------------------------
// Comparison of two experiments

const std::vector<std::string>& comparison_chart_names() {
  static const std::vector<std::string> names = {"compare-accuracy", "compare-sqnr"};
  return names;
}

namespace report_detail {

namespace {

/// Accuracy of A and B with their Wilson intervals, side by side per variant name.
std::string compare_accuracy_chart(const ReportData& a, const ReportData& b, const std::vector<std::string>& names) {
  const std::string title = "Accuracy with 95% Wilson interval: A (left) and B (right)";
  std::vector<std::string> shown;
  double ymin = 100, ymax = 0;  // percent
  for (const auto& n : names) {
    bool any = false;
    for (const ReportData* d : {&a, &b}) {
      const VariantFigures* v = d->find(n);
      if (v && v->metrics && v->accuracy_ci) {
        any = true;
        ymin = std::min(ymin, v->accuracy_ci->low * 100), ymax = std::max(ymax, v->accuracy_ci->high * 100);
      }
    }
    if (any) shown.push_back(n);
  }
  if (shown.empty()) return no_data("compare-accuracy", title, "neither experiment has accuracy figures");
  const std::string an = "A: " + a.experiment_name, bn = "B: " + b.experiment_name;
  Plot p;
  p.right = std::max(120.0, 30.0 + 6.5 * static_cast<double>(std::max(an.size(), bn.size())));  // legend text
  p.w = std::max(640.0, 90.0 * shown.size() + p.left + p.right);
  const double pad = std::max(0.05, (ymax - ymin) * 0.1);
  p.x0 = 0, p.x1 = static_cast<double>(shown.size()), p.y0 = ymin - pad, p.y1 = ymax + pad;
  std::vector<std::pair<double, std::string>> xl;
  for (size_t i = 0; i < shown.size(); ++i) xl.push_back({i + 0.5, shown[i]});
  std::string s = p.open("compare-accuracy", title) + p.axes("variant", "accuracy, %", false, xl);
  for (size_t i = 0; i < shown.size(); ++i) {
    for (int k = 0; k < 2; ++k) {
      const ReportData& d = k == 0 ? a : b;
      const VariantFigures* v = d.find(shown[i]);
      if (!v || !v->metrics || !v->accuracy_ci) continue;
      const double x = p.px(i + 0.35 + 0.3 * k);
      s += fmt::format("<g><title>{} {}: {} ({} to {})</title>"
                       "<line x1=\"{:.1f}\" x2=\"{:.1f}\" y1=\"{:.1f}\" y2=\"{:.1f}\" stroke=\"{}\" stroke-width=\"2\"/>"
                       "<circle cx=\"{:.1f}\" cy=\"{:.1f}\" r=\"5\" fill=\"{}\"/></g>",
                       k == 0 ? "A" : "B", esc(v->name), pct(v->metrics->accuracy), pct(v->accuracy_ci->low),
                       pct(v->accuracy_ci->high), x, x, p.py(v->accuracy_ci->low * 100), p.py(v->accuracy_ci->high * 100),
                       color(k), x, p.py(v->metrics->accuracy * 100), color(k));
    }
  }
  return s + legend({{an, color(0)}, {bn, color(1)}}, p.w - p.right + 12, p.top) + "</svg>";
}

/// Lowest weight SQNR of each variant in A and B (variants stored exactly or not measured draw no bar).
std::string compare_sqnr_chart(const ReportData& a, const ReportData& b, const std::vector<std::string>& names) {
  const std::string title = "Lowest weight SQNR over the projections, dB (higher is closer)";
  std::vector<std::string> shown;
  std::vector<std::vector<double>> series(2);
  const double none = std::numeric_limits<double>::quiet_NaN();
  for (const auto& n : names) {
    const VariantFigures *va = a.find(n), *vb = b.find(n);
    auto min_db = [&](const VariantFigures* v) {
      return v && v->quant_error && v->quant_error->min_db ? *v->quant_error->min_db : none;
    };
    if (std::isnan(min_db(va)) && std::isnan(min_db(vb))) continue;
    shown.push_back(n);
    series[0].push_back(min_db(va));
    series[1].push_back(min_db(vb));
  }
  if (shown.empty()) return no_data("compare-sqnr", title, "no variant of either experiment has a finite SQNR");
  return bar_chart("compare-sqnr", title, "", shown, series, {"A: " + a.experiment_name, "B: " + b.experiment_name},
                   "dB");
}

}  // namespace

std::string render_comparison_html(const ReportData& a, const ReportData& b) {
  const ComparisonTable t = comparison_table(a, b);
  std::vector<std::string> names;
  for (const auto& r : t.cells) names.push_back(r[0]);
  const std::string title = fmt::format("Comparison: {} (id {}) and {} (id {})", a.experiment_name, a.experiment_id,
                                        b.experiment_name, b.experiment_id);
  std::string o;
  o += "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
       "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; "
       "script-src 'unsafe-inline'; img-src data:\">"
       "<title>qbench " + esc(title) + "</title><style>" + kStyle + "</style></head>\n";
  o += "<body data-charts=\"" + join(comparison_chart_names(), " ") + "\">\n";
  o += "<h1>" + esc(title) + "</h1>\n";
  o += fmt::format("<p>A = {} (id {}, state {}, created {}); B = {} (id {}, state {}, created {}). Generated {} by qbench "
                   "{}.</p>\n",
                   esc(a.experiment_name), a.experiment_id, esc(a.state), esc(a.created_at), esc(b.experiment_name),
                   b.experiment_id, esc(b.state), esc(b.created_at), esc(a.generated_at), esc(a.qbench_version));
  o += "<h2>Side by side</h2>\n<table><tr>";
  for (const auto& h : t.head) o += "<th>" + esc(h) + "</th>";
  o += "</tr>\n";
  for (const auto& r : t.cells) {
    o += "<tr>";
    for (const auto& c : r) o += td(c, c == kNotMeasured || c == "absent");
    o += "</tr>\n";
  }
  o += "</table>\n<ul>\n";
  for (const auto& m : t.measured_on) o += "<li>" + esc(m) + "</li>\n";
  o += "</ul>\n<p>" + esc(t.note) + "</p>\n";
  o += "<h2>Charts</h2>\n<div class=\"charts\">\n" + compare_accuracy_chart(a, b, names) + "\n" +
       compare_sqnr_chart(a, b, names) + "\n</div>\n";
  o += std::string("<script>") + kCheckScript + "</script>\n</body></html>\n";
  return o;
}

}  // namespace report_detail

}  // namespace evalsvc::scheduler
