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

// One tensor as the last inference left it, for TENSOR (docs/protocol.md): `type` is TFLite's
// TfLiteType code, `dims` has `rank` entries, `data` holds `bytes` bytes.
struct HilTensorView {
  uint8_t type;
  uint8_t rank;
  const int* dims;
  const uint8_t* data;
  uint32_t bytes;
};

// What a HilTensorFn returns besides 0 (the protocol's error codes for TENSOR).
constexpr int kHilTensorNotPreserved = 6;
constexpr int kHilTensorOutOfRange = 7;

// Fills `view` with tensor `index` (the flatbuffer's, main subgraph). Returns 0, or one of the
// codes above.
using HilTensorFn = int (*)(uint32_t index, HilTensorView* view);

// Serves requests until the link closes (board_read_byte returns -1). `info` is the INFO
// reply text; `input_bytes` the exact RUN payload size. The receive and transmit buffers are
// static, sized from the model (model_settings.h: kHilMaxRequestPayload, kHilMaxReplyPayload).
// `tensor` answers TENSOR; nullptr (firmware that does not preserve tensors): error 6.
void hil_serve(const char* info, uint32_t input_bytes, HilRunFn run, HilTensorFn tensor = nullptr);

uint32_t hil_crc32(const uint8_t* data, uint32_t len, uint32_t crc = 0);

#endif  // EDGE_DEPLOY_HIL_SERVER_H_
