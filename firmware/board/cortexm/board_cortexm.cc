// edge-deploy firmware skeleton: Cortex-M with semihosting (newlib rdimon), e.g. QEMU
// `-M mps2-an386 -semihosting`. On a board without a debugger attached, replace this file
// with one that retargets stdout to the board's UART.
#include <cstdio>
#include <cstdlib>

#include "board/board.h"

extern "C" void initialise_monitor_handles(void);

extern "C" void board_init(void) { initialise_monitor_handles(); }

extern "C" int board_exit(int code) {
  std::fflush(stdout);
  std::exit(code);  // semihosting SYS_EXIT: ends the QEMU run
  return code;
}
