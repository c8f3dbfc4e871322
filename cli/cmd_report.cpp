// `qbench report EXPERIMENT [--format text|markdown|json|html] [--out FILE] [--compare OTHER]`: the report of
// one experiment (or two side by side), rendered from the results database alone.
#ifdef EVALSVC_WITH_SCHEDULER
#include <iostream>

#include "commands.h"
#include "service_urls.h"
#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/scheduler/report.h"
#include "evalsvc/scheduler/store.h"

namespace evalsvc::cli {
namespace {

int64_t resolve(scheduler::Store& store, const std::string& what) {
  auto id = scheduler::find_experiment(store, what);
  EVALSVC_CHECK(id.has_value(), InputError, "report: no experiment '{}' (an id or a name) in {}", what,
                store.redacted_url());
  return *id;
}

CommandRegistrar reg(
    "report", "Render the report of an experiment (text, markdown, json or html) from the results database",
    [](CLI::App& sub) -> RunFn {
      struct Options {
        std::string experiment, format = "text", out, compare, url, stack = "var/stack";
      };
      auto o = std::make_shared<Options>();
      sub.add_option("experiment", o->experiment, "experiment id or name (the latest run of that name)")->required();
      sub.add_option("--format,-f", o->format, "text | markdown | json | html (default text)");
      sub.add_option("--out,-o", o->out, "write to FILE (atomically) instead of stdout");
      sub.add_option("--compare", o->compare, "a second experiment (id or name): side by side with differences");
      sub.add_option("--stack", o->stack, "embedded stack folder (qbench up), used when no URL is given");
      sub.add_option("--database-url", o->url,
                     "postgresql://USER[:PASS]@HOST:PORT/DB (default $QBENCH_DATABASE_URL; the password may come "
                     "from the file named by $QBENCH_DATABASE_PASSWORD_FILE)");
      return [o] {
        auto format = scheduler::parse_report_format(o->format);
        EVALSVC_CHECK(format.has_value(), InputError, "report --format: expected text, markdown, json or html, got '{}'",
                      o->format);
        scheduler::Store store(
            database_url_or_stack(o->url, o->stack));
        const scheduler::ReportData a = scheduler::load_report_data(store, resolve(store, o->experiment));
        std::string text;
        if (o->compare.empty()) {
          text = scheduler::render_report(a, *format);
        } else {
          const scheduler::ReportData b = scheduler::load_report_data(store, resolve(store, o->compare));
          text = scheduler::render_comparison(a, b, *format);
        }
        if (o->out.empty()) {
          std::cout << text;
        } else {
          write_file_atomic(o->out, text);
          std::cerr << "wrote " << o->out << " (" << text.size() << " bytes)\n";
        }
        return static_cast<int>(kOk);
      };
    });

}  // namespace
}  // namespace evalsvc::cli
#endif  // EVALSVC_WITH_SCHEDULER
