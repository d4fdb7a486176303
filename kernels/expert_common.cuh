// The skeleton the grouped expert kernels share (expert_matmul.cu: weights in the activations' dtype;
// expert_fp8.cu: block-FP8 as stored): out[a] = scale[a] · W[e] · x[a / in_div] for every assignment a
// routed to expert e, over the sorted layout of moe_sort, for few tokens per expert (decode). Memory-bound:
// each warp streams R weight rows and applies them to up to MT of the expert's tokens at a time, so an
// expert's weights are read once per MT tokens. The GLU variant reads the stacked gate/up weight
// ([E, 2I, K]) and writes silu(gate) · up ([·, I]): each warp takes gate row j and up row I + j.
// Grid: x = row tiles, y = active-expert slots (blocks past the number of active experts exit at once).
// `Weights` (a policy) loads VEC weights of one row at column k, widened to f32.
#pragma once
#include "common.cuh"

constexpr int EXPERT_WARPS = 4;

template <typename T, int VEC, int MT, int R, bool GLU, typename Weights>
__device__ __forceinline__ void expert_rows(const T* __restrict__ x, Weights wts,
                                            const uint32_t* __restrict__ sorted,
                                            const uint32_t* __restrict__ offsets,
                                            const uint32_t* __restrict__ active,
                                            const float* __restrict__ scale, T* __restrict__ out,
                                            int N, int K, int in_div, int E) {
    static_assert(!GLU || R == 2, "a GLU warp reads one gate and one up row");
    // Activations are read XC at a time (at most 16 bytes per load).
    constexpr int XC = VEC < 16 / (int)sizeof(T) ? VEC : 16 / (int)sizeof(T);
    static_assert(VEC % XC == 0, "whole activation packs per step");
    const int slot = blockIdx.y;
    if (slot >= (int)active[E]) return;
    const int e = active[slot];
    const int start = offsets[e], end = offsets[e + 1];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    // Plain: the warp's first row. GLU: its output column (gate row n0, up row half + n0).
    const int half = N / 2;
    const int n0 =
        GLU ? blockIdx.x * EXPERT_WARPS + warp : (blockIdx.x * EXPERT_WARPS + warp) * R;
    if (n0 >= (GLU ? half : N)) return;
    wts.select(e, N, K);

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
                    wts.load(row, K, k, wv[r]);
                } else {
#pragma unroll
                    for (int v = 0; v < VEC; ++v) wv[r][v] = 0.f;
                }
            }
#pragma unroll
            for (int m = 0; m < MT; ++m) {
                if (m < mt) {
#pragma unroll
                    for (int c = 0; c < VEC / XC; ++c) {
                        const Pack<T, XC> p =
                            *reinterpret_cast<const Pack<T, XC>*>(xr[m] + k + XC * c);
#pragma unroll
                        for (int v = 0; v < XC; ++v) {
                            const float xv = to_f32(p.v[v]);
#pragma unroll
                            for (int r = 0; r < R; ++r) acc[r][m] += wv[r][XC * c + v] * xv;
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
