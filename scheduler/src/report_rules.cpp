// Key findings and recommendations as explicit rules over ReportData (documented in docs/report.md).
// The reference report called a noise-level difference "highest accuracy" and recommended its slowest
// variant "if speed is priority"; each rule here states its condition, so the text cannot contradict the
// table: accuracy claims need McNemar p < 0.05, speed claims name the variant with the lowest figure on
// one device, and figures that print the same are ties.
#include <algorithm>
#include <cmath>
#include <set>

#include "evalsvc/scheduler/report.h"
#include "report_internal.h"

namespace evalsvc::scheduler {
namespace {

using namespace report_detail;

/// Two values that print the same at 2 decimals are a tie.
bool same_at_2dp(double a, double b) { return std::llround(a * 100.0) == std::llround(b * 100.0); }

std::optional<double> pair_p(const ReportData& d, size_t i, size_t k) { return d.pairwise_p.at(i).at(k); }

bool degraded(const VariantFigures& v) {
  return v.vs_baseline && v.vs_baseline->significant && v.accuracy_delta && *v.accuracy_delta < 0;
}

}  // namespace

Findings derive_findings(const ReportData& d) {
  Findings f;
  const size_t nv = d.variants.size();

  // --- warnings: what the reader must know before trusting the comparison ---------------------------------
  for (const auto& v : d.variants) {
    if (v.status == VariantStatus::kFailed) {
      f.warnings.push_back(fmt::format("{} {}: {}", v.name, v.state, v.error.value_or("no error text stored")));
    } else if (v.status == VariantStatus::kIncomplete) {
      f.warnings.push_back(fmt::format("{} is incomplete (state {}, {} predictions stored): no accuracy figures",
                                       v.name, v.state, v.predictions));
    }
    if (v.metrics && v.vs_baseline && v.baseline) {
      const VariantFigures* b = d.find(*v.baseline);
      if (b && b->metrics && (b->metrics->n != v.metrics->n || v.vs_baseline->n != v.metrics->n)) {
        f.warnings.push_back(fmt::format("{} evaluated {} samples and its baseline {} {}; the paired test used the {} "
                                         "samples both evaluated",
                                         v.name, v.metrics->n, b->name, b->metrics->n, v.vs_baseline->n));
      }
    }
    if (v.metrics && v.baseline && !v.vs_baseline) {
      f.warnings.push_back(fmt::format("{}: its baseline {} has no accuracy figures, so no paired test", v.name,
                                       *v.baseline));
    }
  }

  // --- accuracy: "highest" only when significantly above every other evaluated variant ---------------------
  std::vector<size_t> evaluated;
  for (size_t i = 0; i < nv; ++i) {
    if (d.variants[i].metrics) evaluated.push_back(i);
  }
  if (evaluated.size() == 1) {
    f.accuracy = Findings::Accuracy::kSingle;
    f.top_accuracy = {d.variants[evaluated[0]].name};
  } else if (evaluated.size() > 1) {
    double best = -1;
    for (size_t i : evaluated) best = std::max(best, d.variants[i].metrics->accuracy);
    std::vector<size_t> tops;
    for (size_t i : evaluated) {
      if (d.variants[i].metrics->accuracy == best) tops.push_back(i);
    }
    f.max_p_vs_top = 0;
    bool all_significant = tops.size() == 1;
    for (size_t i : evaluated) {
      if (i == tops[0]) continue;
      auto p = pair_p(d, tops[0], i);
      f.max_p_vs_top = std::max(f.max_p_vs_top, p.value_or(1.0));
      if (!p || *p >= kSignificance) all_significant = false;
    }
    if (all_significant) {
      f.accuracy = Findings::Accuracy::kSignificantlyHighest;
      f.top_accuracy = {d.variants[tops[0]].name};
    } else {
      // The top group: every variant that no top variant beats significantly.
      for (size_t i : evaluated) {
        bool below = std::find(tops.begin(), tops.end(), i) == tops.end();
        for (size_t t : tops) {
          auto p = pair_p(d, t, i);
          if (i == t || !p || *p >= kSignificance) below = false;
        }
        (below ? f.below_top : f.top_accuracy).push_back(d.variants[i].name);
      }
      f.accuracy = f.below_top.empty() ? Findings::Accuracy::kIndistinguishable : Findings::Accuracy::kTopGroup;
    }
  }

  // --- memory: the smallest footprint (a), ties at the printed precision ------------------------------------
  for (const auto& v : d.variants) {
    if (v.status == VariantStatus::kFailed) continue;
    if (!v.memory.footprint_bytes) {
      f.memory_not_measured.push_back(v.name);
      continue;
    }
    const int64_t b = *v.memory.footprint_bytes;
    if (!f.lowest_memory_bytes || (b < *f.lowest_memory_bytes && !same_at_2dp(b / kMiB, *f.lowest_memory_bytes / kMiB))) {
      f.lowest_memory_bytes = b;
      f.lowest_memory = {v.name};
    } else if (same_at_2dp(b / kMiB, *f.lowest_memory_bytes / kMiB)) {
      f.lowest_memory.push_back(v.name);
      f.lowest_memory_bytes = std::min(*f.lowest_memory_bytes, b);
    }
  }

  // --- speed: per device; never across devices ----------------------------------------------------------------
  std::vector<std::string> devices;
  auto add_device = [&](const std::string& dev) {
    if (std::find(devices.begin(), devices.end(), dev) == devices.end()) devices.push_back(dev);
  };
  if (d.baseline) {
    if (const auto* b = d.find(*d.baseline); b && b->latency) add_device(b->latency->on.device);
  }
  for (const auto& v : d.variants) {
    if (v.status == VariantStatus::kFailed) continue;
    if (v.latency) add_device(v.latency->on.device);
    if (v.best_throughput) add_device(v.best_throughput->on.device);
    if (!v.latency) f.speed_not_measured.push_back(v.name);
  }
  for (const auto& dev : devices) {
    SpeedFindings s;
    s.device = dev;
    for (const auto& v : d.variants) {
      if (v.status == VariantStatus::kFailed) continue;
      if (v.latency && v.latency->on.device == dev) {
        const double p50 = v.latency->p50_ms;
        if (!s.lowest_latency_ms || (p50 < *s.lowest_latency_ms && !same_at_2dp(p50, *s.lowest_latency_ms))) {
          s.lowest_latency_ms = p50;
          s.lowest_latency = {v.name};
        } else if (same_at_2dp(p50, *s.lowest_latency_ms)) {
          s.lowest_latency.push_back(v.name);
          s.lowest_latency_ms = std::min(*s.lowest_latency_ms, p50);
        }
      }
      if (v.best_throughput && v.best_throughput->on.device == dev) {
        const double t = v.best_throughput->samples_per_s;
        if (!s.best_point || (t > s.best_point->samples_per_s && !same_at_2dp(t, s.best_point->samples_per_s))) {
          s.best_point = v.best_throughput;
          s.highest_throughput = {v.name};
        } else if (same_at_2dp(t, s.best_point->samples_per_s)) {
          s.highest_throughput.push_back(v.name);
        }
      }
    }
    f.speed.push_back(std::move(s));
  }
  if (devices.size() > 1) {
    f.warnings.push_back(fmt::format("speed figures come from {} devices ({}); they are compared only within a device",
                                     devices.size(), join(devices, "; ")));
  }

  // --- accuracy against the baseline ------------------------------------------------------------------------
  for (const auto& v : d.variants) {
    if (!v.vs_baseline) continue;
    (degraded(v) ? f.accuracy_degraded : f.accuracy_preserved).push_back(v.name);
  }

  // --- trade-offs -----------------------------------------------------------------------------------------------
  const VariantFigures* base = d.baseline ? d.find(*d.baseline) : nullptr;
  {
    const VariantFigures* most = nullptr;
    for (const auto& name : f.accuracy_preserved) {
      const VariantFigures* v = d.find(name);
      if (v->compression && (!most || *v->compression > *most->compression)) most = v;
    }
    if (most) {
      const bool better = most->accuracy_delta && *most->accuracy_delta > 0 && most->vs_baseline->significant;
      f.trade_offs.push_back(fmt::format(
          "Memory vs accuracy: {} reaches {:.2f}x compression of footprint (a) ({} vs {}) with an accuracy change of "
          "{} points against {}, {} (McNemar p = {}).",
          most->name, *most->compression, mib(*most->memory.footprint_bytes),
          mib(*d.find(*most->baseline)->memory.footprint_bytes), signed_points(most->accuracy_delta.value_or(0)),
          *most->baseline, better ? "significantly higher" : "not significant", pvalue(most->vs_baseline->p_value)));
    } else if (!f.accuracy_preserved.empty()) {
      f.trade_offs.push_back("Memory vs accuracy: footprint (a) not measured for the variants that keep the baseline's "
                             "accuracy, so no compression figure.");
    }
    for (const auto& name : f.accuracy_degraded) {
      const VariantFigures* v = d.find(name);
      f.trade_offs.push_back(fmt::format("Accuracy cost: {} loses {} points against {} (McNemar p = {}, significant){}.",
                                         v->name, fmt::format("{:.2f}", -*v->accuracy_delta * 100.0), *v->baseline,
                                         pvalue(v->vs_baseline->p_value),
                                         v->compression ? fmt::format(" for {:.2f}x compression", *v->compression) : ""));
    }
  }
  for (const auto& s : f.speed) {
    if (!base || !base->latency || base->latency->on.device != s.device) {
      if (s.lowest_latency_ms) {
        f.trade_offs.push_back(fmt::format("Speed vs baseline on {}: the baseline has no latency figure on this device, "
                                           "so speed is not compared with it.",
                                           s.device));
      }
      continue;
    }
    std::vector<std::string> parts;
    for (const auto& v : d.variants) {
      if (&v == base || v.status == VariantStatus::kFailed || !v.latency || v.latency->on.device != s.device) continue;
      parts.push_back(fmt::format("{} {:.2f}x", v.name, base->latency->p50_ms / v.latency->p50_ms));
    }
    if (!parts.empty()) {
      f.trade_offs.push_back(fmt::format("Speed vs baseline on {} (batch-1 p50 speed-up over {}, above 1 = faster): {}.",
                                         s.device, base->name, join(parts)));
    }
  }

  // --- recommendations ------------------------------------------------------------------------------------------
  // Memory: the smallest footprint among variants whose accuracy is not significantly below the baseline.
  {
    std::vector<std::string> candidates = f.accuracy_preserved;
    if (base && base->metrics) candidates.push_back(base->name);
    const VariantFigures* pick = nullptr;
    for (const auto& name : candidates) {
      const VariantFigures* v = d.find(name);
      if (v->memory.footprint_bytes && (!pick || *v->memory.footprint_bytes < *pick->memory.footprint_bytes)) pick = v;
    }
    if (pick) {
      std::string why = pick->compression ? fmt::format("{:.2f}x smaller than the baseline", *pick->compression)
                                          : std::string("smallest measured");
      std::string acc = pick->vs_baseline ? fmt::format(", accuracy {} points vs the baseline, not significantly lower "
                                                        "(McNemar p = {})",
                                                        signed_points(pick->accuracy_delta.value_or(0)),
                                                        pvalue(pick->vs_baseline->p_value))
                                          : "";
      f.recommendations.push_back(fmt::format("If memory is constrained: use {} (footprint (a) {}, {}{}).", pick->name,
                                              mib(*pick->memory.footprint_bytes), why, acc));
      for (const auto& name : f.lowest_memory) {
        const VariantFigures* v = d.find(name);
        if (v != pick && degraded(*v)) {
          f.recommendations.push_back(fmt::format("  {} is smaller still ({}) but loses {} points of accuracy "
                                                  "(significant).",
                                                  v->name, mib(*v->memory.footprint_bytes),
                                                  fmt::format("{:.2f}", -*v->accuracy_delta * 100.0)));
        }
      }
    } else {
      f.recommendations.push_back("If memory is constrained: no footprint figures for variants that keep the "
                                  "baseline's accuracy; no recommendation.");
    }
  }
  // Accuracy: a single winner only when it is significantly above every other variant.
  switch (f.accuracy) {
    case Findings::Accuracy::kSignificantlyHighest:
      f.recommendations.push_back(fmt::format("If accuracy is critical: use {}; its accuracy is significantly higher "
                                              "than every other variant's (largest McNemar p = {}).",
                                              f.top_accuracy[0], pvalue(f.max_p_vs_top)));
      break;
    case Findings::Accuracy::kIndistinguishable:
    case Findings::Accuracy::kTopGroup:
      f.recommendations.push_back(fmt::format("If accuracy is critical: no variant is significantly more accurate; {} "
                                              "are statistically indistinguishable from the most accurate, so choose "
                                              "among them by memory or speed.",
                                              join_and(f.top_accuracy)));
      break;
    case Findings::Accuracy::kSingle:
      f.recommendations.push_back(fmt::format("If accuracy is critical: only {} has accuracy figures; nothing to "
                                              "compare it with.",
                                              f.top_accuracy[0]));
      break;
    case Findings::Accuracy::kNone:
      f.recommendations.push_back("If accuracy is critical: no variant has accuracy figures yet.");
      break;
  }
  if (!f.accuracy_degraded.empty()) {
    f.recommendations.push_back(fmt::format("  Avoid {} where accuracy matters: significantly less accurate than "
                                            "the baseline.",
                                            join_and(f.accuracy_degraded)));
  }
  // Speed: the variant that is actually fastest, per device.
  bool any_speed = false;
  for (const auto& s : f.speed) {
    if (s.lowest_latency_ms) {
      any_speed = true;
      std::vector<std::string> caveats;
      for (const auto& name : s.lowest_latency) {
        if (degraded(*d.find(name))) caveats.push_back(name);
      }
      f.recommendations.push_back(fmt::format(
          "If speed is priority (batch 1, {}): use {} (p50 {}){}{}.", s.device, join_and(s.lowest_latency),
          ms(*s.lowest_latency_ms), s.lowest_latency.size() > 1 ? ", tied" : "",
          caveats.empty() ? "" : fmt::format("; note {} is significantly less accurate than its baseline",
                                             join_and(caveats))));
    }
    if (s.best_point) {
      any_speed = true;
      f.recommendations.push_back(fmt::format("If throughput is priority ({}): use {} ({} at batch {}){}.", s.device,
                                              join_and(s.highest_throughput), rate(s.best_point->samples_per_s),
                                              s.best_point->batch_size, s.highest_throughput.size() > 1 ? ", tied" : ""));
    }
  }
  if (!any_speed) {
    f.recommendations.push_back("If speed is priority: no latency or throughput figures were measured; no "
                                "recommendation.");
  }
  return f;
}

}  // namespace evalsvc::scheduler
