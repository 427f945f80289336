// edge-deploy firmware skeleton: device side of the HIL serial protocol (docs/protocol.md).
// Frame: A5 5A | type | seq | u32 length | payload | u32 CRC-32 of type..payload (little-endian).
// Each request type is one handler in kHandlers: a new request is a new function and a line.
#include "hil_server.h"

#include <cstring>

#include "board/board.h"
#include "model_settings.h"

namespace {

constexpr uint8_t kInfo = 0x01, kRun = 0x02, kTensor = 0x03;
constexpr uint8_t kInfoOk = 0x81, kRunOk = 0x82, kTensorOk = 0x83, kError = 0xFF;
constexpr uint16_t kErrCrc = 1, kErrUnknown = 2, kErrLength = 3, kErrInvoke = 4, kErrTooLarge = 5;
constexpr uint16_t kErrNoInference = 8;  // 6 and 7: kHilTensorNotPreserved, kHilTensorOutOfRange
constexpr uint32_t kHeader = 8, kCrc = 4;  // magic + type + seq + length; CRC-32

// Sized from this model's inputs and outputs (model_settings.h), not a fixed megabyte: a
// request is received after its 2 magic bytes (6 header bytes + payload + CRC); a reply is
// assembled in place after its header.
uint8_t g_rx[6 + model::kHilMaxRequestPayload + kCrc];
uint8_t g_tx[kHeader + model::kHilMaxReplyPayload + kCrc];

struct Request {
  uint8_t seq;
  const uint8_t* payload;
  uint32_t length;
};

struct Server {
  const char* info;
  uint32_t input_bytes;
  HilRunFn run;
  HilTensorFn tensor;
};

// TENSOR reads what the last RUN left: true after a RUN whose invoke succeeded.
bool g_have_inference = false;

void PutU32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

uint32_t GetU32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}

uint8_t* ReplyPayload() { return g_tx + kHeader; }

void Send(uint8_t type, uint8_t seq, uint32_t len) {  // payload already at ReplyPayload()
  g_tx[0] = 0xA5;
  g_tx[1] = 0x5A;
  g_tx[2] = type;
  g_tx[3] = seq;
  PutU32(g_tx + 4, len);
  PutU32(g_tx + kHeader + len, hil_crc32(g_tx + 2, 6 + len));
  board_write(g_tx, kHeader + len + kCrc);
}

void SendError(uint8_t seq, uint16_t code, const char* message) {
  uint32_t n = static_cast<uint32_t>(std::strlen(message));
  if (n > model::kHilMaxReplyPayload - 2) n = model::kHilMaxReplyPayload - 2;
  ReplyPayload()[0] = static_cast<uint8_t>(code);
  ReplyPayload()[1] = static_cast<uint8_t>(code >> 8);
  std::memcpy(ReplyPayload() + 2, message, n);
  Send(kError, seq, 2 + n);
}

void HandleInfo(const Server& server, const Request& request) {
  uint32_t n = static_cast<uint32_t>(std::strlen(server.info));
  if (n > model::kHilMaxReplyPayload) n = model::kHilMaxReplyPayload;
  std::memcpy(ReplyPayload(), server.info, n);
  Send(kInfoOk, request.seq, n);
}

void HandleRun(const Server& server, const Request& request) {
  if (request.length != server.input_bytes) {
    SendError(request.seq, kErrLength, "RUN payload is not the model's input size");
    return;
  }
  uint32_t out_len = 0;
  HilTiming timing = {0, 0};
  uint8_t* out = ReplyPayload() + 8;
  g_have_inference = false;
  if (server.run(request.payload, request.length, out, model::kHilMaxReplyPayload - 8, &out_len, &timing) != 0) {
    SendError(request.seq, kErrInvoke, "invoke failed");
    return;
  }
  g_have_inference = true;
  PutU32(ReplyPayload(), timing.cycles);
  PutU32(ReplyPayload() + 4, timing.micros);
  Send(kRunOk, request.seq, 8 + out_len);
}

// Reply: u32 index, u8 type, u8 rank, u16 0, rank x i32 dims, u32 total bytes, u32 offset, then
// as many of the tensor's bytes from offset on as fit the reply buffer.
void HandleTensor(const Server& server, const Request& request) {
  if (request.length != 8) {
    SendError(request.seq, kErrLength, "TENSOR payload is u32 tensor index, u32 byte offset");
    return;
  }
  if (server.tensor == nullptr) {
    SendError(request.seq, kHilTensorNotPreserved,
              "tensors are not preserved: build the firmware with -DHIL_TENSORS=ON");
    return;
  }
  if (!g_have_inference) {
    SendError(request.seq, kErrNoInference, "no inference to read from: send RUN first");
    return;
  }
  const uint32_t index = GetU32(request.payload), offset = GetU32(request.payload + 4);
  HilTensorView view = {0, 0, nullptr, nullptr, 0};
  const int status = server.tensor(index, &view);
  if (status == kHilTensorOutOfRange) {
    SendError(request.seq, kHilTensorOutOfRange, "tensor index out of range");
    return;
  }
  if (status != 0) {
    SendError(request.seq, kHilTensorNotPreserved, "this tensor is not preserved");
    return;
  }
  if (offset > view.bytes) {
    SendError(request.seq, kErrLength, "offset beyond the tensor's end");
    return;
  }
  const uint32_t header = 8 + 4u * view.rank + 8;
  if (header >= model::kHilMaxReplyPayload) {
    SendError(request.seq, kErrTooLarge, "the tensor's header does not fit the reply buffer");
    return;
  }
  uint8_t* p = ReplyPayload();
  PutU32(p, index);
  p[4] = view.type;
  p[5] = view.rank;
  p[6] = p[7] = 0;
  for (uint32_t d = 0; d < view.rank; ++d) PutU32(p + 8 + 4 * d, static_cast<uint32_t>(view.dims[d]));
  PutU32(p + header - 8, view.bytes);
  PutU32(p + header - 4, offset);
  uint32_t n = view.bytes - offset;
  if (n > model::kHilMaxReplyPayload - header) n = model::kHilMaxReplyPayload - header;
  if (n) std::memcpy(p + header, view.data + offset, n);
  Send(kTensorOk, request.seq, header + n);
}

struct Handler {
  uint8_t type;
  void (*handle)(const Server&, const Request&);
};
constexpr Handler kHandlers[] = {
    {kInfo, HandleInfo},
    {kRun, HandleRun},
    {kTensor, HandleTensor},
};

// Reads exactly n bytes; false when the link closed.
bool ReadExactly(uint8_t* dst, uint32_t n) {
  for (uint32_t i = 0; i < n; ++i) {
    const int c = board_read_byte();
    if (c < 0) return false;
    dst[i] = static_cast<uint8_t>(c);
  }
  return true;
}

// Skips a payload too large for the receive buffer (and its CRC), so the link stays in step.
bool Skip(uint32_t n) {
  for (uint32_t i = 0; i < n; ++i) {
    if (board_read_byte() < 0) return false;
  }
  return true;
}

}  // namespace

uint32_t hil_crc32(const uint8_t* data, uint32_t len, uint32_t crc) {
  crc = ~crc;
  for (uint32_t i = 0; i < len; ++i) {
    crc ^= data[i];
    for (int b = 0; b < 8; ++b) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return ~crc;
}

void hil_serve(const char* info, uint32_t input_bytes, HilRunFn run, HilTensorFn tensor) {
  const Server server = {info, input_bytes, run, tensor};
  for (;;) {
    // resynchronise on the magic
    int c = board_read_byte();
    if (c < 0) return;
    if (c != 0xA5) continue;
    c = board_read_byte();
    if (c < 0) return;
    if (c != 0x5A) continue;
    if (!ReadExactly(g_rx, 6)) return;
    const uint8_t type = g_rx[0], seq = g_rx[1];
    const uint32_t len = GetU32(g_rx + 2);
    if (len > model::kHilMaxRequestPayload) {
      if (len > (1u << 20)) {  // the protocol's limit: a damaged length, nothing to skip
        SendError(seq, kErrTooLarge, "payload too large");
        continue;
      }
      if (!Skip(len + kCrc)) return;
      SendError(seq, kErrTooLarge, "payload too large for this model's buffers");
      continue;
    }
    if (!ReadExactly(g_rx + 6, len + kCrc)) return;
    if (hil_crc32(g_rx, 6 + len) != GetU32(g_rx + 6 + len)) {
      SendError(seq, kErrCrc, "bad CRC");
      continue;
    }
    const Request request = {seq, g_rx + 6, len};
    bool handled = false;
    for (const Handler& h : kHandlers) {
      if (h.type == type) {
        h.handle(server, request);
        handled = true;
        break;
      }
    }
    if (!handled) SendError(seq, kErrUnknown, "unknown command");
  }
}
