// `qbench tokenize`: GPT-2 token ids of UTF-8 text on stdin, as JSON arrays on stdout.
//   qbench tokenize [--vocab DIR] [--lines] [--special]
// Without --lines the whole input (newlines included) is one text and one array. With --lines each line
// (split at '\n', which is not part of the text; a '\r' before it is kept) gives one array; a last line
// without '\n' counts, so empty input prints nothing. Invalid UTF-8 is a usage error naming the line.
#include <fmt/format.h>
#include <fmt/ranges.h>  // fmt::join (in format.h before fmt 11)

#include <iostream>
#include <iterator>
#include <memory>
#include <string>

#include "commands.h"
#include "evalsvc/common/error.h"
#include "evalsvc/common/paths.h"
#include "evalsvc/worker/tokenizer.h"

namespace evalsvc::cli {
namespace {

struct TokenizeOptions {
  std::string vocab;
  bool lines = false;
  bool special = false;
};

std::string json_array(const std::vector<int32_t>& ids) { return fmt::format("[{}]", fmt::join(ids, ",")); }

int run_tokenize(const TokenizeOptions& opt) {
  const std::filesystem::path dir = opt.vocab.empty() ? data_dir() / "gpt2" : std::filesystem::path(opt.vocab);
  const bool has_files =
      std::filesystem::is_regular_file(dir / "encoder.json") && std::filesystem::is_regular_file(dir / "vocab.bpe");
  EVALSVC_CHECK(has_files, InputError, "vocabulary folder '{}' must hold encoder.json and vocab.bpe", dir.string());
  const worker::Tokenizer tok = worker::Tokenizer::load(dir);
  std::ios::sync_with_stdio(false);
  const std::string input((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  if (std::cin.bad()) throw IoError("error reading stdin");
  auto encode = [&](std::string_view text) { return opt.special ? tok.encode_with_special(text) : tok.encode(text); };

  std::string out;
  if (!opt.lines) {
    out = json_array(encode(input)) + "\n";
  } else {
    size_t pos = 0, line_no = 0;
    while (pos < input.size()) {
      ++line_no;
      const size_t nl = input.find('\n', pos);
      const size_t end = nl == std::string::npos ? input.size() : nl;
      try {
        out += json_array(encode(std::string_view(input).substr(pos, end - pos)));
      } catch (const InputError& e) {
        throw InputError(fmt::format("stdin line {}: {}", line_no, e.what()));
      }
      out += '\n';
      pos = end + 1;
    }
  }
  std::cout << out << std::flush;
  if (!std::cout) throw IoError("error writing stdout");
  return kOk;
}

CommandRegistrar reg(
    "tokenize", "GPT-2 BPE token ids of UTF-8 text on stdin, as JSON arrays", [](CLI::App& sub) -> RunFn {
      auto opt = std::make_shared<TokenizeOptions>();
      sub.add_option("--vocab", opt->vocab, "folder with encoder.json and vocab.bpe (default: DATA/gpt2)");
      sub.add_flag("--lines", opt->lines, "one array per input line instead of one for the whole input");
      sub.add_flag("--special", opt->special, "turn the literal <|endoftext|> into id 50256 (Hugging Face behaviour)");
      return [opt] { return run_tokenize(*opt); };
    });

}  // namespace
}  // namespace evalsvc::cli
