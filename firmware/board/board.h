// edge-deploy firmware skeleton: board support interface (host stdio, Cortex-M semihosting).
#ifndef EDGE_DEPLOY_BOARD_H_
#define EDGE_DEPLOY_BOARD_H_

#ifdef __cplusplus
extern "C" {
#endif

// Make stdout work (semihosting on Cortex-M; nothing on the host).
void board_init(void);
// Report the exit code to whoever runs the firmware, and return it for main().
int board_exit(int code);
// The HIL link: one byte (blocking; -1 when the link closed), and a whole buffer.
int board_read_byte(void);
void board_write(const unsigned char* data, unsigned long len);
// Microseconds since an arbitrary start (0 when the board has no timer).
unsigned long board_micros(void);
// Where the board sends HIL traffic: when not stdout, self-test text and frames can share a run.
const char* board_name(void);

#ifdef __cplusplus
}
#endif

#endif  // EDGE_DEPLOY_BOARD_H_
