// edge-deploy firmware skeleton: device side of the HIL serial protocol (docs/protocol.md).
#ifndef EDGE_DEPLOY_HIL_SERVER_H_
#define EDGE_DEPLOY_HIL_SERVER_H_

#include <cstdint>

// Runs one inference: `in` holds every input tensor's bytes; writes every output tensor's
// bytes to `out` (at most `out_cap`), their count to `out_len`, and the inference time.
// Returns 0 on success.
using HilRunFn = int (*)(const uint8_t* in, uint32_t in_len, uint8_t* out, uint32_t out_cap,
                         uint32_t* out_len, uint32_t* micros);

// Serves INFO and RUN requests until the link closes (board_read_byte returns -1).
// `info` is the INFO reply text; `input_bytes` the exact RUN payload size.
void hil_serve(const char* info, uint32_t input_bytes, uint32_t output_bytes, HilRunFn run);

uint32_t hil_crc32(const uint8_t* data, uint32_t len, uint32_t crc = 0);

#endif  // EDGE_DEPLOY_HIL_SERVER_H_
