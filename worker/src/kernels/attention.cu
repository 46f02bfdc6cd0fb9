// The element-wise and row-wise kernels of the fused hybrid attention (attention/fused).
// The GEMMs run in cuBLAS through LibTorch; these kernels are every pass between them,
// each reading its inputs once and writing its outputs once.
//
// Compiled at run time with NVRTC, with no header: bf16 is handled as its bit pattern
// (uint16), converted to and from fp32 with round-to-nearest-even, so the program needs
// nothing but the compiler. Every kernel exists for T = bf16 (suffix _bf16) and T = fp32
// (suffix _f32); arithmetic is fp32 throughout. Tensors are contiguous row-major.
//
// Memory access: each thread moves V = 8 consecutive elements of a row at once (16-byte
// loads for bf16) when the row width is a multiple of 8 (the kernels' callers check and
// pass V = 1 otherwise). Per-head kernels run on a 2-D grid whose y index is the
// (batch, head) slab, so no thread divides a 64-bit index to find its head.

typedef unsigned short bf16_t;

__device__ __forceinline__ float ld(const float* p, long long i) { return p[i]; }
__device__ __forceinline__ float ld(const bf16_t* p, long long i) {
    return __uint_as_float(((unsigned int)p[i]) << 16);
}
__device__ __forceinline__ unsigned int bf16_bits(float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;  // NaN stays a (quiet) NaN
    u += 0x7fffu + ((u >> 16) & 1u);                                 // round to nearest, ties to even
    return u >> 16;
}
__device__ __forceinline__ void st(float* p, long long i, float v) { p[i] = v; }
__device__ __forceinline__ void st(bf16_t* p, long long i, float v) { p[i] = (bf16_t)bf16_bits(v); }

// V consecutive elements at p (p aligned to V elements), as floats.
template <int V> __device__ __forceinline__ void loadv(const float* p, float* v) {
    if (V == 8) {
        float4 a = *reinterpret_cast<const float4*>(p);
        float4 b = *reinterpret_cast<const float4*>(p + 4);
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
        v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    } else {
        for (int k = 0; k < V; ++k) v[k] = p[k];
    }
}
template <int V> __device__ __forceinline__ void loadv(const bf16_t* p, float* v) {
    if (V == 8) {
        uint4 u = *reinterpret_cast<const uint4*>(p);
        unsigned int w[4] = {u.x, u.y, u.z, u.w};
        for (int k = 0; k < 4; ++k) {
            v[2 * k] = __uint_as_float(w[k] << 16);
            v[2 * k + 1] = __uint_as_float(w[k] & 0xffff0000u);
        }
    } else {
        for (int k = 0; k < V; ++k) v[k] = ld(p, k);
    }
}
template <int V> __device__ __forceinline__ void storev(float* p, const float* v) {
    if (V == 8) {
        *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
        *reinterpret_cast<float4*>(p + 4) = make_float4(v[4], v[5], v[6], v[7]);
    } else {
        for (int k = 0; k < V; ++k) p[k] = v[k];
    }
}
template <int V> __device__ __forceinline__ void storev(bf16_t* p, const float* v) {
    if (V == 8) {
        unsigned int w[4];
        for (int k = 0; k < 4; ++k) w[k] = bf16_bits(v[2 * k]) | (bf16_bits(v[2 * k + 1]) << 16);
        *reinterpret_cast<uint4*>(p) = make_uint4(w[0], w[1], w[2], w[3]);
    } else {
        for (int k = 0; k < V; ++k) st(p, k, v[k]);
    }
}

__device__ __forceinline__ float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }
__device__ __forceinline__ float gelu_grad(float x) {
    return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) + x * 0.39894228040143268f * expf(-0.5f * x * x);
}
// torch's softplus (beta 1, threshold 20) and its derivative.
__device__ __forceinline__ float softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }
__device__ __forceinline__ float softplus_grad(float x) { return x > 20.0f ? 1.0f : 1.0f / (1.0f + expf(-x)); }

// x^p for a small p >= 0.
__device__ __forceinline__ float powi(float x, int p) {
    float y = 1.0f;
    for (int i = 0; i < p; ++i) y *= x;
    return y;
}

// Which power chunk a column of phi belongs to (1-based), from the chunk ends.
__device__ __forceinline__ int chunk_of(int c, int e1, int e2, int e3) {
    return c < e1 ? 1 : (c < e2 ? 2 : (c < e3 ? 3 : 4));
}

// chunk p's activation and its derivative: p = 1 softplus, even p x^p, odd p >= 3 softplus^p.
__device__ __forceinline__ float chunk_act(float x, int p) {
    return (p % 2 == 0) ? powi(x, p) : powi(softplus(x), p);
}
__device__ __forceinline__ float chunk_grad(float x, int p) {
    if (p % 2 == 0) return (float)p * powi(x, p - 1);
    return (float)p * powi(softplus(x), p - 1) * softplus_grad(x);
}

#define GRID_STRIDE(i, n) for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

// Per-head kernels: blockIdx.y is the slab (b H + h) of a [B, H, M, width] tensor, whose
// slab_len = M width elements start at slab_len * blockIdx.y; threads stride over its
// vectors of V.
#define SLAB_LOOP(e, slab_len)                                                                       \
    const long long slab_base = (long long)blockIdx.y * (slab_len);                                   \
    const int head = blockIdx.y % heads;                                                              \
    for (int e = (blockIdx.x * blockDim.x + threadIdx.x) * V; e < (slab_len); e += gridDim.x * blockDim.x * V)

// hid = GELU(pre + b1[head]); pre [.., width] is the first GEMM's output without bias.
template <typename T, int V>
__device__ void bias_gelu(const T* pre, const float* b1, T* hid, int slab_len, int width, int heads) {
    SLAB_LOOP(e, slab_len) {
        int c = e % width;
        float x[V];
        loadv<V>(pre + slab_base + e, x);
        for (int k = 0; k < V; ++k) x[k] = gelu(x[k] + b1[head * width + c + k]);
        storev<V>(hid + slab_base + e, x);
    }
}

// phi = the chunk activations of (psi + b2[head]); psi is the second GEMM's output.
template <typename T, int V>
__device__ void bias_chunks(const T* psi, const float* b2, T* phi, int slab_len, int width, int heads, int e1, int e2, int e3) {
    SLAB_LOOP(e, slab_len) {
        int c = e % width;
        float x[V];
        loadv<V>(psi + slab_base + e, x);
        for (int k = 0; k < V; ++k) x[k] = chunk_act(x[k] + b2[head * width + c + k], chunk_of(c + k, e1, e2, e3));
        storev<V>(phi + slab_base + e, x);
    }
}

// dpsi = dphi * (chunk activation)'(psi + b2[head]); dphi fp32.
template <typename T, int V>
__device__ void chunks_backward(const float* dphi, const T* psi, const float* b2, T* dpsi, int slab_len, int width, int heads, int e1, int e2, int e3) {
    SLAB_LOOP(e, slab_len) {
        int c = e % width;
        float x[V], g[V];
        loadv<V>(psi + slab_base + e, x);
        loadv<V>(dphi + slab_base + e, g);
        for (int k = 0; k < V; ++k) g[k] *= chunk_grad(x[k] + b2[head * width + c + k], chunk_of(c + k, e1, e2, e3));
        storev<V>(dpsi + slab_base + e, g);
    }
}

// dpre = dhid * GELU'(pre + b1[head]); dhid fp32.
template <typename T, int V>
__device__ void gelu_backward(const float* dhid, const T* pre, const float* b1, T* dpre, int slab_len, int width, int heads) {
    SLAB_LOOP(e, slab_len) {
        int c = e % width;
        float x[V], g[V];
        loadv<V>(pre + slab_base + e, x);
        loadv<V>(dhid + slab_base + e, g);
        for (int k = 0; k < V; ++k) g[k] *= gelu_grad(x[k] + b1[head * width + c + k]);
        storev<V>(dpre + slab_base + e, g);
    }
}

// out [rows, dp] = [v, 1, 0...]: the values with a ones column (S and z in one GEMM) and
// zero padding to a GEMM-friendly width (dp a multiple of 8).
template <typename T, int V>
__device__ void augment(const T* v, T* out, long long rows, int d, int dp) {
    GRID_STRIDE(i, rows * (dp / V)) {
        long long r = i / (dp / V);
        int c = (int)(i - r * (dp / V)) * V;
        float x[V];
        if (c + V <= d) {
            loadv<V>(v + r * d + c, x);
        } else {
            for (int k = 0; k < V; ++k) x[k] = c + k < d ? ld(v, r * d + c + k) : (c + k == d ? 1.0f : 0.0f);
        }
        storev<V>(out + r * dp + c, x);
    }
}

// y = (a O + nd[:, :d]) / (a + nd[:, d] + eps), dinv = 1 / (a + nd[:, d] + eps). O may be
// null (a = 0, the linear rate). nd [rows, dp] fp32 is phi_q(q) [S | z].
template <typename T, int V>
__device__ void combine(const T* o, const float* nd, float a, float eps, T* y, float* dinv, long long rows, int d, int dp) {
    GRID_STRIDE(i, rows * (d / V)) {
        long long r = i / (d / V);
        int c = (int)(i - r * (d / V)) * V;
        float inv = 1.0f / (a + nd[r * dp + d] + eps);
        float num[V], anchor[V];
        loadv<V>(nd + r * dp + c, num);
        if (o) {
            loadv<V>(o + r * d + c, anchor);
        } else {
            for (int k = 0; k < V; ++k) anchor[k] = 0.0f;
        }
        for (int k = 0; k < V; ++k) num[k] = (a * anchor[k] + num[k]) * inv;
        storev<V>(y + r * d + c, num);
        if (c == 0) dinv[r] = inv;
    }
}

// The combination's backward, one warp per row: g = [dy / D, -(dy . y) / D, 0...] (the
// gradient of [num | den]) and dO = a dy / D (when dO is not null).
template <typename T, int V>
__device__ void combine_backward(const T* dy, const T* y, const float* dinv, float a, T* d_o, T* g, long long rows, int d, int dp) {
    long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    long long warps = (long long)gridDim.x * blockDim.x / 32;
    for (long long r = warp; r < rows; r += warps) {
        float dot = 0.0f;
        for (int c = lane * V; c < d; c += 32 * V) {
            float gy[V], yy[V];
            loadv<V>(dy + r * d + c, gy);
            loadv<V>(y + r * d + c, yy);
            for (int k = 0; k < V; ++k) dot += gy[k] * yy[k];
        }
        for (int off = 16; off > 0; off /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, off);
        float inv = dinv[r];
        for (int c = lane * V; c < dp; c += 32 * V) {
            float out[V], gy[V];
            if (c + V <= d) {
                loadv<V>(dy + r * d + c, gy);
                for (int k = 0; k < V; ++k) out[k] = gy[k] * inv;
                if (d_o) {
                    for (int k = 0; k < V; ++k) gy[k] *= a * inv;
                    storev<V>(d_o + r * d + c, gy);
                }
            } else {
                for (int k = 0; k < V; ++k) {
                    int cc = c + k;
                    out[k] = cc < d ? ld(dy, r * d + cc) * inv : (cc == d ? -dot * inv : 0.0f);
                    if (d_o && cc < d) st(d_o, r * d + cc, a * ld(dy, r * d + cc) * inv);
                }
            }
            storev<V>(g + r * dp + c, out);
        }
    }
}

#define INSTANTIATE_V(SUFFIX, T, V)                                                                                     \
    extern "C" __global__ void bias_gelu_##SUFFIX##_v##V(const T* pre, const float* b1, T* hid, int slab_len,          \
                                                         int width, int heads) {                                       \
        bias_gelu<T, V>(pre, b1, hid, slab_len, width, heads);                                                         \
    }                                                                                                                  \
    extern "C" __global__ void bias_chunks_##SUFFIX##_v##V(const T* psi, const float* b2, T* phi, int slab_len,        \
                                                           int width, int heads, int e1, int e2, int e3) {             \
        bias_chunks<T, V>(psi, b2, phi, slab_len, width, heads, e1, e2, e3);                                           \
    }                                                                                                                  \
    extern "C" __global__ void chunks_backward_##SUFFIX##_v##V(const float* dphi, const T* psi, const float* b2,       \
                                                               T* dpsi, int slab_len, int width, int heads, int e1,    \
                                                               int e2, int e3) {                                        \
        chunks_backward<T, V>(dphi, psi, b2, dpsi, slab_len, width, heads, e1, e2, e3);                                \
    }                                                                                                                  \
    extern "C" __global__ void gelu_backward_##SUFFIX##_v##V(const float* dhid, const T* pre, const float* b1,         \
                                                             T* dpre, int slab_len, int width, int heads) {            \
        gelu_backward<T, V>(dhid, pre, b1, dpre, slab_len, width, heads);                                              \
    }                                                                                                                  \
    extern "C" __global__ void augment_##SUFFIX##_v##V(const T* v, T* out, long long rows, int d, int dp) {            \
        augment<T, V>(v, out, rows, d, dp);                                                                            \
    }                                                                                                                  \
    extern "C" __global__ void combine_##SUFFIX##_v##V(const T* o, const float* nd, float a, float eps, T* y,           \
                                                       float* dinv, long long rows, int d, int dp) {                  \
        combine<T, V>(o, nd, a, eps, y, dinv, rows, d, dp);                                                            \
    }                                                                                                                  \
    extern "C" __global__ void combine_backward_##SUFFIX##_v##V(const T* dy, const T* y, const float* dinv, float a,   \
                                                                T* d_o, T* g, long long rows, int d, int dp) {         \
        combine_backward<T, V>(dy, y, dinv, a, d_o, g, rows, d, dp);                                                   \
    }

INSTANTIATE_V(bf16, bf16_t, 1)
INSTANTIATE_V(bf16, bf16_t, 8)
INSTANTIATE_V(f32, float, 1)
INSTANTIATE_V(f32, float, 8)
