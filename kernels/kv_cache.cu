// The paged cache's writes: a step's keys/values (or MLA latents) through the slot mapping, and zeroing
// freed blocks of every layer in one launch.
#include "common.cuh"

// A slot-mapping entry that writes nothing: rows that pad a captured decode step to its batch size.
#define PAD_SLOT 0xffffffffu

// src: [tokens, row] contiguous; cache: [slots, row]; slots: [tokens].
template <typename T>
__device__ void kv_write(const T* __restrict__ src, T* __restrict__ cache,
                         const uint32_t* __restrict__ slots, int tokens, int row) {
    const long long n = (long long)tokens * row;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        const long long t = i / row;
        const long long j = i - t * row;
        const uint32_t slot = slots[t];
        if (slot != PAD_SLOT) cache[(long long)slot * row + j] = src[i];
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

// Zeroes blocks `blocks[0..n_blocks)` of cache tensor `blockIdx.y`, whose first byte is `bases[y]` and
// whose blocks take `block_bytes[y]` bytes each (a multiple of sizeof(U); bases aligned to it).
template <typename U>
__device__ void kv_zero_blocks(const unsigned long long* __restrict__ bases,
                               const unsigned long long* __restrict__ block_bytes,
                               const uint32_t* __restrict__ blocks, int n_blocks, U zero) {
    U* base = reinterpret_cast<U*>(bases[blockIdx.y]);
    const unsigned long long units = block_bytes[blockIdx.y] / sizeof(U);
    const unsigned long long n = units * (unsigned long long)n_blocks;
    for (unsigned long long i = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x; i < n;
         i += (unsigned long long)gridDim.x * blockDim.x) {
        const unsigned long long b = i / units;
        base[(unsigned long long)blocks[b] * units + (i - b * units)] = zero;
    }
}

extern "C" __global__ void kv_zero_blocks_v16(const unsigned long long* bases,
                                              const unsigned long long* block_bytes,
                                              const uint32_t* blocks, int n_blocks) {
    kv_zero_blocks<uint4>(bases, block_bytes, blocks, n_blocks, make_uint4(0, 0, 0, 0));
}

extern "C" __global__ void kv_zero_blocks_b2(const unsigned long long* bases,
                                             const unsigned long long* block_bytes,
                                             const uint32_t* blocks, int n_blocks) {
    kv_zero_blocks<uint16_t>(bases, block_bytes, blocks, n_blocks, (uint16_t)0);
}
