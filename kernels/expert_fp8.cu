// Grouped expert projections over block-FP8 weights read as stored (e4m3 bytes with one f32 scale per
// br × bc block: DeepSeek-V3, Kimi K2, Qwen3-FP8's `weight_scale_inv`): the shared skeleton of
// expert_common.cuh with one byte per weight. Each lane loads 16 weights of a row with one 16-byte load;
// 16 divides the block width, so they share one scale. Activations are bf16 or f16, sums f32.
#include "expert_common.cuh"

// An e4m3 byte's value ÷ 2^120: its sign, exponent and mantissa bits placed in an f32 (the bias
// difference 127 − 7 = 120 is folded into the block scale; e4m3 subnormals land on f32 subnormals).
__device__ __forceinline__ float e4m3_scaled_down(uint32_t b) {
    return __uint_as_float(((b & 0x80u) << 24) | ((b & 0x7fu) << 20));
}

struct Fp8Weights {
    const uint8_t* w;
    const float* wscale;
    int br, bc;
    const uint8_t* we;
    const float* se;
    int scale_cols;

    // [N / br, ⌈K / bc⌉] scales per expert (the launcher checks N % br == 0).
    __device__ __forceinline__ void select(int e, int N, int K) {
        we = w + (size_t)e * N * K;
        scale_cols = (K + bc - 1) / bc;
        se = wscale + (size_t)e * (N / br) * scale_cols;
    }

    __device__ __forceinline__ void load(int row, int K, int k, float* out) const {
        const uint4 p = *reinterpret_cast<const uint4*>(we + (size_t)row * K + k);
        const float s = se[(row / br) * scale_cols + k / bc] * 0x1p120f;
        const uint32_t words[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int b = 0; b < 4; ++b)
                out[j * 4 + b] = e4m3_scaled_down((words[j] >> (8 * b)) & 0xffu) * s;
    }
};

#define EXPERT_FP8(NAME, T, GLU)                                                                   \
    extern "C" __global__ void __launch_bounds__(EXPERT_WARPS * 32)                                \
        NAME(const T* x, const uint8_t* w, const float* wscale, const uint32_t* sorted,            \
             const uint32_t* offsets, const uint32_t* active, const float* scale, T* out, int N,   \
             int K, int in_div, int E, int br, int bc) {                                           \
        expert_rows<T, 16, 8, 2, GLU>(x, Fp8Weights{w, wscale, br, bc, nullptr, nullptr, 0},      \
                                      sorted, offsets, active, scale, out, N, K, in_div, E);       \
    }

EXPERT_FP8(expert_matmul_fp8_bf16, __nv_bfloat16, false)
EXPERT_FP8(expert_matmul_fp8_f16, __half, false)
EXPERT_FP8(expert_glu_fp8_bf16, __nv_bfloat16, true)
EXPERT_FP8(expert_glu_fp8_f16, __half, true)
