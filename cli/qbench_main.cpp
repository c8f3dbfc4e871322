// qbench: the command-line entry point. Subcommands register themselves (see commands.h).
#include <algorithm>
#include <iostream>
#include <map>

#include "commands.h"
#include "evalsvc/common/error.h"
#include "evalsvc/common/log.h"
#include "evalsvc/common/paths.h"

namespace evalsvc::cli {
std::vector<Command>& registry() {
  static std::vector<Command> commands;
  return commands;
}
}  // namespace evalsvc::cli

int main(int argc, char** argv) {
  using namespace evalsvc;
  CLI::App app{"qbench: measure what quantization does to a GPT-2 classifier"};
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error");
  app.set_version_flag("--version", "qbench " + version());

  auto& commands = cli::registry();
  std::sort(commands.begin(), commands.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  std::map<CLI::App*, cli::RunFn> runs;
  for (auto& c : commands) {
    CLI::App* sub = app.add_subcommand(c.name, c.description);
    runs[sub] = c.setup(*sub);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : cli::kUsage;
  }
  init_logging(log_level);
  for (auto& [sub, run] : runs) {
    if (!sub->parsed()) continue;
    try {
      return run();
    } catch (const InputError& e) {
      std::cerr << "qbench " << sub->get_name() << ": error: " << e.what() << "\n";
      return cli::kUsage;
    } catch (const Error& e) {
      std::cerr << "qbench " << sub->get_name() << ": " << to_string(e.kind()) << " error: " << e.what() << "\n";
      return (e.kind() == ErrorKind::kRedis || e.kind() == ErrorKind::kDatabase) ? cli::kUnavailable : cli::kFailed;
    } catch (const std::exception& e) {
      std::cerr << "qbench " << sub->get_name() << ": error: " << e.what() << "\n";
      return cli::kFailed;
    }
  }
  return cli::kUsage;
}
