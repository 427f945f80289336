// edge-deploy firmware skeleton: board support interface (host stdio, Cortex-M semihosting).
#ifndef EDGE_DEPLOY_BOARD_H_
#define EDGE_DEPLOY_BOARD_H_

#ifdef __cplusplus
extern "C" {
#endif

// Make stdout work (semihosting on Cortex-M; nothing on the host).
void board_init(void);
// The program's arguments when main() got none (Cortex-M: the semihosting command line, e.g.
// QEMU's -semihosting-config arg=...). Returns argc; argv points into a static buffer.
int board_arguments(int argc, char*** argv);
// Report the exit code to whoever runs the firmware, and return it for main().
int board_exit(int code);
// The HIL link: one byte (blocking; -1 when the link closed), and a whole buffer.
int board_read_byte(void);
void board_write(const unsigned char* data, unsigned long len);
// Core clock cycles since an arbitrary start, and whether the board counts them at all (0:
// no counter; callers then report "not measured", never 0 cycles).
unsigned long long board_cycles(void);
int board_counts_cycles(void);
// Microseconds since an arbitrary start, and whether the board measures them.
unsigned long long board_micros(void);
int board_measures_time(void);
// The board's name for INFO replies and the self-test header.
const char* board_name(void);

#ifdef __cplusplus
}
#endif

#endif  // EDGE_DEPLOY_BOARD_H_
