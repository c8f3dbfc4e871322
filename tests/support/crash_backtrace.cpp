// Linked into every test program: on SIGSEGV, SIGBUS, SIGFPE or SIGILL, print the signal and a backtrace to
// stderr, then die of the same signal. ctest then shows where a crash happened instead of only "SEGFAULT";
// this exists because two test programs crashed on the GPU host, which has no debugger.
#include <execinfo.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <initializer_list>

namespace {

void on_fatal_signal(int sig) {
  const char* name = sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS" : sig == SIGFPE ? "SIGFPE" : "SIGILL";
  // Only async-signal-safe calls: write(2) and backtrace_symbols_fd (which does not allocate).
  const char head[] = "\n*** fatal signal ";
  (void)!::write(STDERR_FILENO, head, sizeof(head) - 1);
  (void)!::write(STDERR_FILENO, name, std::strlen(name));
  const char tail[] = "; backtrace (addr2line -e <binary> <offset> resolves the +0x offsets):\n";
  (void)!::write(STDERR_FILENO, tail, sizeof(tail) - 1);
  void* frames[64];
  const int n = ::backtrace(frames, 64);
  ::backtrace_symbols_fd(frames, n, STDERR_FILENO);
  std::signal(sig, SIG_DFL);  // die of the same signal, so the exit status still says what happened
  std::raise(sig);
}

const bool installed = [] {
  void* warm[1];
  ::backtrace(warm, 1);  // loads libgcc's unwinder now, not inside the handler
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL}) std::signal(sig, on_fatal_signal);
  return true;
}();

}  // namespace
