// The element-wise work of a Wan block around its GEMMs and attentions, fused for
// inference (see model/fused.rs): diffusers runs each of these as several fp32 passes
// (casts, the norm, the modulation's multiply and add, the cast back). Numerics follow
// diffusers' casts: statistics and arithmetic in fp32 from the bf16 input, one rounding
// to the hidden dtype at the end (two where ATen's rms_norm rounds twice).
//
// Appended to attention.cu (its ld/st helpers and bf16_t). Row-wise kernels use one
// block of 256 threads per row.

#define ROW_THREADS 256

// Sum of v over the block (every thread gets it).
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < (int)(blockDim.x / 32); ++w) total += scratch[w];
    return total;
}

__device__ __forceinline__ float round_to(const float* /*tag*/, float v) { return v; }
__device__ __forceinline__ float round_to(const bf16_t* /*tag*/, float v) {
    bf16_t b;
    st(&b, 0, v);
    return ld(&b, 0);
}

// out = LayerNorm(x) [* weight + bias] [* (1 + scale[b]) + shift[b]], x [rows, dim];
// scale and shift are [B, dim] (rows_per_batch rows each), weight/bias [dim]; any of the
// four may be null.
template <typename T>
__device__ void layer_norm_modulate(const T* x, const float* weight, const float* bias, const float* scale,
                                    const float* shift, T* out, long long rows, int dim, long long rows_per_batch,
                                    float eps) {
    __shared__ float scratch[ROW_THREADS / 32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* row = x + r * dim;
        float sum = 0.0f;
        for (int c = threadIdx.x; c < dim; c += blockDim.x) sum += ld(row, c);
        float mean = block_sum(sum, scratch) / dim;
        float sq = 0.0f;
        for (int c = threadIdx.x; c < dim; c += blockDim.x) {
            float dlt = ld(row, c) - mean;
            sq += dlt * dlt;
        }
        float rstd = rsqrtf(block_sum(sq, scratch) / dim + eps);
        long long b = r / rows_per_batch;
        for (int c = threadIdx.x; c < dim; c += blockDim.x) {
            float y = (ld(row, c) - mean) * rstd;
            if (weight) y = y * weight[c] + bias[c];
            if (scale) y = y * (scale[b * dim + c] + 1.0f) + shift[b * dim + c];
            st(out, r * dim + c, y);
        }
    }
}

// out = h + x * gate[b] in fp32, rounded once; h, x [rows, dim], gate [B, dim] (or null: 1).
template <typename T>
__device__ void gated_residual(const T* h, const T* x, const float* gate, T* out, long long rows, int dim,
                               long long rows_per_batch) {
    GRID_STRIDE(i, rows * dim) {
        long long r = i / dim;
        int c = (int)(i - r * dim);
        float g = gate ? gate[(r / rows_per_batch) * dim + c] : 1.0f;
        st(out, i, ld(h, i) + ld(x, i) * g);
    }
}

// RMSNorm over the full width (as ATen's rms_norm: fp32 statistics, the normalised value
// rounded to T, then multiplied by the T weight and rounded), then RoPE on each head's
// channel pairs with the fp32 tables cos/sin [N, head_dim] (token n = r % N), rounded to T.
// x, out [rows, dim] with dim = heads * head_dim; `rotate` 0 skips RoPE (k of attn2, ...).
template <typename T>
__device__ void rms_rope(const T* x, const T* weight, const float* cos, const float* sin, T* out, long long rows,
                         int dim, int head_dim, long long tokens, float eps, int rotate) {
    __shared__ float scratch[ROW_THREADS / 32];
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* row = x + r * dim;
        float sq = 0.0f;
        for (int c = threadIdx.x; c < dim; c += blockDim.x) {
            float v = ld(row, c);
            sq += v * v;
        }
        float rstd = rsqrtf(block_sum(sq, scratch) / dim + eps);
        long long n = r % tokens;
        for (int pair = threadIdx.x; pair < dim / 2; pair += blockDim.x) {
            int c = 2 * pair;
            float a = round_to(row, round_to(row, ld(row, c) * rstd) * ld(weight, c));
            float b = round_to(row, round_to(row, ld(row, c + 1) * rstd) * ld(weight, c + 1));
            if (rotate) {
                int j = c % head_dim;
                float co = cos[n * head_dim + j], si = sin[n * head_dim + j + 1];
                float even = a * co - b * si;
                float odd = a * si + b * co;
                a = even;
                b = odd;
            }
            st(out, r * dim + c, a);
            st(out, r * dim + c + 1, b);
        }
    }
}

#define INSTANTIATE_BLOCK(SUFFIX, T)                                                                                   \
    extern "C" __global__ void layer_norm_modulate_##SUFFIX(const T* x, const float* weight, const float* bias,       \
                                                           const float* scale, const float* shift, T* out,           \
                                                           long long rows, int dim, long long rows_per_batch,         \
                                                           float eps) {                                               \
        layer_norm_modulate<T>(x, weight, bias, scale, shift, out, rows, dim, rows_per_batch, eps);                   \
    }                                                                                                                  \
    extern "C" __global__ void gated_residual_##SUFFIX(const T* h, const T* x, const float* gate, T* out,            \
                                                      long long rows, int dim, long long rows_per_batch) {            \
        gated_residual<T>(h, x, gate, out, rows, dim, rows_per_batch);                                                \
    }                                                                                                                  \
    extern "C" __global__ void rms_rope_##SUFFIX(const T* x, const T* weight, const float* cos, const float* sin,     \
                                                T* out, long long rows, int dim, int head_dim, long long tokens,     \
                                                float eps, int rotate) {                                              \
        rms_rope<T>(x, weight, cos, sin, out, rows, dim, head_dim, tokens, eps, rotate);                              \
    }

INSTANTIATE_BLOCK(bf16, bf16_t)
INSTANTIATE_BLOCK(f32, float)
