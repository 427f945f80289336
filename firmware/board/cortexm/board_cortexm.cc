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

// HIL over UART0 of the Arm CMSDK (MPS2 AN386 as QEMU emulates it: `-serial pty`). Another
// board replaces these four functions with its own UART driver.
namespace {
struct CmsdkUart {
  volatile unsigned int data;
  volatile unsigned int state;  // bit 0: TX full, bit 1: RX full
  volatile unsigned int ctrl;   // bit 0: TX enable, bit 1: RX enable
  volatile unsigned int intstatus;
  volatile unsigned int bauddiv;
};
CmsdkUart* const kUart0 = reinterpret_cast<CmsdkUart*>(0x40004000u);

void UartInit() {
  static bool ready = false;
  if (ready) return;
  kUart0->bauddiv = 16;
  kUart0->ctrl = 0x3;
  ready = true;
}
}  // namespace

extern "C" int board_read_byte(void) {
  UartInit();
  while (!(kUart0->state & 0x2)) {
  }
  return static_cast<int>(kUart0->data & 0xFF);
}

extern "C" void board_write(const unsigned char* data, unsigned long len) {
  UartInit();
  for (unsigned long i = 0; i < len; ++i) {
    while (kUart0->state & 0x1) {
    }
    kUart0->data = data[i];
  }
}

extern "C" unsigned long board_micros(void) { return 0; }

extern "C" const char* board_name(void) { return "cortex-m (qemu mps2-an386 uart0)"; }
