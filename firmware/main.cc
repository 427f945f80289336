// edge-deploy firmware skeleton (firmware/main.cc), copied into every generated project.
// Edit the original in the edge-deploy repository, not the copy.
//
// At boot: load the model, register exactly its ops, allocate the measured arena, then run
// every golden vector and compare with the outputs the TFLM Python interpreter computed on the
// host. Prints one line per vector and "SELFTEST PASS n/n" or "SELFTEST FAIL k/n" (k failed).
// Then, for hardware-in-the-loop runs, serve the HIL protocol (docs/protocol.md): on the host
// with `selftest --serve` (stdin/stdout are the link; no self-test text), on a board when built
// with -DEDGE_DEPLOY_HIL_SERVER (the board's UART is the link). Each vector's line says how
// long it took: core cycles where the board counts them, microseconds on the host, "not
// measured" otherwise (never 0). Built with -DEDGE_DEPLOY_HIL_TENSORS (CMake -DHIL_TENSORS=ON),
// the interpreter preserves every tensor (TFLM's linear memory planner, in the larger arena of
// model_arena.h) and the HIL server answers TENSOR with any of them after a RUN.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "board/board.h"
#if defined(EDGE_DEPLOY_HIL_SERVER) || defined(EDGE_DEPLOY_HIL_STDIO)
#include "hil_server.h"
#define EDGE_DEPLOY_HIL 1
#endif
#include "model_data.h"
#include "model_ops.h"
#include "model_settings.h"
#include "test_vectors.h"
#include "tensorflow/lite/micro/micro_interpreter.h"
#ifdef EDGE_DEPLOY_HIL_TENSORS
#include "tensorflow/lite/micro/micro_utils.h"
#endif
#include "tensorflow/lite/schema/schema_generated.h"
#if __has_include("tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h")
// a tree made for TARGET=cortex_m_generic prints TFLM's messages only through a callback
#include "tensorflow/lite/micro/cortex_m_generic/debug_log_callback.h"
#define EDGE_DEPLOY_DEBUG_LOG_CALLBACK 1
#endif

// arena.cc: sized by model_arena.h
extern uint8_t g_tensor_arena[];
extern const size_t g_tensor_arena_size;

namespace {

// What one inference took; 0 in a field: not measured
struct Timing {
  unsigned long long cycles = 0;
  unsigned long long micros = 0;
};

// Largest absolute difference between an output tensor and its expected values.
long MaxDifference(const TfLiteTensor* tensor, const void* expected, int elements, int* first_index) {
  long worst = 0;
  *first_index = -1;
  for (int i = 0; i < elements; ++i) {
    long got = 0;
    long want = 0;
    switch (tensor->type) {
      case kTfLiteInt8:
        got = tensor->data.int8[i];
        want = static_cast<const int8_t*>(expected)[i];
        break;
      case kTfLiteUInt8:
        got = tensor->data.uint8[i];
        want = static_cast<const uint8_t*>(expected)[i];
        break;
      case kTfLiteInt16:
        got = tensor->data.i16[i];
        want = static_cast<const int16_t*>(expected)[i];
        break;
      case kTfLiteInt32:
        got = tensor->data.i32[i];
        want = static_cast<const int32_t*>(expected)[i];
        break;
      default:
        return -1;  // float outputs are not produced by the deployable modes
    }
    const long diff = got > want ? got - want : want - got;
    if (diff > worst) {
      worst = diff;
      if (*first_index < 0) *first_index = i;
    }
  }
  return worst;
}

tflite::MicroInterpreter* g_interpreter = nullptr;
const tflite::Model* g_model = nullptr;

#ifdef EDGE_DEPLOY_HIL_TENSORS
constexpr bool kPreserveAllTensors = true;
#else
constexpr bool kPreserveAllTensors = false;
#endif

// One inference, timed with what the board has (cycles, microseconds, or neither).
bool TimedInvoke(Timing* timing) {
  const unsigned long long c0 = board_cycles(), t0 = board_micros();
  const bool ok = g_interpreter->Invoke() == kTfLiteOk;
  const unsigned long long c1 = board_cycles(), t1 = board_micros();
  timing->cycles = board_counts_cycles() ? c1 - c0 : 0;
  timing->micros = board_measures_time() ? t1 - t0 : 0;
  return ok;
}

#ifdef EDGE_DEPLOY_HIL
uint32_t Clamp32(unsigned long long v) { return v > 0xFFFFFFFFull ? 0xFFFFFFFFu : static_cast<uint32_t>(v); }

int RunOnce(const uint8_t* in, uint32_t in_len, uint8_t* out, uint32_t out_cap, uint32_t* out_len,
            HilTiming* timing) {
  if (model::kStateful && g_interpreter->Reset() != kTfLiteOk) return 1;  // from the reset state, as the host
  uint32_t offset = 0;
  for (int i = 0; i < model::kNumInputs; ++i) {
    TfLiteTensor* input = g_interpreter->input(i);
    if (offset + input->bytes > in_len) return 1;
    std::memcpy(input->data.raw, in + offset, input->bytes);
    offset += static_cast<uint32_t>(input->bytes);
  }
  Timing measured;
  if (!TimedInvoke(&measured)) return 1;
  // 0 means "not measured"; a real measurement of 0 is reported as 1
  timing->cycles = measured.cycles ? Clamp32(measured.cycles) : (board_counts_cycles() ? 1 : 0);
  timing->micros = measured.micros ? Clamp32(measured.micros) : (board_measures_time() ? 1 : 0);
  *out_len = 0;
  for (int o = 0; o < model::kNumOutputs; ++o) {
    const TfLiteTensor* output = g_interpreter->output(o);
    if (*out_len + output->bytes > out_cap) return 1;
    std::memcpy(out + *out_len, output->data.raw, output->bytes);
    *out_len += static_cast<uint32_t>(output->bytes);
  }
  return 0;
}

#ifdef EDGE_DEPLOY_HIL_TENSORS
// TENSOR: any tensor of the main subgraph as the last Invoke left it (all are preserved).
int ReadTensor(uint32_t index, HilTensorView* view) {
  const auto* tensors = g_model->subgraphs()->Get(0)->tensors();
  if (tensors == nullptr || index >= tensors->size()) return kHilTensorOutOfRange;
  const TfLiteEvalTensor* tensor = g_interpreter->GetTensor(static_cast<int>(index), 0);
  if (tensor == nullptr || tensor->dims == nullptr) return kHilTensorNotPreserved;
  view->type = static_cast<uint8_t>(tensor->type);
  view->rank = static_cast<uint8_t>(tensor->dims->size);
  view->dims = tensor->dims->data;
  view->data = static_cast<const uint8_t*>(tensor->data.data);
  view->bytes = view->data ? static_cast<uint32_t>(tflite::EvalTensorBytes(tensor)) : 0;
  return 0;
}
constexpr HilTensorFn kReadTensor = ReadTensor;
#else
constexpr HilTensorFn kReadTensor = nullptr;  // TENSOR is answered with error 6
#endif

void Serve(size_t arena_size) {
  static char info[768];
  uint32_t input_bytes = 0;
  for (int i = 0; i < model::kNumInputs; ++i) input_bytes += g_interpreter->input(i)->bytes;
  std::snprintf(info, sizeof(info),
                "model_sha256=%s\nmodel_bytes=%u\narena_bytes=%u\nboard=%s\nfirmware=%s\nprotocol=2\n"
                "timer=%s\ntensors=%s\n",
                MODEL_DATA_SHA256, g_model_data_len, static_cast<unsigned>(arena_size), board_name(),
                MODEL_FIRMWARE_GENERATOR,
                board_counts_cycles() ? "cycles" : (board_measures_time() ? "microseconds" : "none"),
                kPreserveAllTensors ? "preserved" : "none");
  hil_serve(info, input_bytes, RunOnce, kReadTensor);
}
#endif

#ifdef EDGE_DEPLOY_DEBUG_LOG_CALLBACK
void PrintDebugLog(const char* s) { std::fputs(s, stdout); }
#endif

}  // namespace

int main(int argc, char** argv) {
  board_init();
#ifdef EDGE_DEPLOY_DEBUG_LOG_CALLBACK
  RegisterDebugLogCallback(PrintDebugLog);
#endif
  argc = board_arguments(argc, &argv);
  size_t arena_size = g_tensor_arena_size;
  // "--arena N" (N <= the compiled size) probes the smallest arena (on a board: through the
  // semihosting command line, e.g. QEMU's -semihosting-config arg=...); the host build's
  // "--serve" answers HIL requests on stdin/stdout instead of running the self-test.
  const bool serve_only = argc == 2 && std::strcmp(argv[1], "--serve") == 0;
  if (argc == 3 && std::strcmp(argv[1], "--arena") == 0) {
    const unsigned long asked = std::strtoul(argv[2], nullptr, 10);
    if (asked > 0 && asked <= arena_size) arena_size = asked;
  }

  const tflite::Model* tfl_model = tflite::GetModel(g_model_data);
  if (tfl_model->version() != TFLITE_SCHEMA_VERSION) {
    std::printf("SELFTEST FAIL: model schema version %u, this TFLM supports %d\n",
                static_cast<unsigned>(tfl_model->version()), TFLITE_SCHEMA_VERSION);
    return board_exit(2);
  }
  static model::OpResolver resolver;
  if (model::RegisterOps(resolver) != kTfLiteOk) {
    std::printf("SELFTEST FAIL: op registration failed\n");
    return board_exit(2);
  }
  static tflite::MicroInterpreter interpreter(tfl_model, resolver, g_tensor_arena, arena_size, nullptr, nullptr,
                                              kPreserveAllTensors);
  if (interpreter.AllocateTensors() != kTfLiteOk) {
    std::printf("SELFTEST FAIL: AllocateTensors failed with a %u-byte arena\n",
                static_cast<unsigned>(arena_size));
    return board_exit(2);
  }
  g_interpreter = &interpreter;
  g_model = tfl_model;
  if (serve_only) {
#ifdef EDGE_DEPLOY_HIL
    Serve(arena_size);
    return board_exit(0);
#else
    std::printf("--serve: this build has no HIL server (build with -DHIL_SERVER=ON)\n");
    return board_exit(2);
#endif
  }
  std::printf("model %s: %u bytes, sha256 %s, on %s\n", model::kModelName, g_model_data_len,
              MODEL_DATA_SHA256, board_name());
  std::printf("arena: %u of %u bytes used\n", static_cast<unsigned>(interpreter.arena_used_bytes()),
              static_cast<unsigned>(arena_size));

  int failed = 0;
  for (int v = 0; v < model::kNumTestVectors; ++v) {
    // a stateful model starts every vector from the reset state, as its expected outputs did
    if (model::kStateful && interpreter.Reset() != kTfLiteOk) {
      std::printf("vector %d (%s): FAIL reset error\n", v, model::kTestVectorNames[v]);
      ++failed;
      continue;
    }
    for (int i = 0; i < model::kNumInputs; ++i) {
      TfLiteTensor* input = interpreter.input(i);
      std::memcpy(input->data.raw, model::kTestInputs[v][i], model::kInputBytes[i]);
    }
    Timing timing;
    if (!TimedInvoke(&timing)) {
      std::printf("vector %d (%s): FAIL invoke error\n", v, model::kTestVectorNames[v]);
      ++failed;
      continue;
    }
    long worst = 0;
    bool ok = true;
    for (int o = 0; o < model::kNumOutputs; ++o) {
      int first = -1;
      const long diff = MaxDifference(interpreter.output(o), model::kTestExpected[v][o],
                                      model::kOutputElements[o], &first);
      if (diff < 0 || diff > model::kTestTolerance) {
        std::printf("vector %d (%s): FAIL output %d differs by %ld at element %d\n", v,
                    model::kTestVectorNames[v], o, diff, first);
        ok = false;
      }
      if (diff > worst) worst = diff;
    }
    char took[48];
    if (board_counts_cycles()) {
      std::snprintf(took, sizeof(took), "%llu cycles", timing.cycles);
    } else if (board_measures_time()) {
      std::snprintf(took, sizeof(took), "%llu us", timing.micros);
    } else {
      std::snprintf(took, sizeof(took), "time not measured");
    }
    if (ok) std::printf("vector %d (%s): PASS max diff %ld, %s\n", v, model::kTestVectorNames[v], worst, took);
    if (!ok) ++failed;
  }
  if (failed) {
    std::printf("SELFTEST FAIL %d/%d\n", failed, model::kNumTestVectors);
  } else {
    std::printf("SELFTEST PASS %d/%d\n", model::kNumTestVectors, model::kNumTestVectors);
  }
#if defined(EDGE_DEPLOY_HIL_SERVER) && defined(EDGE_DEPLOY_HIL)
  std::printf("HIL: serving on %s\n", board_name());
  std::fflush(stdout);
  Serve(arena_size);
#endif
  return board_exit(failed ? 1 : 0);
}
