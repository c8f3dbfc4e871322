// tokenizer_bench: single-threaded GPT-2 BPE throughput on every AG News row here (test.csv and
// train_first10429.csv, text = title + " " + description), with a cold word cache (first pass of a freshly
// loaded tokenizer) and warm (best of --repeat further passes). Prints one JSON object. Wall-clock and
// thread-CPU figures are both given: on a shared machine only the CPU figure is comparable between runs.
//
//   tokenizer_bench [--data DIR] [--repeat N] [--dump-texts FILE] [--dump-ids FILE]
//
// --dump-texts writes the texts in order as JSON lines (one JSON string a line) and --dump-ids the ids of
// each text the same way, so scripts/peer_tokenizer.py can time tiktoken on exactly these texts and check
// that it produces exactly these ids.
#include <time.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/worker/ag_news.h"
#include "evalsvc/worker/tokenizer.h"

namespace {

using evalsvc::worker::Tokenizer;
using Clock = std::chrono::steady_clock;

std::string cpu_name() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown CPU";
}

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

struct Pass {
  double seconds = 0;
  double cpu_seconds = 0;  // this thread's CPU time: the honest figure on a machine shared with other jobs
  int64_t tokens = 0;
  uint64_t checksum = 0;  // keeps the work observable so nothing is optimised away
};

Pass run_pass(const Tokenizer& tok, const std::vector<std::string>& texts) {
  Pass p;
  std::vector<int32_t> ids;
  const auto start = Clock::now();
  const double cpu_start = thread_cpu_seconds();
  for (const auto& t : texts) {
    ids.clear();
    tok.encode_into(t, ids);
    p.tokens += static_cast<int64_t>(ids.size());
    for (int32_t id : ids) p.checksum = p.checksum * 31 + static_cast<uint32_t>(id);
  }
  p.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  p.cpu_seconds = thread_cpu_seconds() - cpu_start;
  return p;
}

nlohmann::json pass_json(const Pass& p, size_t bytes) {
  return {{"seconds", p.seconds},
          {"tokens_per_s", p.tokens / p.seconds},
          {"cpu_seconds", p.cpu_seconds},
          {"tokens_per_cpu_s", p.tokens / p.cpu_seconds},
          {"mb_per_s", static_cast<double>(bytes) / p.seconds / 1e6}};
}

void write_lines(const std::string& path, const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  evalsvc::write_file_atomic(path, out);
}

int usage(const char* msg) {
  std::cerr << "tokenizer_bench: " << msg
            << "\nusage: tokenizer_bench [--data DIR] [--repeat N] [--dump-texts FILE] [--dump-ids FILE]\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::optional<std::string> data, dump_texts, dump_ids;
  int repeat = 5;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::optional<std::string> {
      if (i + 1 >= argc) return std::nullopt;
      return std::string(argv[++i]);
    };
    std::optional<std::string> v;
    if (a == "--data" || a == "--repeat" || a == "--dump-texts" || a == "--dump-ids") {
      v = value();
      if (!v) return usage(("missing value after " + a).c_str());
    }
    if (a == "--data") {
      data = v;
    } else if (a == "--dump-texts") {
      dump_texts = v;
    } else if (a == "--dump-ids") {
      dump_ids = v;
    } else if (a == "--repeat") {
      try {
        repeat = std::stoi(*v);
      } catch (const std::exception&) {
        return usage(("--repeat wants a positive integer, got '" + *v + "'").c_str());
      }
      if (repeat < 1) return usage("--repeat wants a positive integer");
    } else {
      return usage(("unknown argument '" + a + "'").c_str());
    }
  }
  try {
    const auto dir = evalsvc::data_dir(data);
    std::vector<std::string> texts;
    size_t bytes = 0;
    for (const char* file : {"test.csv", "train_first10429.csv"}) {
      for (auto& row : evalsvc::worker::read_ag_news_csv(dir / "ag_news" / file)) {
        bytes += row.text.size();
        texts.push_back(std::move(row.text));
      }
    }
    if (dump_texts) {
      std::vector<std::string> lines;
      for (const auto& t : texts) lines.push_back(nlohmann::json(t).dump());
      write_lines(*dump_texts, lines);
    }

    // Cold: a freshly loaded tokenizer starts this thread's word cache empty.
    const auto load_start = Clock::now();
    const Tokenizer tok = Tokenizer::load(dir / "gpt2");
    const double load_seconds = std::chrono::duration<double>(Clock::now() - load_start).count();
    const Pass cold = run_pass(tok, texts);
    Pass warm;
    warm.seconds = 1e300;
    for (int r = 0; r < repeat; ++r) {
      Pass p = run_pass(tok, texts);
      EVALSVC_ASSERT(p.checksum == cold.checksum, "pass {} produced different ids than the cold pass", r);
      if (p.seconds < warm.seconds) warm = p;
    }

    if (dump_ids) {
      std::vector<std::string> lines;
      for (const auto& t : texts) lines.push_back(nlohmann::json(tok.encode(t)).dump());
      write_lines(*dump_ids, lines);
    }

    nlohmann::json out = {
        {"texts", texts.size()},
        {"bytes", bytes},
        {"tokens", warm.tokens},
        // top-level figures are the warm (steady-state) pass: what a long-running worker sees
        {"seconds", warm.seconds},
        {"tokens_per_s", warm.tokens / warm.seconds},
        {"cold", pass_json(cold, bytes)},
        {"warm", pass_json(warm, bytes)},
        {"repeat", repeat},
        {"threads", 1},
        {"load_seconds", load_seconds},
        {"pcre2_jit", tok.jit_compiled()},
        {"fingerprint", tok.fingerprint()},
        {"device", cpu_name() + ", " + std::to_string(std::thread::hardware_concurrency()) + " hardware threads"},
    };
    std::cout << out.dump() << std::endl;
    return 0;
  } catch (const evalsvc::Error& e) {
    std::cerr << "tokenizer_bench: " << e.what() << "\n";
    return 1;
  }
}
