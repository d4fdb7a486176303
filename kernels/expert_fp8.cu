// Grouped expert projections over block-FP8 weights read as stored (e4m3 bytes with one f32 scale per
// br × bc block: DeepSeek-V3, Kimi K2, Qwen3-FP8's `weight_scale_inv`), for few tokens per expert (decode):
// the FP8 twin of expert_matmul.cu, one byte per weight. Each lane loads 16 weights of a row with one
// 16-byte load; 16 divides the block width, so they share one scale. Activations are bf16 or f16, sums
// f32. The GLU variant reads the stacked gate/up weight and writes silu(gate) · up.
#include "common.cuh"

constexpr int EF_WARPS = 4;
constexpr int EF_VEC = 16;

// An e4m3 byte's value ÷ 2^120: its sign, exponent and mantissa bits placed in an f32 (the bias
// difference 127 − 7 = 120 is folded into the block scale; e4m3 subnormals land on f32 subnormals).
__device__ __forceinline__ float e4m3_scaled_down(uint32_t b) {
    return __uint_as_float(((b & 0x80u) << 24) | ((b & 0x7fu) << 20));
}

template <typename T, int MT, int R, bool GLU>
__device__ void expert_fp8(const T* __restrict__ x, const uint8_t* __restrict__ w,
                           const float* __restrict__ wscale, const uint32_t* __restrict__ sorted,
                           const uint32_t* __restrict__ offsets, const uint32_t* __restrict__ active,
                           const float* __restrict__ scale, T* __restrict__ out, int N, int K,
                           int in_div, int E, int br, int bc) {
    static_assert(!GLU || R == 2, "a GLU warp reads one gate and one up row");
    const int slot = blockIdx.y;
    if (slot >= (int)active[E]) return;
    const int e = active[slot];
    const int start = offsets[e], end = offsets[e + 1];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int half = N / 2;
    const int n0 = GLU ? blockIdx.x * EF_WARPS + warp : (blockIdx.x * EF_WARPS + warp) * R;
    if (n0 >= (GLU ? half : N)) return;
    const uint8_t* we = w + (size_t)e * N * K;
    // [N / br, ⌈K / bc⌉] scales per expert (the launcher checks N % br == 0).
    const int scale_cols = (K + bc - 1) / bc;
    const float* se = wscale + (size_t)e * (N / br) * scale_cols;

    for (int m0 = start; m0 < end; m0 += MT) {
        const int mt = min(MT, end - m0);
        const T* xr[MT];
#pragma unroll
        for (int m = 0; m < MT; ++m)
            xr[m] = x + (size_t)(sorted[m0 + min(m, mt - 1)] / in_div) * K;
        float acc[R][MT];
#pragma unroll
        for (int r = 0; r < R; ++r)
#pragma unroll
            for (int m = 0; m < MT; ++m) acc[r][m] = 0.f;

        for (int k = lane * EF_VEC; k < K; k += 32 * EF_VEC) {
            float wv[R][EF_VEC];
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const int row = GLU ? n0 + r * half : n0 + r;
                if (GLU || row < N) {
                    const uint4 p = *reinterpret_cast<const uint4*>(we + (size_t)row * K + k);
                    const float s = se[(row / br) * scale_cols + k / bc] * 0x1p120f;
                    const uint32_t words[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
                    for (int j = 0; j < 4; ++j)
#pragma unroll
                        for (int b = 0; b < 4; ++b)
                            wv[r][j * 4 + b] = e4m3_scaled_down((words[j] >> (8 * b)) & 0xffu) * s;
                } else {
#pragma unroll
                    for (int v = 0; v < EF_VEC; ++v) wv[r][v] = 0.f;
                }
            }
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                if (m < mt) {
#pragma unroll
                    for (int h = 0; h < 2; ++h) {
                        const Pack<T, 8> p = *reinterpret_cast<const Pack<T, 8>*>(xr[m] + k + 8 * h);
#pragma unroll
                        for (int v = 0; v < 8; ++v) {
                            const float xv = to_f32(p.v[v]);
#pragma unroll
                            for (int r = 0; r < R; ++r) acc[r][m] += wv[r][8 * h + v] * xv;
                        }
                    }
                }
            }
        }
        if (GLU) {
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                const float g = warp_sum(acc[0][m]);
                const float u = warp_sum(acc[R - 1][m]);
                if (lane == 0 && m < mt) {
                    const uint32_t a = sorted[m0 + m];
                    out[(size_t)a * half + n0] = from_f32<T>(g / (1.f + __expf(-g)) * u);
                }
            }
        } else {
#pragma unroll
            for (int r = 0; r < R; ++r) {
#pragma unroll
                for (int m = 0; m < MT; ++m) {
                    const float s = warp_sum(acc[r][m]);
                    if (lane == 0 && m < mt && n0 + r < N) {
                        const uint32_t a = sorted[m0 + m];
                        out[(size_t)a * N + n0 + r] = from_f32<T>(scale ? s * scale[a] : s);
                    }
                }
            }
        }
    }
}

#define EXPERT_FP8(NAME, T, GLU)                                                                   \
    extern "C" __global__ void __launch_bounds__(EF_WARPS * 32)                                    \
        NAME(const T* x, const uint8_t* w, const float* wscale, const uint32_t* sorted,            \
             const uint32_t* offsets, const uint32_t* active, const float* scale, T* out, int N,   \
             int K, int in_div, int E, int br, int bc) {                                           \
        expert_fp8<T, 8, 2, GLU>(x, w, wscale, sorted, offsets, active, scale, out, N, K, in_div, \
                                 E, br, bc);                                                       \
    }

EXPERT_FP8(expert_matmul_fp8_bf16, __nv_bfloat16, false)
EXPERT_FP8(expert_matmul_fp8_f16, __half, false)
EXPERT_FP8(expert_glu_fp8_bf16, __nv_bfloat16, true)
EXPERT_FP8(expert_glu_fp8_f16, __half, true)
