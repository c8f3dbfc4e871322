#pragma once
// Each `qbench <command>` lives in its own cli/cmd_<command>.cpp and registers itself here, so commands
// can be added without touching main. A command's setup declares its options on `sub` and returns the
// function that runs it; that function returns the process exit code.
#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace evalsvc::cli {

/// Exit codes: 0 success, 1 the operation failed, 2 bad usage or input, 3 a dependency (server) is down.
enum ExitCode : int { kOk = 0, kFailed = 1, kUsage = 2, kUnavailable = 3 };

using RunFn = std::function<int()>;
using SetupFn = std::function<RunFn(CLI::App& sub)>;

struct Command {
  std::string name;
  std::string description;
  SetupFn setup;
};

/// The registry filled by static CommandRegistrar objects (one per cmd_*.cpp).
std::vector<Command>& registry();

struct CommandRegistrar {
  CommandRegistrar(std::string name, std::string description, SetupFn setup) {
    registry().push_back({std::move(name), std::move(description), std::move(setup)});
  }
};

}  // namespace evalsvc::cli
