// Grouped expert projection for few tokens per expert (decode): out[a] = scale[a] · W[e] · x[a / in_div]
// for every assignment a routed to expert e, over the sorted layout of moe_sort. The GLU variant reads
// the stacked gate/up weight ([E, 2I, K]) and writes silu(gate) · up ([·, I]) straight away: each warp
// takes gate row j and up row I + j. Memory-bound: each warp
// streams R weight rows with 16-byte loads and applies them to up to MT of the expert's tokens at a time,
// so an expert's weights are read once per MT tokens. Grid: x = row tiles, y = active-expert slots
// (blocks past the number of active experts exit at once).
#include "common.cuh"

constexpr int EM_WARPS = 4;

template <typename T, int VEC, int MT, int R, bool GLU>
__device__ void expert_matmul(const T* __restrict__ x, const T* __restrict__ w,
                              const uint32_t* __restrict__ sorted, const uint32_t* __restrict__ offsets,
                              const uint32_t* __restrict__ active, const float* __restrict__ scale,
                              T* __restrict__ out, int N, int K, int in_div, int E) {
    static_assert(!GLU || R == 2, "a GLU warp reads one gate and one up row");
    const int slot = blockIdx.y;
    if (slot >= (int)active[E]) return;
    const int e = active[slot];
    const int start = offsets[e], end = offsets[e + 1];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // Plain: the warp's first row. GLU: its output column (gate row n0, up row half + n0).
    const int half = N / 2;
    const int n0 = GLU ? blockIdx.x * EM_WARPS + warp : (blockIdx.x * EM_WARPS + warp) * R;
    if (n0 >= (GLU ? half : N)) return;
    const T* we = w + (size_t)e * N * K;

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

        for (int k = lane * VEC; k < K; k += 32 * VEC) {
            float wv[R][VEC];
#pragma unroll
            for (int r = 0; r < R; ++r) {
                const int row = GLU ? n0 + r * half : n0 + r;
                if (GLU || row < N) {
                    const Pack<T, VEC> p =
                        *reinterpret_cast<const Pack<T, VEC>*>(we + (size_t)row * K + k);
#pragma unroll
                    for (int v = 0; v < VEC; ++v) wv[r][v] = to_f32(p.v[v]);
                } else {
#pragma unroll
                    for (int v = 0; v < VEC; ++v) wv[r][v] = 0.f;
                }
            }
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                if (m < mt) {
                    const Pack<T, VEC> p = *reinterpret_cast<const Pack<T, VEC>*>(xr[m] + k);
#pragma unroll
                    for (int v = 0; v < VEC; ++v) {
                        const float xv = to_f32(p.v[v]);
#pragma unroll
                        for (int r = 0; r < R; ++r) acc[r][m] += wv[r][v] * xv;
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

#define EXPERT_MATMUL(NAME, T, VEC, GLU)                                                           \
    extern "C" __global__ void __launch_bounds__(EM_WARPS * 32)                                    \
        NAME(const T* x, const T* w, const uint32_t* sorted, const uint32_t* offsets,              \
             const uint32_t* active, const float* scale, T* out, int N, int K, int in_div, int E) { \
        expert_matmul<T, VEC, 8, 2, GLU>(x, w, sorted, offsets, active, scale, out, N, K, in_div, \
                                         E);                                                       \
    }

EXPERT_MATMUL(expert_matmul_f32_v4, float, 4, false)
EXPERT_MATMUL(expert_matmul_bf16_v8, __nv_bfloat16, 8, false)
EXPERT_MATMUL(expert_matmul_f16_v8, __half, 8, false)
EXPERT_MATMUL(expert_matmul_f32_v1, float, 1, false)
EXPERT_MATMUL(expert_matmul_bf16_v1, __nv_bfloat16, 1, false)
EXPERT_MATMUL(expert_matmul_f16_v1, __half, 1, false)
EXPERT_MATMUL(expert_glu_f32_v4, float, 4, true)
EXPERT_MATMUL(expert_glu_bf16_v8, __nv_bfloat16, 8, true)
EXPERT_MATMUL(expert_glu_f16_v8, __half, 8, true)
EXPERT_MATMUL(expert_glu_f32_v1, float, 1, true)
EXPERT_MATMUL(expert_glu_bf16_v1, __nv_bfloat16, 1, true)
EXPERT_MATMUL(expert_glu_f16_v1, __half, 1, true)
