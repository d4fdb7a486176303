// Writing a step's keys/values (or MLA latents) into the paged cache through the slot mapping.
#include "common.cuh"

// src: [tokens, row] contiguous; cache: [slots, row]; slots: [tokens].
template <typename T>
__device__ void kv_write(const T* __restrict__ src, T* __restrict__ cache,
                         const uint32_t* __restrict__ slots, int tokens, int row) {
    const long long n = (long long)tokens * row;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const long long t = i / row;
        const long long j = i - t * row;
        cache[(long long)slots[t] * row + j] = src[i];
    }
}

#define KV_WRITE(NAME, T)                                                                          \
    extern "C" __global__ void NAME(const T* src, T* cache, const uint32_t* slots, int tokens,    \
                                    int row) {                                                     \
        kv_write<T>(src, cache, slots, tokens, row);                                               \
    }
KV_WRITE(kv_write_f32, float)
KV_WRITE(kv_write_bf16, __nv_bfloat16)
KV_WRITE(kv_write_f16, __half)
