// Attention over the paged cache for every query token of a batch (decode and prefill alike): each token
// attends to its own sequence's visible context (causal, optionally a sliding window), read through the
// sequence's slot list. One kernel serves grouped-query attention (a block takes up to G query heads that
// share one cache head, so each key/value row is read once for all of them) and MLA's absorbed latent form
// (one cache "head" holding [latent | rope key]; values are the first `vd` latent elements).
//
// Split-context (flash-decoding): grid.z partitions each context; with one partition the block writes the
// normalised output, otherwise unnormalised partial sums that `attention_combine` merges.
// Softmax runs in f32 with an online max; keys/values/queries may be f32, bf16 or f16.
#include "common.cuh"

constexpr int WARPS = 4;

template <typename T, int KPL, int VPL, int GMAX>
__device__ void paged_attention(const T* __restrict__ q,      // [tokens, nh, kd]
                                const T* __restrict__ keys,   // cache base
                                const T* __restrict__ values, // cache base
                                const uint32_t* __restrict__ meta,  // [tokens, 3]: list offset, first, end
                                const uint32_t* __restrict__ slot_list,
                                T* __restrict__ out,          // [tokens, nh, vd] (one partition)
                                float* __restrict__ part_acc, // [tokens, nh, parts, vd]
                                float* __restrict__ part_ml,  // [tokens, nh, parts, 2]
                                int nh, int kd, int vd, int heads_per_kv, int g_count,
                                long long key_slot_stride, int key_head_stride,
                                long long value_slot_stride, int value_head_stride, float scale,
                                int part_len) {
    const int tok = blockIdx.x;
    const int h0 = blockIdx.y * g_count;
    const int part = blockIdx.z;
    const int parts = gridDim.z;
    const int kvh = h0 / heads_per_kv;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;

    __shared__ float qs[GMAX][KPL * 32];
    __shared__ float acc_s[GMAX][VPL * 32];
    __shared__ float m_s[GMAX], l_s[GMAX];

    for (int i = threadIdx.x; i < GMAX * KPL * 32; i += blockDim.x) {
        const int g = i / (KPL * 32), e = i % (KPL * 32);
        qs[g][e] = (g < g_count && e < kd)
                       ? to_f32(q[((long long)tok * nh + h0 + g) * kd + e]) * scale
                       : 0.f;
    }
    __syncthreads();

    const uint32_t base = meta[tok * 3], first = meta[tok * 3 + 1], end = meta[tok * 3 + 2];
    const long long p0 = (long long)first + (long long)part * part_len;
    const long long p1 = min((long long)end, p0 + part_len);

    float m[GMAX], l[GMAX], acc[GMAX][VPL];
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
        m[g] = -INFINITY;
        l[g] = 0.f;
#pragma unroll
        for (int i = 0; i < VPL; ++i) acc[g][i] = 0.f;
    }

    for (long long p = p0 + warp; p < p1; p += WARPS) {
        const long long slot = slot_list[base + p];
        const T* kp = keys + slot * key_slot_stride + (long long)kvh * key_head_stride;
        const T* vp = values + slot * value_slot_stride + (long long)kvh * value_head_stride;
        float k[KPL], v[VPL];
#pragma unroll
        for (int i = 0; i < KPL; ++i) {
            const int e = i * 32 + lane;
            k[i] = e < kd ? to_f32(kp[e]) : 0.f;
        }
#pragma unroll
        for (int i = 0; i < VPL; ++i) {
            const int e = i * 32 + lane;
            v[i] = e < vd ? to_f32(vp[e]) : 0.f;
        }
#pragma unroll
        for (int g = 0; g < GMAX; ++g) {
            if (g < g_count) {
                float s = 0.f;
#pragma unroll
                for (int i = 0; i < KPL; ++i) s += k[i] * qs[g][i * 32 + lane];
                s = warp_sum(s);
                const float m_new = fmaxf(m[g], s);
                const float c = __expf(m[g] - m_new);
                const float pe = __expf(s - m_new);
                l[g] = l[g] * c + pe;
#pragma unroll
                for (int i = 0; i < VPL; ++i) acc[g][i] = acc[g][i] * c + pe * v[i];
                m[g] = m_new;
            }
        }
    }

    // Merge the warps' states one warp at a time into shared memory.
    for (int w = 0; w < WARPS; ++w) {
        if (warp == w) {
#pragma unroll
            for (int g = 0; g < GMAX; ++g) {
                if (g >= g_count) continue;
                if (w == 0) {
#pragma unroll
                    for (int i = 0; i < VPL; ++i) acc_s[g][i * 32 + lane] = acc[g][i];
                    if (lane == 0) {
                        m_s[g] = m[g];
                        l_s[g] = l[g];
                    }
                } else {
                    const float ms = m_s[g];
                    const float mn = fmaxf(ms, m[g]);
                    const float a = ms == -INFINITY ? 0.f : __expf(ms - mn);
                    const float b = m[g] == -INFINITY ? 0.f : __expf(m[g] - mn);
#pragma unroll
                    for (int i = 0; i < VPL; ++i)
                        acc_s[g][i * 32 + lane] = acc_s[g][i * 32 + lane] * a + acc[g][i] * b;
                    const float ls = l_s[g];
                    __syncwarp();
                    if (lane == 0) {
                        m_s[g] = mn;
                        l_s[g] = ls * a + l[g] * b;
                    }
                }
            }
        }
        __syncthreads();
    }

    for (int i = threadIdx.x; i < g_count * vd; i += blockDim.x) {
        const int g = i / vd, e = i % vd;
        const long long row = (long long)tok * nh + h0 + g;
        if (parts == 1) {
            const float lv = l_s[g];
            out[row * vd + e] = from_f32<T>(lv > 0.f ? acc_s[g][e] / lv : 0.f);
        } else {
            part_acc[(row * parts + part) * vd + e] = acc_s[g][e];
            if (e == 0) {
                part_ml[(row * parts + part) * 2] = m_s[g];
                part_ml[(row * parts + part) * 2 + 1] = l_s[g];
            }
        }
    }
}

// Merges the partitions of each (token, head): grid.x = tokens * nh.
template <typename T>
__device__ void attention_combine(const float* __restrict__ part_acc, const float* __restrict__ part_ml,
                                  T* __restrict__ out, int vd, int parts) {
    const long long row = blockIdx.x;
    float mx = -INFINITY;
    for (int j = 0; j < parts; ++j) mx = fmaxf(mx, part_ml[(row * parts + j) * 2]);
    float denom = 0.f;
    for (int j = 0; j < parts; ++j) {
        const float mj = part_ml[(row * parts + j) * 2];
        if (mj != -INFINITY) denom += part_ml[(row * parts + j) * 2 + 1] * __expf(mj - mx);
    }
    for (int e = threadIdx.x; e < vd; e += blockDim.x) {
        float o = 0.f;
        for (int j = 0; j < parts; ++j) {
            const float mj = part_ml[(row * parts + j) * 2];
            if (mj != -INFINITY) o += part_acc[(row * parts + j) * vd + e] * __expf(mj - mx);
        }
        out[row * vd + e] = from_f32<T>(denom > 0.f ? o / denom : 0.f);
    }
}

#define PAGED_ATTENTION(NAME, T, KPL, VPL, GMAX)                                                   \
    extern "C" __global__ void __launch_bounds__(WARPS * 32)                                       \
        NAME(const T* q, const T* keys, const T* values, const uint32_t* meta,                     \
             const uint32_t* slot_list, T* out, float* part_acc, float* part_ml, int nh, int kd,    \
             int vd, int heads_per_kv, int g_count, long long key_slot_stride,                     \
             int key_head_stride, long long value_slot_stride, int value_head_stride, float scale, \
             int part_len) {                                                                       \
        paged_attention<T, KPL, VPL, GMAX>(q, keys, values, meta, slot_list, out, part_acc,        \
                                           part_ml, nh, kd, vd, heads_per_kv, g_count,            \
                                           key_slot_stride, key_head_stride, value_slot_stride,    \
                                           value_head_stride, scale, part_len);                    \
    }

#define PAGED_ATTENTION_SHAPES(DT, T)                                                              \
    PAGED_ATTENTION(paged_attention_##DT##_1_1, T, 1, 1, 8)                                        \
    PAGED_ATTENTION(paged_attention_##DT##_2_1, T, 2, 1, 8)                                        \
    PAGED_ATTENTION(paged_attention_##DT##_2_2, T, 2, 2, 8)                                        \
    PAGED_ATTENTION(paged_attention_##DT##_4_4, T, 4, 4, 8)                                        \
    PAGED_ATTENTION(paged_attention_##DT##_8_8, T, 8, 8, 8)                                        \
    PAGED_ATTENTION(paged_attention_##DT##_18_16, T, 18, 16, 4)                                    \
    extern "C" __global__ void attention_combine_##DT(const float* part_acc, const float* part_ml, \
                                                      T* out, int vd, int parts) {                 \
        attention_combine<T>(part_acc, part_ml, out, vd, parts);                                   \
    }

PAGED_ATTENTION_SHAPES(f32, float)
PAGED_ATTENTION_SHAPES(bf16, __nv_bfloat16)
PAGED_ATTENTION_SHAPES(f16, __half)
