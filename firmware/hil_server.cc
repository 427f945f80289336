// edge-deploy firmware skeleton: device side of the HIL serial protocol (docs/protocol.md).
// Frame: A5 5A | type | seq | u32 length | payload | u32 CRC-32 of type..payload (little-endian).
#include "hil_server.h"

#include <cstring>

#include "board/board.h"

namespace {

constexpr uint8_t kInfo = 0x01, kRun = 0x02, kInfoOk = 0x81, kRunOk = 0x82, kError = 0xFF;
constexpr uint16_t kErrCrc = 1, kErrUnknown = 2, kErrLength = 3, kErrInvoke = 4, kErrTooLarge = 5;
constexpr uint32_t kMaxPayload = 1u << 20;

// Request payloads are received here; replies are assembled in place after the header.
uint8_t g_rx[kMaxPayload + 16];
uint8_t g_tx[kMaxPayload + 16];

void PutU32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

uint32_t GetU32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | static_cast<uint32_t>(p[1]) << 8 |
         static_cast<uint32_t>(p[2]) << 16 | static_cast<uint32_t>(p[3]) << 24;
}

void Send(uint8_t type, uint8_t seq, uint32_t len) {  // payload already at g_tx + 8
  g_tx[0] = 0xA5;
  g_tx[1] = 0x5A;
  g_tx[2] = type;
  g_tx[3] = seq;
  PutU32(g_tx + 4, len);
  PutU32(g_tx + 8 + len, hil_crc32(g_tx + 2, 6 + len));
  board_write(g_tx, 12 + len);
}

void SendError(uint8_t seq, uint16_t code, const char* message) {
  const uint32_t n = static_cast<uint32_t>(std::strlen(message));
  g_tx[8] = static_cast<uint8_t>(code);
  g_tx[9] = static_cast<uint8_t>(code >> 8);
  std::memcpy(g_tx + 10, message, n);
  Send(kError, seq, 2 + n);
}

// Reads exactly n bytes; false when the link closed.
bool ReadExactly(uint8_t* dst, uint32_t n) {
  for (uint32_t i = 0; i < n; ++i) {
    const int c = board_read_byte();
    if (c < 0) return false;
    dst[i] = static_cast<uint8_t>(c);
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

void hil_serve(const char* info, uint32_t input_bytes, uint32_t output_bytes, HilRunFn run) {
  for (;;) {
    // resynchronise on the magic
    int c = board_read_byte();
    if (c < 0) return;
    if (c != 0xA5) continue;
    c = board_read_byte();
    if (c < 0) return;
    if (c != 0x5A) continue;
    uint8_t header[6];
    if (!ReadExactly(header, 6)) return;
    const uint8_t type = header[0], seq = header[1];
    const uint32_t len = GetU32(header + 2);
    if (len > kMaxPayload) {
      SendError(seq, kErrTooLarge, "payload too large");
      continue;
    }
    std::memcpy(g_rx, header, 6);
    if (!ReadExactly(g_rx + 6, len + 4)) return;
    if (hil_crc32(g_rx, 6 + len) != GetU32(g_rx + 6 + len)) {
      SendError(seq, kErrCrc, "bad CRC");
      continue;
    }
    const uint8_t* payload = g_rx + 6;
    if (type == kInfo) {
      const uint32_t n = static_cast<uint32_t>(std::strlen(info));
      std::memcpy(g_tx + 8, info, n);
      Send(kInfoOk, seq, n);
    } else if (type == kRun) {
      if (len != input_bytes) {
        SendError(seq, kErrLength, "RUN payload is not the model's input size");
        continue;
      }
      uint32_t out_len = 0, micros = 0;
      if (run(payload, len, g_tx + 16, output_bytes, &out_len, &micros) != 0) {
        SendError(seq, kErrInvoke, "invoke failed");
        continue;
      }
      PutU32(g_tx + 8, 0);  // cycles: not measured by this skeleton
      PutU32(g_tx + 12, micros);
      Send(kRunOk, seq, 8 + out_len);
    } else {
      SendError(seq, kErrUnknown, "unknown command");
    }
  }
}
