// edge-deploy firmware skeleton: Cortex-M with semihosting (newlib rdimon), e.g. QEMU
// `-M mps2-an386 -semihosting`. On a board without a debugger attached, replace the stdout
// part with one that retargets it to the board's UART. board_config.h (generated from the
// board preset) holds the board's name, clock and UART.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "board/board.h"
#include "board/cortexm/board_config.h"

extern "C" void initialise_monitor_handles(void);

namespace {

// --- cycles: the DWT cycle counter where it counts, else SysTick at the core clock ----------
// QEMU models no DWT (its CYCCNT never moves), so there SysTick counts; under
// `qemu-system-arm -icount shift=0` its ticks are instructions x BOARD_CLOCK_HZ / 1e9.
volatile uint32_t* const kDemcr = reinterpret_cast<volatile uint32_t*>(0xE000EDFCu);
volatile uint32_t* const kDwtCtrl = reinterpret_cast<volatile uint32_t*>(0xE0001000u);
volatile uint32_t* const kDwtCyccnt = reinterpret_cast<volatile uint32_t*>(0xE0001004u);
volatile uint32_t* const kSysTickCsr = reinterpret_cast<volatile uint32_t*>(0xE000E010u);
volatile uint32_t* const kSysTickRvr = reinterpret_cast<volatile uint32_t*>(0xE000E014u);
volatile uint32_t* const kSysTickCvr = reinterpret_cast<volatile uint32_t*>(0xE000E018u);
constexpr uint32_t kSysTickSpan = 1u << 24;

enum class Counter { kNone, kDwt, kSysTick };
Counter g_counter = Counter::kNone;
volatile uint32_t g_systick_wraps = 0;
uint32_t g_dwt_high = 0, g_dwt_last = 0;

void StartCounter() {
#if BOARD_HAS_DWT
  *kDemcr |= 1u << 24;  // TRCENA
  *kDwtCyccnt = 0;
  *kDwtCtrl |= 1u;  // CYCCNTENA
  const uint32_t before = *kDwtCyccnt;
  for (volatile int i = 0; i < 64; ++i) {
  }
  if (*kDwtCyccnt != before) {
    g_counter = Counter::kDwt;
    return;
  }
#endif
  *kSysTickRvr = kSysTickSpan - 1;
  *kSysTickCvr = 0;
  *kSysTickCsr = 0x7;  // processor clock, interrupt on wrap, enable
  g_counter = Counter::kSysTick;
}

char g_cmdline[256];
char* g_argv[16];

// Semihosting call (Arm semihosting specification: BKPT 0xAB on M-profile)
int Semihost(int op, void* arg) {
  register int r0 __asm__("r0") = op;
  register void* r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

}  // namespace

extern "C" void SysTick_Handler(void) { g_systick_wraps = g_systick_wraps + 1; }

extern "C" void board_init(void) {
  initialise_monitor_handles();
  StartCounter();
}

extern "C" int board_arguments(int argc, char*** argv) {
  if (argc > 0) return argc;
  struct {
    char* buffer;
    int length;
  } block = {g_cmdline, static_cast<int>(sizeof(g_cmdline)) - 1};
  if (Semihost(0x15 /* SYS_GET_CMDLINE */, &block) != 0) return 0;
  g_cmdline[block.length] = '\0';
  int n = 0;
  for (char* p = std::strtok(g_cmdline, " "); p && n < 15; p = std::strtok(nullptr, " ")) g_argv[n++] = p;
  g_argv[n] = nullptr;
  *argv = g_argv;
  return n;
}

extern "C" int board_exit(int code) {
  std::fflush(stdout);
  std::exit(code);  // semihosting SYS_EXIT: ends the QEMU run
  return code;
}

extern "C" unsigned long long board_cycles(void) {
  if (g_counter == Counter::kDwt) {
    const uint32_t now = *kDwtCyccnt;  // 32 bits: extended while called at least once a wrap
    if (now < g_dwt_last) ++g_dwt_high;
    g_dwt_last = now;
    return (static_cast<unsigned long long>(g_dwt_high) << 32) | now;
  }
  if (g_counter == Counter::kSysTick) {
    uint32_t wraps, value;
    do {
      wraps = g_systick_wraps;
      value = *kSysTickCvr;
    } while (wraps != g_systick_wraps);
    return static_cast<unsigned long long>(wraps) * kSysTickSpan + (kSysTickSpan - 1 - value);
  }
  return 0;
}

extern "C" int board_counts_cycles(void) { return g_counter != Counter::kNone; }

extern "C" unsigned long long board_micros(void) { return board_cycles() / (BOARD_CLOCK_HZ / 1000000u); }
extern "C" int board_measures_time(void) { return board_counts_cycles(); }

#ifdef BOARD_UART0_BASE
// HIL over the Arm CMSDK APB UART0 (the MPS2/MPS3 boards as QEMU emulates them: `-serial pty`).
// Another board replaces these two functions with its own UART driver.
namespace {
struct CmsdkUart {
  volatile unsigned int data;
  volatile unsigned int state;  // bit 0: TX full, bit 1: RX full
  volatile unsigned int ctrl;   // bit 0: TX enable, bit 1: RX enable
  volatile unsigned int intstatus;
  volatile unsigned int bauddiv;
};
CmsdkUart* const kUart0 = reinterpret_cast<CmsdkUart*>(BOARD_UART0_BASE);

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
#else
extern "C" int board_read_byte(void) { return -1; }  // no UART driver: the HIL link is closed
extern "C" void board_write(const unsigned char*, unsigned long) {}
#endif

extern "C" const char* board_name(void) { return BOARD_NAME; }
