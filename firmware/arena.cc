// edge-deploy firmware skeleton (firmware/arena.cc), copied into every generated project.
// The tensor arena, sized by the generated model_arena.h: its own file, so a newly measured
// arena recompiles only this.
#include <cstddef>
#include <cstdint>

#include "model_arena.h"

alignas(16) uint8_t g_tensor_arena[model::kTensorArenaSize];
extern const size_t g_tensor_arena_size = sizeof(g_tensor_arena);
