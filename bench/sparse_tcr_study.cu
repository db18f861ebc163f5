// Study, not a product kernel: a sparse forward whose work follows the active small kernels, for
// the density figure of the CUDA op (kernels/README.md, "Density: the open figure").
// bench/sparse_tcr_study.py compiles it per plane shape with NVRTC, checks it against the PyTorch
// oracle and times it against the default op.
//
// Per (channel, block of P images), for the identity kernel and then each active kernel j:
//   response (tensor cores): Z_j, the k x k correlation of the staged bf16 input, as one m16n8k16
//     per line tap on a 16-line x 8-column tile (Toeplitz fragments of the kernel row), stored in
//     fp32 twice: row-major ("V plane") and transposed ("H plane"), both with zero rows around them;
//   gathers (CUDA cores): a thread adds the N_rep shifted copies of Z_j into its 4 x 4 V tile and
//     its 4 x 4 H tile with aligned 16-byte loads only (a vertical shift moves rows of the V plane,
//     a horizontal one rows of the H plane), four additions per load.
// The identity branch is the response of the folded identity kernel sum_g W_iota(g), read once.
// No atomics; every sum has a fixed order. bf16 input and outputs, fp32 accumulation.
//
// Compile-time geometry (-D, from the host): KS, H, W, P (images per block), NWARPS, MAXREG (the
// register cap), and the plane layouts below. Run-time: B, C, nk, nrep (<= 4).
//   x staging (bf16): image row y, column x at (y + 2RS) * PX + x + RS + 4, rows [0, XR)
//   V plane (fp32):   (y, x) at (y + LOV) * PV + x + 4, rows [0, RV), LOV = RS + 3
//   H plane (fp32):   (y, x) at (x + LOH) * PH + y + 4, rows [0, RH), LOH = RS + 3
// A thread's 4-line window of a shift is read only when it meets the response's support [-RS,
// n + RS); it then lies in [-RS - 3, n + RS + 3), whose rows outside the support are zero.
// Response tiles: lines y = 16 L - RS + [0, 16), L < NLT; columns x = 8 n - RS + [0, 8), n < NCT.

#define RS (KS / 2)
#define KK (KS * KS)
#define SKIP 0x40000000  // a shift byte offset no window check accepts (unused groups)
#define NT (32 * NWARPS)
#define HP ((H + 3) & ~3)
#define WP ((W + 3) & ~3)
#define NTH (HP / 4)
#define NTW (WP / 4)
#define NTILE (NTH * NTW)           // 4 x 4 output tiles per image
#define NRESP (P * NLT * NCT)       // response tiles per block
#define XPL (XR * PX)               // staged input plane, elements
#define VPL (RV * PV)               // V plane, floats
#define HPL (RH * PH)               // H plane, floats

typedef unsigned short u16;
typedef unsigned int u32;

__device__ __forceinline__ u32 bf16x2(float lo, float hi) {
    u32 d;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
}

__device__ __forceinline__ u32 smem_addr(const void* p) { return (u32)__cvta_generic_to_shared(p); }

// v, opaque to the compiler: computed once and kept in a register, not recomputed where used
__device__ __forceinline__ u32 opaque(u32 v) {
    asm volatile("" : "+r"(v));
    return v;
}

__device__ __forceinline__ void ldsm_x4(u32 addr, u32& r0, u32& r1, u32& r2, u32& r3) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
                 : "r"(addr));
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], u32 a0, u32 a1, u32 a2, u32 a3, uint2 b) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b.x), "r"(b.y));
}

__device__ __forceinline__ void zero_range(float* p, int n4) {
    float4* q = (float4*)p;
    for (int t = threadIdx.x; t < n4; t += NT) q[t] = make_float4(0.f, 0.f, 0.f, 0.f);
}

// Shared memory of one block (dynamic; the host sizes it with the same formula).
struct Smem {
    float* zv;     // P V planes
    float* zh;     // P H planes
    u16* xs;       // P staged input planes
    uint2* tb;     // Toeplitz fragments [kernel slot][line tap][lane]; slot nk: the identity kernel
    int4* tv;      // V shift byte offsets per active kernel (SKIP: unused group)
    int4* th;      // H shift byte offsets
    float* w;      // the channel's weights (nk x KK)
    int* off;      // the channel's shifts: V (nk x nrep), then H
    int* cnt;      // identity picks of each kernel, 0 where inactive (nk)
    unsigned char* act;  // the channel's mask (nk)
    float* wi;     // the folded identity kernel (KK)
    int* list;     // active kernels, ascending
};

__device__ __forceinline__ Smem carve(float* smem, int nk) {
    Smem m;
    m.zv = smem;
    m.zh = m.zv + P * VPL;
    m.xs = (u16*)(m.zh + P * HPL);
    m.tb = (uint2*)(m.xs + ((P * XPL + 7) & ~7));
    m.tv = (int4*)(m.tb + (nk + 1) * KS * 32);
    m.th = m.tv + nk;
    m.w = (float*)(m.th + nk);
    m.off = (int*)(m.w + nk * KK);
    m.cnt = m.off + 8 * nk;
    m.wi = (float*)(m.cnt + nk);
    m.list = (int*)(m.wi + KK);
    m.act = (unsigned char*)(m.list + nk);
    return m;
}

// Toeplitz fragment of kernel row `row` (KS taps, fp32) for a lane: b.x = (T[2t][g], T[2t+1][g]),
// b.y = (T[2t+8][g], T[2t+9][g]), T[q][col] = row[q - col - 4 + RS] (the window starts 4 columns
// left of the tile).
__device__ __forceinline__ uint2 toeplitz_fragment(const float* row, int lane) {
    const int g = lane >> 2, t = lane & 3;
    float v[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
        const int q = 2 * t + (e & 1) + 8 * (e >> 1), k = q - g - 4 + RS;
        v[e] = (k >= 0 && k < KS) ? row[k] : 0.f;
    }
    return make_uint2(bf16x2(v[0], v[1]), bf16x2(v[2], v[3]));
}

// Stages the P input planes of channel c as bf16 (zero rows and columns around them were cleared).
__device__ __forceinline__ void stage_input(const u16* __restrict__ x, u16* xs, int b0, int np, int C, int c) {
    constexpr int HW = H * W;
    for (int p = 0; p < np; ++p) {
        const u16* s = x + ((long long)(b0 + p) * C + c) * HW;
        u16* d = xs + p * XPL + 2 * RS * PX + RS + 4;
        for (int e0 = threadIdx.x; e0 < HW; e0 += 8 * NT) {
            u16 v[8];
#pragma unroll
            for (int k = 0; k < 8; ++k) v[k] = e0 + k * NT < HW ? s[e0 + k * NT] : (u16)0;
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const int e = e0 + k * NT;
                if (e < HW) d[(e / W) * PX + e % W] = v[k];
            }
        }
    }
}

__device__ __forceinline__ float4 lds128(u32 a) {
    float4 v;
    asm volatile("ld.shared.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w) : "r"(a));
    return v;
}

__device__ __forceinline__ void sts32(u32 a, float v) { asm volatile("st.shared.f32 [%0], %1;" ::"r"(a), "f"(v)); }

#define RPW ((NRESP + NWARPS - 1) / NWARPS)  // response tiles per warp, at most

// Shared-memory addresses of this lane's response tiles (warp w: tiles w, w + NWARPS, ...): the
// ldmatrix row of line tap 0, and its accumulator elements (0, 0) in the V and H planes.
struct RespTiles {
    u32 a[RPW], zv[RPW], zh[RPW];
};

__device__ __forceinline__ RespTiles resp_tiles(const Smem& m) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
    RespTiles r;
#pragma unroll
    for (int k = 0; k < RPW; ++k) {
        const int tau = min(warp + k * NWARPS, NRESP - 1);
        const int p = tau / (NLT * NCT), rest = tau - p * (NLT * NCT), L = rest / NCT, n = rest - L * NCT;
        r.a[k] = opaque(smem_addr(m.xs) + 2 * (p * XPL + (16 * L + (lane & 15)) * PX + 8 * n + 8 * (lane >> 4)));
        // lines y = 16 L - RS + g (+8), columns x = 8 n - RS + 2t (+1)
        r.zv[k] = opaque(smem_addr(m.zv) + 4 * (p * VPL + (16 * L - RS + g + LOV) * PV + 8 * n - RS + 2 * t + 4));
        r.zh[k] = opaque(smem_addr(m.zh) + 4 * (p * HPL + (8 * n - RS + 2 * t + LOH) * PH + 16 * L - RS + g + 4));
    }
    return r;
}

// One kernel's response over the block's tiles, stored to the V plane and (with_h) the H plane.
// tb: the kernel's fragments (KS x 32).
template <bool with_h>
__device__ __forceinline__ void response(const RespTiles& rt, const uint2* tb) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    uint2 b[KS];
#pragma unroll
    for (int a = 0; a < KS; ++a) b[a] = tb[a * 32 + lane];
    // the next tile's fragments are loaded before this tile's stores: a load cannot move above a
    // shared-memory store, so loading after it would serialise the tiles
    u32 A[2][KS][4];
#pragma unroll
    for (int a = 0; a < KS; ++a) ldsm_x4(rt.a[0] + 2 * a * PX, A[0][a][0], A[0][a][1], A[0][a][2], A[0][a][3]);
#pragma unroll
    for (int k = 0; k < RPW; ++k) {
        if (warp + k * NWARPS >= NRESP) break;
        const int cur = k & 1;
        if (k + 1 < RPW && warp + (k + 1) * NWARPS < NRESP) {
#pragma unroll
            for (int a = 0; a < KS; ++a)
                ldsm_x4(rt.a[k + 1] + 2 * a * PX, A[cur ^ 1][a][0], A[cur ^ 1][a][1], A[cur ^ 1][a][2], A[cur ^ 1][a][3]);
        }
        float acc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int a = 0; a < KS; ++a) mma_bf16(acc, A[cur][a][0], A[cur][a][1], A[cur][a][2], A[cur][a][3], b[a]);
        sts32(rt.zv[k], acc[0]);
        sts32(rt.zv[k] + 4, acc[1]);
        sts32(rt.zv[k] + 32 * PV, acc[2]);
        sts32(rt.zv[k] + 32 * PV + 4, acc[3]);
        if (with_h) {
            sts32(rt.zh[k], acc[0]);
            sts32(rt.zh[k] + 4 * PH, acc[1]);
            sts32(rt.zh[k] + 32, acc[2]);
            sts32(rt.zh[k] + 4 * PH + 32, acc[3]);
        }
    }
}

// Adds the shifted copies (byte offsets o) of the 4 x 4 window at shared address zp (rows `pitch`
// floats apart) into acc, those whose window meets the support: rowb + o in [0, lim) bytes, rowb
// the byte offset of the window's first line from line -RS - 3.
template <int pitch>
__device__ __forceinline__ void gather(float (&acc)[4][4], u32 zp, int4 o, u32 rowb, u32 lim) {
    const int off[4] = {o.x, o.y, o.z, o.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        if (rowb + off[k] >= lim) continue;
        float4 v[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) v[r] = lds128(zp + off[k] + 4 * r * pitch);
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            acc[r][0] += v[r].x;
            acc[r][1] += v[r].y;
            acc[r][2] += v[r].z;
            acc[r][3] += v[r].w;
        }
    }
}

// Writes a 4 x 4 tile (acc[i][j] at row y0 + i, column x0 + j) of one (image, channel) plane as
// bf16, inside the image only.
__device__ __forceinline__ void store_tile(u16* plane, int y0, int x0, const float (&acc)[4][4]) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int y = y0 + i;
        if (y >= H) break;
        const u32 lo = bf16x2(acc[i][0], acc[i][1]), hi = bf16x2(acc[i][2], acc[i][3]);
        u16* row = plane + y * W + x0;
        if (W % 4 == 0) {
            *(uint2*)row = make_uint2(lo, hi);
        } else if (W % 2 == 0) {
            *(u32*)row = lo;
            if (x0 + 2 < W) *(u32*)(row + 2) = hi;
        } else {
            const u16 v[4] = {(u16)(lo & 0xffffu), (u16)(lo >> 16), (u16)(hi & 0xffffu), (u16)(hi >> 16)};
#pragma unroll
            for (int j = 0; j < 4; ++j)
                if (x0 + j < W) row[j] = v[j];
        }
    }
}

extern "C" __global__ void __maxnreg__(MAXREG)
study_tcr_fwd(const u16* __restrict__ x, const float* __restrict__ w, const int* __restrict__ offh,
              const int* __restrict__ offv, const int* __restrict__ idc, const unsigned char* __restrict__ active,
              u16* __restrict__ out_h, u16* __restrict__ out_v, u16* __restrict__ out_i, int B, int C, int nk,
              int nrep) {
    extern __shared__ __align__(16) float smem[];
    __shared__ int s_n;
    const int c = blockIdx.x, b0 = blockIdx.y * P, np = min(P, B - b0);
    const int tid = threadIdx.x;
    const Smem m = carve(smem, nk);

    // one round of global loads for the channel's tables (contiguous per channel), then the input
    zero_range(smem, (P * (VPL + HPL) + ((P * XPL + 7) & ~7) / 2) / 4);
    for (int t = tid; t < nk * KK; t += NT) m.w[t] = w[(long long)c * nk * KK + t];
    for (int t = tid; t < nk * nrep; t += NT) {
        m.off[t] = offv[(long long)c * nk * nrep + t];
        m.off[nk * nrep + t] = offh[(long long)c * nk * nrep + t];
    }
    for (int t = tid; t < nk; t += NT) {
        const unsigned char a = active[c * nk + t];
        m.act[t] = a;
        m.cnt[t] = a ? idc[c * nk + t] : 0;
    }
    __syncthreads();
    compact_active(nk, m.act, m.list, &s_n);  // study_common.cuh
    stage_input(x, m.xs, b0, np, C, c);
    if (tid < KK) {  // the folded identity kernel, in kernel order
        float s = 0.f;
        for (int j = 0; j < nk; ++j) s += (float)m.cnt[j] * m.w[j * KK + tid];
        m.wi[tid] = s;
    }
    __syncthreads();
    const int n = s_n;
    for (int t = tid; t < n * 4; t += NT) {
        const int i = t >> 2, gg = t & 3, src = m.list[i] * nrep + gg;
        ((int*)m.tv)[t] = gg < nrep ? 4 * PV * m.off[src] : SKIP;
        ((int*)m.th)[t] = gg < nrep ? 4 * PH * m.off[nk * nrep + src] : SKIP;
    }
    for (int t = tid; t < (n + 1) * KS * 32; t += NT) {
        const int ln = t & 31, rest = t >> 5, a = rest % KS, i = rest / KS;
        const float* row = (i < n ? m.w + m.list[i] * KK : m.wi) + a * KS;
        m.tb[(i < n ? i : nk) * KS * 32 + a * 32 + ln] = toeplitz_fragment(row, ln);
    }
    __syncthreads();

    // this thread's tiles: V row-major, H column-major (each order keeps a quarter-warp's 16-byte
    // loads in distinct bank groups)
    const bool own = tid < P * NTILE;
    const int p = own ? tid / NTILE : 0, q = tid - p * NTILE;
    const int av = q / NTW, bv = q - av * NTW, bh = q / NTH, ah = q - bh * NTH;
    const u32 zvv = opaque(smem_addr(m.zv + p * VPL + (4 * av + LOV) * PV + 4 * bv + 4));
    const u32 zhh = opaque(smem_addr(m.zh + p * HPL + (4 * bh + LOH) * PH + 4 * ah + 4));
    const RespTiles rt = resp_tiles(m);
    const u32 rowv = (4 * av + 3 + RS) * 4 * PV, limv = (H + 2 * RS + 3) * 4 * PV;
    const u32 rowh = (4 * bh + 3 + RS) * 4 * PH, limh = (W + 2 * RS + 3) * 4 * PH;
    const long long plane = ((long long)(b0 + p) * C + c) * (H * W);
    const bool store = own && p < np;

    response<false>(rt, m.tb + nk * KS * 32);
    __syncthreads();
    if (store) {
        float acc[4][4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            const float4 v = lds128(zvv + 4 * r * PV);
            acc[r][0] = v.x;
            acc[r][1] = v.y;
            acc[r][2] = v.z;
            acc[r][3] = v.w;
        }
        store_tile(out_i + plane, 4 * av, 4 * bv, acc);
    }

    float aV[4][4], aH[4][4];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int k = 0; k < 4; ++k) aV[r][k] = aH[r][k] = 0.f;

#pragma unroll 1
    for (int i = 0; i < n; ++i) {
        __syncthreads();  // the previous gathers are done with the planes
        response<true>(rt, m.tb + i * KS * 32);
        __syncthreads();
        if (own) {
            gather<PV>(aV, zvv, m.tv[i], rowv, limv);
            gather<PH>(aH, zhh, m.th[i], rowh, limh);
        }
    }

    if (store) {
        store_tile(out_v + plane, 4 * av, 4 * bv, aV);
        float t[4][4];  // aH[i][j]: image column 4 bh + i, row 4 ah + j
#pragma unroll
        for (int r = 0; r < 4; ++r)
#pragma unroll
            for (int k = 0; k < 4; ++k) t[r][k] = aH[k][r];
        store_tile(out_h + plane, 4 * ah, 4 * bh, t);
    }
}
