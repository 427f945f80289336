// edge-deploy firmware skeleton: host build (stdio, process exit code).
#include <time.h>
#include <unistd.h>

#include <cstdio>

#include "board/board.h"

extern "C" void board_init(void) {}

extern "C" int board_arguments(int argc, char***) { return argc; }

extern "C" int board_exit(int code) {
  std::fflush(stdout);
  return code;
}

// HIL over stdin/stdout: `selftest --serve` with both attached to a serial port or a pty.
extern "C" int board_read_byte(void) {
  unsigned char c;
  return read(0, &c, 1) == 1 ? c : -1;
}

extern "C" void board_write(const unsigned char* data, unsigned long len) {
  while (len > 0) {
    const ssize_t n = write(1, data, len);
    if (n <= 0) return;
    data += n;
    len -= static_cast<unsigned long>(n);
  }
}

extern "C" unsigned long long board_cycles(void) { return 0; }
extern "C" int board_counts_cycles(void) { return 0; }  // a host has no fixed clock to count

extern "C" unsigned long long board_micros(void) {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<unsigned long long>(ts.tv_sec) * 1000000ull +
         static_cast<unsigned long long>(ts.tv_nsec / 1000);
}
extern "C" int board_measures_time(void) { return 1; }

extern "C" const char* board_name(void) { return "host"; }
