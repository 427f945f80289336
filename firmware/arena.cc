// edge-deploy firmware skeleton (firmware/arena.cc), copied into every generated project.
// The tensor arena, sized by the generated model_arena.h: its own file, so a newly measured
// arena recompiles only this.
#include <cstddef>
#include <cstdint>

#include "model_arena.h"

#ifdef EDGE_DEPLOY_HIL_TENSORS
// every tensor preserved for the HIL server's TENSOR request: nothing shares memory
alignas(16) uint8_t g_tensor_arena[model::kPreservedTensorArenaSize];
#else
alignas(16) uint8_t g_tensor_arena[model::kTensorArenaSize];
#endif
extern const size_t g_tensor_arena_size = sizeof(g_tensor_arena);
