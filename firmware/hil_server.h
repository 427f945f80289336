// edge-deploy firmware skeleton: device side of the HIL serial protocol (docs/protocol.md).
#ifndef EDGE_DEPLOY_HIL_SERVER_H_
#define EDGE_DEPLOY_HIL_SERVER_H_

#include <cstdint>

// What one RUN measured: 0 in a field means "not measured" (the protocol's convention).
struct HilTiming {
  uint32_t cycles;
  uint32_t micros;
};

// Runs one inference: `in` holds every input tensor's bytes; writes every output tensor's
// bytes to `out` (at most `out_cap`) and their count to `out_len`. Returns 0 on success.
using HilRunFn = int (*)(const uint8_t* in, uint32_t in_len, uint8_t* out, uint32_t out_cap,
                         uint32_t* out_len, HilTiming* timing);

// Serves requests until the link closes (board_read_byte returns -1). `info` is the INFO
// reply text; `input_bytes` the exact RUN payload size. The receive and transmit buffers are
// static, sized from the model (model_settings.h: kHilMaxRequestPayload, kHilMaxReplyPayload).
void hil_serve(const char* info, uint32_t input_bytes, HilRunFn run);

uint32_t hil_crc32(const uint8_t* data, uint32_t len, uint32_t crc = 0);

#endif  // EDGE_DEPLOY_HIL_SERVER_H_
