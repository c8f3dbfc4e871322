#pragma once
// Logging goes through spdlog. Levels come from --log-level or QBENCH_LOG (trace..critical).
#include <spdlog/spdlog.h>

#include <string>

namespace evalsvc {
/// Sets the global level and a compact pattern with timestamps; logs go to stderr so stdout stays data.
void init_logging(const std::string& level = "info");
}  // namespace evalsvc
