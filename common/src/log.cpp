#include "evalsvc/common/log.h"

#include <spdlog/sinks/stdout_color_sinks.h>

#include "evalsvc/common/paths.h"

namespace evalsvc {

void init_logging(const std::string& level) {
  static auto logger = spdlog::stderr_color_mt("qbench");
  spdlog::set_default_logger(logger);
  std::string lvl = getenv_opt("QBENCH_LOG").value_or(level);
  spdlog::set_level(spdlog::level::from_str(lvl));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");
}

}  // namespace evalsvc
