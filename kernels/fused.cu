// Fusions on the decode path (each replaces two or three launches of candle ops): the residual add with
// the RMSNorm after it, and the sum over a token's top-k expert rows.
#include "common.cuh"

constexpr int NORM_THREADS = 256;

// One block per row: x_out = x + d (rounded to T, as candle's add), h = rmsnorm(x_out) · w (candle's
// rmsnorm arithmetic: f32 sum of squares, rsqrt(mean + eps), scale · x · w).
template <typename T>
__device__ void add_rms_norm(const T* __restrict__ x, const T* __restrict__ d,
                             const T* __restrict__ w, T* __restrict__ x_out, T* __restrict__ h,
                             int H, float eps) {
    const size_t base = (size_t)blockIdx.x * H;
    float ss = 0.f;
    for (int i = threadIdx.x; i < H; i += NORM_THREADS) {
        const T s = from_f32<T>(to_f32(x[base + i]) + to_f32(d[base + i]));
        x_out[base + i] = s;
        const float f = to_f32(s);
        ss += f * f;
    }
    __shared__ float partial[NORM_THREADS / 32];
    ss = warp_sum(ss);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) partial[warp] = ss;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int j = 0; j < NORM_THREADS / 32; ++j) total += partial[j];
    const float scale = rsqrtf(total / H + eps);
    // Each thread reads back only what it wrote above.
    for (int i = threadIdx.x; i < H; i += NORM_THREADS)
        h[base + i] = from_f32<T>(scale * to_f32(x_out[base + i]) * to_f32(w[i]));
}

#define ADD_RMS_NORM(NAME, T)                                                                      \
    extern "C" __global__ void __launch_bounds__(NORM_THREADS)                                     \
        NAME(const T* x, const T* d, const T* w, T* x_out, T* h, int H, float eps) {               \
        add_rms_norm<T>(x, d, w, x_out, h, H, eps);                                                \
    }
ADD_RMS_NORM(add_rms_norm_f32, float)
ADD_RMS_NORM(add_rms_norm_bf16, __nv_bfloat16)
ADD_RMS_NORM(add_rms_norm_f16, __half)

// out[t, i] = Σ_s y[t·k + s, i], summed in f32 and rounded once (the experts' weighted rows of a token).
template <typename T>
__device__ void moe_combine(const T* __restrict__ y, T* __restrict__ out, int tokens, int k, int H) {
    const long long n = (long long)tokens * H;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < n;
         idx += (long long)gridDim.x * blockDim.x) {
        const long long t = idx / H, i = idx - t * H;
        const T* rows = y + (t * k) * H + i;
        float s = 0.f;
        for (int j = 0; j < k; ++j) s += to_f32(rows[(long long)j * H]);
        out[idx] = from_f32<T>(s);
    }
}

#define MOE_COMBINE(NAME, T)                                                                       \
    extern "C" __global__ void NAME(const T* y, T* out, int tokens, int k, int H) {               \
        moe_combine<T>(y, out, tokens, k, H);                                                      \
    }
MOE_COMBINE(moe_combine_f32, float)
MOE_COMBINE(moe_combine_bf16, __nv_bfloat16)
MOE_COMBINE(moe_combine_f16, __half)
