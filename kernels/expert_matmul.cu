// Grouped expert projections over weights held in the activations' dtype (f32, bf16, f16): the shared
// skeleton of expert_common.cuh with a weight row read VEC elements per 16-byte (or narrower) load.
#include "expert_common.cuh"

template <typename T, int VEC>
struct DenseWeights {
    const T* w;
    const T* we;

    __device__ __forceinline__ void select(int e, int N, int K) { we = w + (size_t)e * N * K; }

    __device__ __forceinline__ void load(int row, int K, int k, float* out) const {
        const Pack<T, VEC> p = *reinterpret_cast<const Pack<T, VEC>*>(we + (size_t)row * K + k);
#pragma unroll
        for (int v = 0; v < VEC; ++v) out[v] = to_f32(p.v[v]);
    }
};

#define EXPERT_MATMUL(NAME, T, VEC, GLU)                                                           \
    extern "C" __global__ void __launch_bounds__(EXPERT_WARPS * 32)                                \
        NAME(const T* x, const T* w, const uint32_t* sorted, const uint32_t* offsets,              \
             const uint32_t* active, const float* scale, T* out, int N, int K, int in_div, int E) { \
        expert_rows<T, VEC, 8, 2, GLU>(x, DenseWeights<T, VEC>{w, nullptr}, sorted, offsets,      \
                                       active, scale, out, N, K, in_div, E);                       \
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
