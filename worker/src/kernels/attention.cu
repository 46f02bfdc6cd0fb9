// The element-wise and row-wise kernels of the fused hybrid attention (see mod.rs). The
// GEMMs run in cuBLAS through LibTorch; these kernels are every pass between them, each
// reading its inputs once and writing its outputs once.
//
// Compiled at run time with NVRTC, with no header: bf16 is handled as its bit pattern
// (uint16), converted to and from fp32 with round-to-nearest-even, so the program needs
// nothing but the compiler. Every kernel exists for T = bf16 (suffix _bf16) and T = fp32
// (suffix _f32); arithmetic is fp32 throughout. Tensors are contiguous row-major; a row
// of a [B, H, M, X] tensor is r = (b H + h) M + m, so its head is (r / M) % H.

typedef unsigned short bf16_t;

__device__ __forceinline__ float ld(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16_t* p, long long i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}
__device__ __forceinline__ void st(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16_t* p, long long i, float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN stays a (quiet) NaN
        p[i] = (bf16_t)((u >> 16) | 0x40u);
        return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
    p[i] = (bf16_t)(u >> 16);
}

__device__ __forceinline__ float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_grad(float x) {
    return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) + x * 0.39894228040143268f * expf(-0.5f * x * x);
}
// torch's softplus (beta 1, threshold 20) and its derivative.
__device__ __forceinline__ float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

__device__ __forceinline__ float powi(float x, int p) {
    float y = x;
    for (int i = 1; i < p; ++i) y *= x;
    return y;
}

// Which power chunk a column of phi belongs to (1-based), from the chunk ends.
__device__ __forceinline__ int chunk_of(int c, int e1, int e2, int e3) {
    return c < e1 ? 1 : (c < e2 ? 2 : (c < e3 ? 3 : 4));
}

#define GRID_STRIDE(i, n) for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

// hid = GELU(pre + b1[head]); pre [rows, width] is the first GEMM's output without bias.
template <typename T>
__device__ void bias_gelu(const T* pre, const float* b1, T* hid, long long rows, int width, long long rows_per_head, int heads) {
    GRID_STRIDE(i, rows * width) {
        long long r = i / width;
        int c = (int)(i - r * width);
        int h = (int)((r / rows_per_head) % heads);
        st(hid, i, gelu(ld(pre, i) + b1[h * width + c]));
    }
}

// phi = the chunk activations of (psi + b2[head]); psi [rows, width] is the second GEMM's
// output without bias. Chunk 1 softplus, even p: x^p, odd p >= 3: softplus(x)^p.
template <typename T>
__device__ void bias_chunks(const T* psi, const float* b2, T* phi, long long rows, int width, long long rows_per_head, int heads, int e1, int e2, int e3) {
    GRID_STRIDE(i, rows * width) {
        long long r = i / width;
        int c = (int)(i - r * width);
        int h = (int)((r / rows_per_head) % heads);
        float x = ld(psi, i) + b2[h * width + c];
        int p = chunk_of(c, e1, e2, e3);
        float y = (p % 2 == 0) ? powi(x, p) : powi(softplus(x), p);
        st(phi, i, y);
    }
}

// out [rows, dp] = [v, 1, 0...]: the values with a ones column (S and z in one GEMM) and
// zero padding to a GEMM-friendly width.
template <typename T>
__device__ void augment(const T* v, T* out, long long rows, int d, int dp) {
    GRID_STRIDE(i, rows * dp) {
        long long r = i / dp;
        int c = (int)(i - r * dp);
        float x = c < d ? ld(v, r * d + c) : (c == d ? 1.0f : 0.0f);
        st(out, i, x);
    }
}

// y = (a O + nd[:, :d]) / (a + nd[:, d] + eps), dinv = 1 / (a + nd[:, d] + eps). O may be
// null (a = 0, the linear rate). nd [rows, dp] fp32 is phi_q(q) [S | z].
template <typename T>
__device__ void combine(const T* o, const float* nd, float a, float eps, T* y, float* dinv, long long rows, int d, int dp) {
    GRID_STRIDE(i, rows * d) {
        long long r = i / d;
        int c = (int)(i - r * d);
        float inv = 1.0f / (a + nd[r * dp + d] + eps);
        float anchor = o ? a * ld(o, i) : 0.0f;
        st(y, i, (anchor + nd[r * dp + c]) * inv);
        if (c == 0) dinv[r] = inv;
    }
}

// The combination's backward, one warp per row: g = [dy / D, -(dy . y) / D, 0...] (the
// gradient of [num | den]) and dO = a dy / D (when dO is not null).
template <typename T>
__device__ void combine_backward(const T* dy, const T* y, const float* dinv, float a, T* d_o, T* g, long long rows, int d, int dp) {
    long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    long long warps = (long long)gridDim.x * blockDim.x / 32;
    for (long long r = warp; r < rows; r += warps) {
        float dot = 0.0f;
        for (int c = lane; c < d; c += 32) dot += ld(dy, r * d + c) * ld(y, r * d + c);
        for (int off = 16; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
        float inv = dinv[r];
        for (int c = lane; c < dp; c += 32) {
            float gv = c < d ? ld(dy, r * d + c) * inv : (c == d ? -dot * inv : 0.0f);
            st(g, r * dp + c, gv);
            if (d_o && c < d) st(d_o, r * d + c, a * ld(dy, r * d + c) * inv);
        }
    }
}

// dpsi = dphi * (chunk activation)'(psi + b2[head]); dphi fp32.
template <typename T>
__device__ void chunks_backward(const float* dphi, const T* psi, const float* b2, T* dpsi, long long rows, int width, long long rows_per_head, int heads, int e1, int e2, int e3) {
    GRID_STRIDE(i, rows * width) {
        long long r = i / width;
        int c = (int)(i - r * width);
        int h = (int)((r / rows_per_head) % heads);
        float x = ld(psi, i) + b2[h * width + c];
        int p = chunk_of(c, e1, e2, e3);
        float grad;
        if (p % 2 == 0) {
            grad = (float)p * powi(x, p - 1);
        } else {
            float s = x > 20.0f ? 1.0f : sigmoid(x);
            grad = (float)p * powi(softplus(x), p - 1) * s;
        }
        st(dpsi, i, dphi[i] * grad);
    }
}

// dpre = dhid * GELU'(pre + b1[head]); dhid fp32.
template <typename T>
__device__ void gelu_backward(const float* dhid, const T* pre, const float* b1, T* dpre, long long rows, int width, long long rows_per_head, int heads) {
    GRID_STRIDE(i, rows * width) {
        long long r = i / width;
        int c = (int)(i - r * width);
        int h = (int)((r / rows_per_head) % heads);
        st(dpre, i, dhid[i] * gelu_grad(ld(pre, i) + b1[h * width + c]));
    }
}

#define INSTANTIATE(SUFFIX, T)                                                                                          \
    extern "C" __global__ void bias_gelu_##SUFFIX(const T* pre, const float* b1, T* hid, long long rows, int width,    \
                                                 long long rows_per_head, int heads) {                                  \
        bias_gelu<T>(pre, b1, hid, rows, width, rows_per_head, heads);                                                  \
    }                                                                                                                   \
    extern "C" __global__ void bias_chunks_##SUFFIX(const T* psi, const float* b2, T* phi, long long rows, int width,  \
                                                   long long rows_per_head, int heads, int e1, int e2, int e3) {        \
        bias_chunks<T>(psi, b2, phi, rows, width, rows_per_head, heads, e1, e2, e3);                                    \
    }                                                                                                                   \
    extern "C" __global__ void augment_##SUFFIX(const T* v, T* out, long long rows, int d, int dp) {                   \
        augment<T>(v, out, rows, d, dp);                                                                                \
    }                                                                                                                   \
    extern "C" __global__ void combine_##SUFFIX(const T* o, const float* nd, float a, float eps, T* y, float* dinv,    \
                                               long long rows, int d, int dp) {                                         \
        combine<T>(o, nd, a, eps, y, dinv, rows, d, dp);                                                                \
    }                                                                                                                   \
    extern "C" __global__ void combine_backward_##SUFFIX(const T* dy, const T* y, const float* dinv, float a, T* d_o,  \
                                                        T* g, long long rows, int d, int dp) {                          \
        combine_backward<T>(dy, y, dinv, a, d_o, g, rows, d, dp);                                                       \
    }                                                                                                                   \
    extern "C" __global__ void chunks_backward_##SUFFIX(const float* dphi, const T* psi, const float* b2, T* dpsi,     \
                                                       long long rows, int width, long long rows_per_head, int heads,  \
                                                       int e1, int e2, int e3) {                                        \
        chunks_backward<T>(dphi, psi, b2, dpsi, rows, width, rows_per_head, heads, e1, e2, e3);                         \
    }                                                                                                                   \
    extern "C" __global__ void gelu_backward_##SUFFIX(const float* dhid, const T* pre, const float* b1, T* dpre,       \
                                                     long long rows, int width, long long rows_per_head, int heads) {   \
        gelu_backward<T>(dhid, pre, b1, dpre, rows, width, rows_per_head, heads);                                       \
    }

INSTANTIATE(bf16, bf16_t)
INSTANTIATE(f32, float)
