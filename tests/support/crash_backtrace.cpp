// Linked into every test program: on SIGSEGV, SIGBUS, SIGFPE or SIGILL, print the signal, the faulting address
// and instruction pointer, a backtrace and the executable mappings to stderr, then die of the same signal.
// ctest then shows where a crash happened instead of only "SEGFAULT"; this exists because two test programs
// crashed on the GPU host, which has no debugger. The instruction pointer and the mappings matter when the
// backtrace cannot unwind past the signal frame (a jump to a bad address, a frame without unwind tables).
#include <execinfo.h>
#include <fcntl.h>
#include <signal.h>
#include <ucontext.h>
#include <unistd.h>

#include <csignal>
#include <cstdint>
#include <cstring>
#include <initializer_list>

namespace {

void put(const char* s) { (void)!::write(STDERR_FILENO, s, std::strlen(s)); }

void put_hex(uintptr_t v) {
  char buf[2 + 16 + 1];
  buf[0] = '0';
  buf[1] = 'x';
  for (int i = 0; i < 16; ++i) buf[2 + i] = "0123456789abcdef"[(v >> (60 - 4 * i)) & 0xF];
  buf[18] = '\0';
  put(buf);
}

/// Copies the executable lines of /proc/self/maps to stderr (open/read/write only: async-signal-safe).
void put_executable_maps() {
  const int fd = ::open("/proc/self/maps", O_RDONLY);
  if (fd < 0) return;
  char line[512];
  size_t len = 0;
  char c;
  while (::read(fd, &c, 1) == 1) {
    if (len + 1 < sizeof(line)) line[len++] = c;
    if (c != '\n') continue;
    line[len] = '\0';
    // "start-end perms offset dev inode path": keep the r-xp mappings.
    const char* sp = std::strchr(line, ' ');
    if (sp && sp[3] == 'x') put(line);
    len = 0;
  }
  ::close(fd);
}

void on_fatal_signal(int sig, siginfo_t* info, void* context) {
  const char* name = sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS" : sig == SIGFPE ? "SIGFPE" : "SIGILL";
  // Only async-signal-safe calls: write(2), open/read and backtrace_symbols_fd (which does not allocate).
  put("\n*** fatal signal ");
  put(name);
  put(" at address ");
  put_hex(reinterpret_cast<uintptr_t>(info ? info->si_addr : nullptr));
#if defined(__x86_64__)
  const auto* uc = static_cast<const ucontext_t*>(context);
  put(", instruction pointer ");
  put_hex(static_cast<uintptr_t>(uc->uc_mcontext.gregs[REG_RIP]));
  put(", stack pointer ");
  put_hex(static_cast<uintptr_t>(uc->uc_mcontext.gregs[REG_RSP]));
  // After a call through a bad pointer the top of the stack holds the caller's return address.
  put(", word at the stack pointer ");
  put_hex(*reinterpret_cast<const uintptr_t*>(uc->uc_mcontext.gregs[REG_RSP]));
#else
  (void)context;
#endif
  put("\nbacktrace (addr2line -e <binary> <offset> resolves the +0x offsets):\n");
  void* frames[64];
  const int n = ::backtrace(frames, 64);
  ::backtrace_symbols_fd(frames, n, STDERR_FILENO);
  put("executable mappings (instruction pointer - start + offset = offset in that file):\n");
  put_executable_maps();
  std::signal(sig, SIG_DFL);  // die of the same signal, so the exit status still says what happened
  std::raise(sig);
}

const bool installed = [] {
  void* warm[1];
  ::backtrace(warm, 1);  // loads libgcc's unwinder now, not inside the handler
  // An alternate stack, so that a stack overflow still reaches the handler.
  static char alt_stack[64 * 1024];
  stack_t ss{};
  ss.ss_sp = alt_stack;
  ss.ss_size = sizeof(alt_stack);
  ::sigaltstack(&ss, nullptr);
  struct sigaction sa{};
  sa.sa_sigaction = on_fatal_signal;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL}) ::sigaction(sig, &sa, nullptr);
  return true;
}();

}  // namespace
