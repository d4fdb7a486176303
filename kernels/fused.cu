// Fusions on the decode path (each replaces two or three launches of candle ops): the residual add with
// the RMSNorm after it, and the sum over a token's top-k expert rows.
#include "common.cuh"

constexpr int NORM_THREADS = 256;

// The sum of every thread's `v` over a block of THREADS threads (all must call it; it synchronises the
// block, so shared-memory writes made before it are visible after it).
template <int THREADS>
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[THREADS / 32];
    v = warp_sum(v);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
    __syncthreads();
    float total = 0.f;
#pragma unroll
    for (int j = 0; j < THREADS / 32; ++j) total += partial[j];
    return total;
}

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
    const float scale = rsqrtf(block_sum<NORM_THREADS>(ss) / H + eps);
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

// The roped value of element i (< rd) of a row read through `at`: pairs (i, i + rd/2) (rotate-half, as
// candle's rope_thd) or (2p, 2p + 1) when `interleaved` (rope_i); `c`, `s` the token's cos/sin [rd/2].
template <typename T, typename At>
__device__ __forceinline__ float rope_at(At at, int i, int rd, int interleaved, const T* c,
                                         const T* s) {
    const int half = rd / 2;
    if (interleaved) {
        const int p = i / 2;
        const float cp = to_f32(c[p]), sp = to_f32(s[p]);
        return (i % 2 == 0) ? at(i) * cp - at(i + 1) * sp : at(i - 1) * sp + at(i) * cp;
    }
    if (i < half) return at(i) * to_f32(c[i]) - at(i + half) * to_f32(s[i]);
    return at(i - half) * to_f32(s[i - half]) + at(i) * to_f32(c[i - half]);
}

// A decode layer's attention inputs in one launch (grouped-query attention): per head of the step's q,
// k and v rows — optional per-head RMSNorm of q and k (Qwen3), rope over the first `rd` dims (pairs
// (i, i + rd/2), or (2i, 2i+1) when `interleaved`) — q written to q_out, k and v into the cache at the
// token's slot (PAD_SLOT rows write nothing). One block per (token, head); heads past nh are kv heads.
// The norm's output is rounded to T before rope reads it, as the unfused ops do.
#define PAD_SLOT 0xffffffffu
constexpr int QKV_THREADS = 128;
constexpr int QKV_MAX_HD = 512;

template <typename T>
__device__ void qk_norm_rope_write(const T* __restrict__ q, const T* __restrict__ k,
                                   const T* __restrict__ v, const T* __restrict__ q_w,
                                   const T* __restrict__ k_w, const T* __restrict__ cos,
                                   const T* __restrict__ sin, const uint32_t* __restrict__ slots,
                                   T* __restrict__ q_out, T* __restrict__ k_cache,
                                   T* __restrict__ v_cache, int nh, int nkv, int hd, int rd,
                                   int interleaved, float eps) {
    __shared__ float row[QKV_MAX_HD];
    const int tok = blockIdx.x, head = blockIdx.y;
    const bool is_q = head < nh;
    const int kvh = head - nh;
    const T* src = is_q ? q + ((size_t)tok * nh + head) * hd : k + ((size_t)tok * nkv + kvh) * hd;
    const T* w = is_q ? q_w : k_w;
    float ss = 0.f;
    for (int i = threadIdx.x; i < hd; i += QKV_THREADS) {
        const float x = to_f32(src[i]);
        row[i] = x;
        ss += x * x;
    }
    if (w != nullptr) {
        const float scale = rsqrtf(block_sum<QKV_THREADS>(ss) / hd + eps);
        for (int i = threadIdx.x; i < hd; i += QKV_THREADS)
            row[i] = to_f32(from_f32<T>(scale * row[i] * to_f32(w[i])));
    }
    __syncthreads();
    const uint32_t slot = is_q ? 0u : slots[tok];
    if (!is_q && slot == PAD_SLOT) return;
    T* dst = is_q ? q_out + ((size_t)tok * nh + head) * hd
                  : k_cache + ((size_t)slot * nkv + kvh) * hd;
    const T* c = cos + (size_t)tok * (rd / 2);
    const T* s = sin + (size_t)tok * (rd / 2);
    const auto at = [&](int j) { return row[j]; };
    for (int i = threadIdx.x; i < hd; i += QKV_THREADS)
        dst[i] = from_f32<T>(i < rd ? rope_at(at, i, rd, interleaved, c, s) : row[i]);
    if (!is_q) {
        const T* vs = v + ((size_t)tok * nkv + kvh) * hd;
        T* vd = v_cache + ((size_t)slot * nkv + kvh) * hd;
        for (int i = threadIdx.x; i < hd; i += QKV_THREADS) vd[i] = vs[i];
    }
}

#define QK_NORM_ROPE_WRITE(NAME, T)                                                                \
    extern "C" __global__ void __launch_bounds__(QKV_THREADS)                                      \
        NAME(const T* q, const T* k, const T* v, const T* q_w, const T* k_w, const T* cos,         \
             const T* sin, const uint32_t* slots, T* q_out, T* k_cache, T* v_cache, int nh,        \
             int nkv, int hd, int rd, int interleaved, float eps) {                                \
        qk_norm_rope_write<T>(q, k, v, q_w, k_w, cos, sin, slots, q_out, k_cache, v_cache, nh,    \
                              nkv, hd, rd, interleaved, eps);                                      \
    }
QK_NORM_ROPE_WRITE(qk_norm_rope_write_f32, float)
QK_NORM_ROPE_WRITE(qk_norm_rope_write_bf16, __nv_bfloat16)
QK_NORM_ROPE_WRITE(qk_norm_rope_write_f16, __half)

// Each row's argmax (f32 logits [rows, n]): the largest value, the lowest index among equals (NaN never
// wins), as the host sampler's argmax — candle's keeps whichever thread's candidate, not the lowest index.
constexpr int ARGMAX_THREADS = 256;

extern "C" __global__ void __launch_bounds__(ARGMAX_THREADS)
    row_argmax_f32(const float* __restrict__ logits, uint32_t* __restrict__ out, int n) {
    const float* row = logits + (size_t)blockIdx.x * n;
    float best = -INFINITY;
    int idx = n;  // past the end: loses every tie until a value is seen
    for (int i = threadIdx.x; i < n; i += ARGMAX_THREADS) {
        const float v = row[i];
        if (v > best || (idx == n && v == best)) {
            best = v;
            idx = i;
        }
    }
    warp_argmax(best, idx);
    __shared__ float bv[ARGMAX_THREADS / 32];
    __shared__ int bi[ARGMAX_THREADS / 32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        bv[warp] = best;
        bi[warp] = idx;
    }
    __syncthreads();
    if (warp == 0) {
        best = lane < ARGMAX_THREADS / 32 ? bv[lane] : -INFINITY;
        idx = lane < ARGMAX_THREADS / 32 ? bi[lane] : n;
        warp_argmax(best, idx);
        if (lane == 0) out[blockIdx.x] = idx < n ? (uint32_t)idx : 0u;
    }
}

// MLA (DeepSeek-V2/V3, Kimi K2): the step's latent rows into the cache in one launch — the compressed
// kv (first L of the kv_a projection's L + R outputs) RMSNorm-ed (rounded to T, as the unfused op) and
// the rope key (last R) roped, both written at the token's slot (PAD_SLOT rows write nothing). One block
// per token.
template <typename T>
__device__ void mla_latent_write(const T* __restrict__ ckv, const T* __restrict__ w,
                                 const T* __restrict__ cos, const T* __restrict__ sin,
                                 const uint32_t* __restrict__ slots, T* __restrict__ cache, int L,
                                 int R, int interleaved, float eps) {
    __shared__ float pe[QKV_MAX_HD];
    const int tok = blockIdx.x;
    const uint32_t slot = slots[tok];
    if (slot == PAD_SLOT) return;
    const T* src = ckv + (size_t)tok * (L + R);
    float ss = 0.f;
    for (int i = threadIdx.x; i < L; i += QKV_THREADS) {
        const float x = to_f32(src[i]);
        ss += x * x;
    }
    for (int i = threadIdx.x; i < R; i += QKV_THREADS) pe[i] = to_f32(src[L + i]);
    // block_sum synchronises: pe is complete after it.
    const float scale = rsqrtf(block_sum<QKV_THREADS>(ss) / L + eps);
    T* dst = cache + (size_t)slot * (L + R);
    for (int i = threadIdx.x; i < L; i += QKV_THREADS)
        dst[i] = from_f32<T>(scale * to_f32(src[i]) * to_f32(w[i]));
    const T* c = cos + (size_t)tok * (R / 2);
    const T* s = sin + (size_t)tok * (R / 2);
    const auto at = [&](int j) { return pe[j]; };
    for (int i = threadIdx.x; i < R; i += QKV_THREADS)
        dst[L + i] = from_f32<T>(rope_at(at, i, R, interleaved, c, s));
}

#define MLA_LATENT_WRITE(NAME, T)                                                                  \
    extern "C" __global__ void __launch_bounds__(QKV_THREADS)                                      \
        NAME(const T* ckv, const T* w, const T* cos, const T* sin, const uint32_t* slots,          \
             T* cache, int L, int R, int interleaved, float eps) {                                 \
        mla_latent_write<T>(ckv, w, cos, sin, slots, cache, L, R, interleaved, eps);               \
    }
MLA_LATENT_WRITE(mla_latent_write_f32, float)
MLA_LATENT_WRITE(mla_latent_write_bf16, __nv_bfloat16)
MLA_LATENT_WRITE(mla_latent_write_f16, __half)

// MLA's absorbed query rows for paged attention in one launch: out[t, h] = [q_lat[h, t, 0..L] |
// rope(q[t, h, nope..nope+R])] ([T, nh, L + R]), from the absorbed no-rope part (`[nh, T, L]`, the
// per-head matmul's output) and the q projection's rows (`[T, nh, nope + R]`). One block per (t, h).
template <typename T>
__device__ void mla_query(const T* __restrict__ q, const T* __restrict__ q_lat,
                          const T* __restrict__ cos, const T* __restrict__ sin, T* __restrict__ out,
                          int T_, int nh, int nope, int L, int R, int interleaved) {
    const int tok = blockIdx.x, h = blockIdx.y;
    const T* lat = q_lat + ((size_t)h * T_ + tok) * L;
    const T* pe = q + ((size_t)tok * nh + h) * (nope + R) + nope;
    T* dst = out + ((size_t)tok * nh + h) * (L + R);
    for (int i = threadIdx.x; i < L; i += QKV_THREADS) dst[i] = lat[i];
    const T* c = cos + (size_t)tok * (R / 2);
    const T* s = sin + (size_t)tok * (R / 2);
    const auto at = [&](int j) { return to_f32(pe[j]); };
    for (int i = threadIdx.x; i < R; i += QKV_THREADS)
        dst[L + i] = from_f32<T>(rope_at(at, i, R, interleaved, c, s));
}

#define MLA_QUERY(NAME, T)                                                                         \
    extern "C" __global__ void __launch_bounds__(QKV_THREADS)                                      \
        NAME(const T* q, const T* q_lat, const T* cos, const T* sin, T* out, int T_, int nh,       \
             int nope, int L, int R, int interleaved) {                                            \
        mla_query<T>(q, q_lat, cos, sin, out, T_, nh, nope, L, R, interleaved);                    \
    }
MLA_QUERY(mla_query_f32, float)
MLA_QUERY(mla_query_bf16, __nv_bfloat16)
MLA_QUERY(mla_query_f16, __half)
