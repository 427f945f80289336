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

#ifdef __cplusplus
}
#endif

#endif  // EDGE_DEPLOY_BOARD_H_
