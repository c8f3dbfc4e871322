// `qbench version`: prints qbench's, libtorch's and the device's versions (every report names them).
#include <iostream>

#include "commands.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/kernels/torch_compat.h"

namespace evalsvc::cli {
namespace {
CommandRegistrar reg("version", "Print qbench, libtorch and CUDA versions", [](CLI::App&) -> RunFn {
  return [] {
    std::cout << "qbench " << version() << "\nlibtorch " << TORCH_VERSION << "\ncuda "
              << (compat::cuda_available() ? "available" : "not available") << "\n";
    return 0;
  };
});
}  // namespace
}  // namespace evalsvc::cli
