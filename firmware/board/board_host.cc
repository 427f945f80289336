// edge-deploy firmware skeleton: host build (stdio, process exit code).
#include <cstdio>

#include "board/board.h"

extern "C" void board_init(void) {}

extern "C" int board_exit(int code) {
  std::fflush(stdout);
  return code;
}
