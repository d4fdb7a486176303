// MoE routing on the device: router logits → each token's top-k experts and weights (the families'
// exact semantics, as in src/model/moe/router.rs), counting routed tokens per expert; then the
// token→expert assignments sorted by expert, the layout the grouped GEMM reads.
#include "common.cuh"

constexpr int ROUTE_WARPS = 4;
constexpr int MAX_EXPERTS = 512;
constexpr int MAX_TOP_K = 32;

enum RouteMode { SOFTMAX_TOPK = 0, DEEPSEEK_V2 = 1, DEEPSEEK_V3 = 2 };

// One warp per token. logits: [tokens, E] f32; bias: [E] or null (DeepSeek-V3's correction bias,
// selection only). n_group == 0: no group limit. Writes ids [tokens, k] u32, weights [tokens, k] f32,
// and adds each choice to load[E].
extern "C" __global__ void __launch_bounds__(ROUTE_WARPS * 32)
    moe_route(const float* __restrict__ logits, const float* __restrict__ bias,
              uint32_t* __restrict__ ids, float* __restrict__ weights, uint32_t* __restrict__ load,
              int tokens, int E, int k, int mode, int n_group, int topk_group, int renormalize,
              float scaling) {
    __shared__ float score_s[ROUTE_WARPS][MAX_EXPERTS];
    __shared__ float choice_s[ROUTE_WARPS][MAX_EXPERTS];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int tok = blockIdx.x * ROUTE_WARPS + warp;
    if (tok >= tokens) return;
    float* score = score_s[warp];
    float* choice = choice_s[warp];
    const float* row = logits + (long long)tok * E;

    if (mode == DEEPSEEK_V3) {
        for (int e = lane; e < E; e += 32) {
            const float s = 1.f / (1.f + expf(-row[e]));
            score[e] = s;
            choice[e] = bias ? s + bias[e] : s;
        }
    } else {
        float mx = -INFINITY;
        for (int e = lane; e < E; e += 32) mx = fmaxf(mx, row[e]);
        mx = warp_max(mx);
        float sum = 0.f;
        for (int e = lane; e < E; e += 32) {
            const float x = expf(row[e] - mx);
            score[e] = x;
            sum += x;
        }
        sum = warp_sum(sum);
        for (int e = lane; e < E; e += 32) {
            score[e] /= sum;
            choice[e] = score[e];
        }
    }
    __syncwarp();

    // Group limit: lane g scores group g (V2: its max; V3: the sum of its two best), the best
    // `topk_group` groups stay, the others are masked (V2: probability 0; V3: -inf).
    if (n_group > 0 && topk_group < n_group) {
        const int size = E / n_group;
        float gscore = -INFINITY;
        if (lane < n_group) {
            float b1 = -INFINITY, b2 = -INFINITY;
            for (int j = 0; j < size; ++j) {
                const float c = choice[lane * size + j];
                if (c > b1) {
                    b2 = b1;
                    b1 = c;
                } else if (c > b2) {
                    b2 = c;
                }
            }
            gscore = mode == DEEPSEEK_V3 ? b1 + b2 : b1;
        }
        unsigned keep = 0;
        for (int r = 0; r < topk_group; ++r) {
            float v = (keep >> lane) & 1u ? -INFINITY : gscore;
            int i = lane < n_group && !((keep >> lane) & 1u) ? lane : 0x7fffffff;
            if (lane >= n_group) v = -INFINITY;
            warp_argmax(v, i);
            if (i < n_group) keep |= 1u << i;
        }
        __syncwarp();
        for (int e = lane; e < E; e += 32) {
            if (!((keep >> (e / size)) & 1u)) {
                if (mode == DEEPSEEK_V3) {
                    choice[e] = -INFINITY;
                } else {
                    choice[e] = 0.f;
                    score[e] = 0.f;
                }
            }
        }
        __syncwarp();
    }

    // Top-k by rounds of warp argmax; chosen experts are skipped in later rounds.
    int chosen[MAX_TOP_K];
    float total = 0.f;
    for (int r = 0; r < k; ++r) {
        float v = -INFINITY;
        int i = 0x7fffffff;
        for (int e = lane; e < E; e += 32) {
            bool taken = false;
            for (int j = 0; j < r; ++j) taken |= chosen[j] == e;
            if (taken) continue;
            const float c = choice[e];
            if (c > v || (c == v && e < i)) {
                v = c;
                i = e;
            }
        }
        warp_argmax(v, i);
        chosen[r] = i;
        total += score[i];
    }
    // Weights: V2 renormalises only with top_k > 1 and otherwise scales; V3 renormalises, then scales.
    float norm = 1.f, mul = 1.f;
    if (mode == SOFTMAX_TOPK) {
        if (renormalize) norm = total;
    } else if (mode == DEEPSEEK_V2) {
        if (renormalize && k > 1)
            norm = total + 1e-20f;
        else
            mul = scaling;
    } else {
        if (renormalize) norm = total + 1e-20f;
        mul = scaling;
    }
    for (int r = lane; r < k; r += 32) {
        ids[(long long)tok * k + r] = (uint32_t)chosen[r];
        weights[(long long)tok * k + r] = score[chosen[r]] / norm * mul;
        if (load) atomicAdd(&load[chosen[r]], 1u);
    }
}

// Sorts the `n` assignments (`ids`, [tokens * k] flattened) by expert with one block: counts per
// expert, exclusive offsets, then each assignment's place. `sorted[j]` is the assignment index
// (token * k + slot) at place j, `sorted_expert[j]` its expert, `offsets` [E + 1], `active` [E + 1]
// the experts with tokens in order, their number at active[E]. The order inside an expert is not
// fixed; every output row is computed on its own, so results do not depend on it.
extern "C" __global__ void moe_sort(const uint32_t* __restrict__ ids, uint32_t* __restrict__ sorted,
                                    uint32_t* __restrict__ sorted_expert,
                                    uint32_t* __restrict__ offsets, uint32_t* __restrict__ active,
                                    int n, int E) {
    extern __shared__ uint32_t smem[];
    uint32_t* count = smem;      // [E]
    uint32_t* cursor = smem + E; // [E]
    for (int e = threadIdx.x; e < E; e += blockDim.x) count[e] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const uint32_t e = ids[i];
        if (e < (uint32_t)E) atomicAdd(&count[e], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        uint32_t run = 0, used = 0;
        for (int e = 0; e < E; ++e) {
            offsets[e] = run;
            cursor[e] = run;
            run += count[e];
            if (count[e] > 0) active[used++] = (uint32_t)e;
        }
        offsets[E] = run;
        active[E] = used;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const uint32_t e = ids[i];
        if (e < (uint32_t)E) {
            const uint32_t at = atomicAdd(&cursor[e], 1u);
            sorted[at] = (uint32_t)i;
            sorted_expert[at] = e;
        }
    }
}
