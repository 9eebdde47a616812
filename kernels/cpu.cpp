// KSR's two recurrences, its memory read, CE loss and dropout mask as compiled loops for the
// CPU: kernels/cpu.py compiles this file (c++ -O3 -march=native -fopenmp) and is its only caller.
//
// 1. The GRU, forward and backward: one pass over the steps per row tile, each step's product
//    and gate math fused, the row tiles spread over threads.
//
// Computes what nn.GRU (bias=False) computes for one layer, given the input projections
// gi = x W_ih^T of the valid steps only (n, 3H), packed row after row (made outside, as one
// large product over the n = sum(lengths) valid steps, not the B x L padded ones):
//     gh = h_{t-1} W_hh^T                       (gates r, z, n: columns [0,H), [H,2H), [2H,3H))
//     r = sigmoid(gi_r + gh_r),  z = sigmoid(gi_z + gh_z),  n = tanh(gi_n + r * gh_n)
//     h_t = (1 - z) * n + z * h_{t-1}           h_0 = 0
// Rows are independent, so a thread takes a tile of whole rows for all L steps: nothing is
// shared between threads inside a call, and the result is the same on any number of threads.
// A row's padding steps (t >= length) are skipped: out is 0 there and their gradient is not
// propagated (the GRU's callers never read them).
//
// Why this pays where torch does not: nn.GRU makes ~10 small operations per step forward
// and ~25 under autograd backward, each a call of a few microseconds on a (B x 128) block;
// here a step is one register-blocked product and one loop over the gates.
//
// 2. The memory write of a frozen KG (nothing in it is trained, so no backward): ksr.memory_write,
//    for every valid step t and relation a, E = e_t + r_a, z = sigmoid(v_a . E),
//    v_a <- v_a + z (E - v_a); one row's memory (R x K) stays in cache for all its steps, where
//    torch makes ~6 small operations per step. Then the read and its gradient towards the query.
//
// 3. The CE loss over all items, value and gradient in one pass (below).
// 4. The dropout mask, from a counter-based generator on all threads (below).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

namespace {

// The vector width: 64 bytes (AVX-512) where the compiler targets it (-march=native on a CPU
// that has it), else 32 (AVX2; other CPUs get what their compiler makes of 32-byte vectors).
// A core with full-width AVX-512 units makes twice the products per cycle (docs/results.md has
// the rates: torch's BLAS takes the AVX2 path on AMD CPUs).
#if defined(__AVX512F__)
#define KSR_VBYTES 64
#else
#define KSR_VBYTES 32
#endif
constexpr int PAD = 2 * KSR_VBYTES / 4;  // columns padded to a multiple: two float vectors (kernels/cpu.py asks)

// exp without branches, so that the gate loops vectorize: exp(x) = 2^n exp(r), |r| <= ln2 / 2,
// exp(r) by its Taylor series (degree 13 in double, 7 in float: the truncation below half an ulp).
// The clamp saturates +-inf as torch's sigmoid and tanh do. A NaN passes it (every comparison is
// false) and makes r, so p, NaN: NaN comes out, and the training's NaN check sees it. 2^n is made
// from n's bits, not by casting n to an integer (which for a NaN n is undefined behaviour).
inline double exp_(double x) {
    x = x < -708.0 ? -708.0 : (x > 708.0 ? 708.0 : x);  // a ternary, not std::min: it vectorizes
    double n = std::floor(x * 1.4426950408889634 + 0.5);
    double r = (x - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10;  // ln 2, in two parts
    double p = 1.0 / 6227020800.0;
    const double c[] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0, 1.0 / 362880.0, 1.0 / 40320.0,
                        1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0};
    for (double ci : c) p = p * r + ci;
    double t = n + 6755399441055744.0;  // 1.5 * 2^52: the integer n in t's low bits, no cast (of a NaN: UB)
    uint64_t bits;
    std::memcpy(&bits, &t, sizeof bits);
    bits = (bits - 0x4338000000000000ull + 1023) << 52;
    double s;
    std::memcpy(&s, &bits, sizeof s);
    return p * s;
}

inline float exp_(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    float n = std::floor(x * 1.44269504f + 0.5f);
    float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    float p = 1.0f / 5040.0f;
    const float c[] = {1.0f / 720.0f, 1.0f / 120.0f, 1.0f / 24.0f, 1.0f / 6.0f, 0.5f, 1.0f, 1.0f};
    for (float ci : c) p = p * r + ci;
    float t = n + 12582912.0f;  // 1.5 * 2^23, as above
    uint32_t bits;
    std::memcpy(&bits, &t, sizeof bits);
    bits = (bits - 0x4B400000u + 127) << 23;
    float s;
    std::memcpy(&s, &bits, sizeof s);
    return p * s;
}

template <typename T> inline T sigmoid_(T x) { return T(1) / (T(1) + exp_(-x)); }
template <typename T> inline T tanh_(T x) { return T(2) / (T(1) + exp_(T(-2) * x)) - T(1); }

// The register block of the step's product: RT = 6 rows x 2 vectors, 12 accumulators (of AVX2's 16
// registers: the 6 x 16 block of an AVX2 sgemm; of AVX-512's 32). Written with GCC/clang vector
// types, not left to the auto-vectorizer: it spilled the block to the stack when inlined.
constexpr int RT = 6;
typedef float f32v __attribute__((vector_size(KSR_VBYTES)));
typedef double f64v __attribute__((vector_size(KSR_VBYTES)));
template <typename T> struct Vec;
template <> struct Vec<float> { using type = f32v; };
template <> struct Vec<double> { using type = f64v; };
template <typename T> using vec = typename Vec<T>::type;
template <typename T> constexpr int LANES = sizeof(vec<T>) / sizeof(T);

template <typename T> inline vec<T> load(const T* p) { vec<T> v; std::memcpy(&v, p, sizeof v); return v; }
template <typename T> inline void store(T* p, vec<T> v) { std::memcpy(p, &v, sizeof v); }

// out[r][j] = sum_k a[r][k] w[k][j] for r < RT and every (padded) column j: a (RT, K) with row
// stride lda, w (K, ldw) row-major, ldw a multiple of 2 LANES. The product of every step.
// With ACC, out += instead of out =.
template <typename T, bool ACC = false>
inline void tile_product(const T* __restrict a, int64_t lda, const T* __restrict w, int64_t K, int64_t ldw,
                         T* __restrict out) {
    constexpr int W = LANES<T>;
    for (int64_t j0 = 0; j0 < ldw; j0 += 2 * W) {
        vec<T> acc[RT][2] = {};
        for (int64_t k = 0; k < K; ++k) {
            const vec<T> w0 = load(w + k * ldw + j0), w1 = load(w + k * ldw + j0 + W);
            for (int r = 0; r < RT; ++r) {
                const T ak = a[r * lda + k];
                acc[r][0] += ak * w0;
                acc[r][1] += ak * w1;
            }
        }
        for (int r = 0; r < RT; ++r) {
            T* o = out + r * ldw + j0;
            if (ACC) acc[r][0] += load(o), acc[r][1] += load(o + W);
            store(o, acc[r][0]);
            store(o + W, acc[r][1]);
        }
    }
}

// Rows sorted by length (longest first) and cut into tiles of RT, the longest tiles first
// (they are taken in this order: the last ones taken are the shortest).
inline std::vector<std::vector<int64_t>> tiles_by_length(const int64_t* lengths, int64_t B) {
    std::vector<int64_t> order(B);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return lengths[a] > lengths[b]; });
    std::vector<std::vector<int64_t>> tiles;
    for (int64_t i = 0; i < B && lengths[order[i]] > 0; i += RT)
        tiles.emplace_back(order.begin() + i, order.begin() + std::min(i + RT, B));
    return tiles;
}

// Tiles 0..n-1 of a call, spread over nthreads threads: torch's own OpenMP threads (cpu.py
// compiles with -fopenmp, and the loader gives this library the libgomp torch has loaded),
// so a call finds them spinning after torch's last operation instead of waking threads of
// its own, and never competes with them for the cores. Taken one at a time (dynamic): tiles
// differ in length. Without OpenMP the pragma is ignored and the tiles run in order.
template <typename Fn> void for_each_tile(int nthreads, int64_t n, Fn fn) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads) if (nthreads > 1 && n > 1)
    for (int64_t i = 0; i < n; ++i) fn(i);
}

// a . b over K elements, in vector lanes (a sum of floats vectorizes only by reassociating it,
// which the compiler may not do on its own), then the lanes and the tail.
template <typename T> inline T dot(const T* __restrict a, const T* __restrict b, int64_t K) {
    constexpr int W = LANES<T>;
    vec<T> acc = {};
    int64_t k = 0;
    for (; k + W <= K; k += W) acc += load(a + k) * load(b + k);
    T sum = 0;
    for (int i = 0; i < W; ++i) sum += acc[i];
    for (; k < K; ++k) sum += a[k] * b[k];
    return sum;
}

// Items 0..n-1 in tiles of `per` consecutive ones, spread over threads: fn(j0, j1) per tile.
template <typename Fn> void for_each_range(int nthreads, int64_t n, int64_t per, Fn fn) {
    for_each_tile(nthreads, (n + per - 1) / per, [&](int64_t i) { fn(i * per, std::min(n, (i + 1) * per)); });
}

inline int64_t up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }  // x up to a multiple of m

struct Shape {
    int64_t B, L, H, n, G, Gp, Hp;  // n valid steps in all; G = 3H; Gp, Hp: G and H padded to a multiple of PAD
    Shape(int64_t B, int64_t L, int64_t H, int64_t n)
        : B(B), L(L), H(H), n(n), G(3 * H), Gp(up(3 * H, PAD)), Hp(up(H, PAD)) {}
};

// One row's gates at one step (the loops vectorize: separate functions, restrict pointers).
template <typename T>
void forward_gates(int64_t H, const T* __restrict g, const T* __restrict gh, const T* hprev, T* hnext,
                   T* __restrict o, T* __restrict sr, int64_t plane) {
    for (int64_t k = 0; k < H; ++k) {
        sr[4 * plane + k] = hprev[k];  // h_{t-1}, for backward and for dW_hh (read before hnext is written)
        T rg = sigmoid_(g[k] + gh[k]);
        T zg = sigmoid_(g[H + k] + gh[H + k]);
        T ng = tanh_(g[2 * H + k] + rg * gh[2 * H + k]);
        T hn = (T(1) - zg) * ng + zg * hprev[k];
        o[k] = hn;
        hnext[k] = hn;  // may be hprev itself: element k is read before it is written
        sr[k] = rg, sr[plane + k] = zg, sr[2 * plane + k] = ng, sr[3 * plane + k] = gh[2 * H + k];
    }
}

template <typename T>
void backward_gates(int64_t H, const T* __restrict d, const T* __restrict sr, int64_t plane, T* __restrict dh,
                    T* __restrict dgi, T* __restrict dgh, T* __restrict dg) {
    for (int64_t k = 0; k < H; ++k) {
        T rg = sr[k], zg = sr[plane + k], ng = sr[2 * plane + k], ghn = sr[3 * plane + k];
        T hprev = sr[4 * plane + k];
        T g = dh[k] + d[k];                          // dL/dh_t
        T dn = g * (T(1) - zg) * (T(1) - ng * ng);   // through tanh: dL/d(gi_n + r gh_n)
        T dz = g * (hprev - ng) * zg * (T(1) - zg);  // dL/d(gi_z + gh_z)
        T dr = dn * ghn * rg * (T(1) - rg);          // dL/d(gi_r + gh_r)
        dgi[k] = dr, dgi[H + k] = dz, dgi[2 * H + k] = dn;
        dgh[k] = dr, dgh[H + k] = dz, dgh[2 * H + k] = dn * rg;
        dg[k] = dr, dg[H + k] = dz, dg[2 * H + k] = dn * rg;
        dh[k] = g * zg;                              // the direct path z * h_{t-1}
    }
}

// Forward of one tile. Valid step t of row b is packed position starts[b] + t of gi, saved, dgi
// and dgh; out and dout are (B, L, H). saved (5, n, H): r, z, n, gh_n and h_{t-1} of every valid
// step, for backward.
template <typename T>
void forward_tile(const Shape& s, const std::vector<int64_t>& rows, const int64_t* lengths, const int64_t* starts,
                  const T* gi, const T* whh_t, T* out, T* saved) {
    const int64_t H = s.H, plane = s.n * H;
    std::vector<T> h(RT * s.Hp, T(0)), gh(RT * s.Gp);  // rows of the tile beyond rows.size() stay 0
    for (int64_t t = 0; t < lengths[rows[0]]; ++t) {
        tile_product<T>(h.data(), s.Hp, whh_t, H, s.Gp, gh.data());  // gh = h_{t-1} W_hh^T
        for (size_t r = 0; r < rows.size() && t < lengths[rows[r]]; ++r) {
            const int64_t at = starts[rows[r]] + t;
            T* hr = h.data() + r * s.Hp;
            forward_gates(H, gi + at * s.G, gh.data() + r * s.Gp, hr, hr, out + (rows[r] * s.L + t) * H, saved + at * H,
                          plane);
        }
    }
}

// Backward of one tile, from the last step down: dh is the gradient reaching h_t (from out_t
// and from step t+1). Writes dgi (the gradient of gi) and dgh (of gh = h_{t-1} W_hh^T); the
// weight gradient, sum_t dgh_t^T h_{t-1}, is one large product made by the caller.
template <typename T>
void backward_tile(const Shape& s, const std::vector<int64_t>& rows, const int64_t* lengths, const int64_t* starts,
                   const T* dout, const T* saved, const T* whh, T* dgi, T* dgh) {
    const int64_t H = s.H, plane = s.n * H;
    std::vector<T> dh(RT * s.Hp, T(0)), dg(RT * s.Gp, T(0)), back(RT * s.Hp);
    for (int64_t t = lengths[rows[0]] - 1; t >= 0; --t) {
        size_t active = 0;
        for (size_t r = 0; r < rows.size() && t < lengths[rows[r]]; ++r, ++active) {
            const int64_t at = starts[rows[r]] + t;
            backward_gates(H, dout + (rows[r] * s.L + t) * H, saved + at * H, plane, dh.data() + r * s.Hp,
                           dgi + at * s.G, dgh + at * s.G, dg.data() + r * s.Gp);
        }
        for (size_t r = active; r < size_t(RT); ++r)  // rows not yet started: no gradient
            std::fill(dg.begin() + r * s.Gp, dg.begin() + (r + 1) * s.Gp, T(0));
        tile_product<T>(dg.data(), s.Gp, whh, s.G, s.Hp, back.data());  // dgh W_hh -> dh_{t-1}
        for (size_t r = 0; r < active; ++r)
            for (int64_t k = 0; k < H; ++k) dh[r * s.Hp + k] += back[r * s.Hp + k];
    }
}

// starts[b]: the packed position of row b's first step (the lengths of the rows before it, summed)
inline std::vector<int64_t> row_starts(const int64_t* lengths, int64_t B) {
    std::vector<int64_t> starts(B + 1, 0);
    for (int64_t b = 0; b < B; ++b) starts[b + 1] = starts[b] + lengths[b];
    return starts;
}

template <typename T>
void forward(int64_t B, int64_t L, int64_t H, const T* gi, const T* whh_t, const int64_t* lengths, T* out,
             T* saved, int nthreads) {
    const auto starts = row_starts(lengths, B);
    const Shape s(B, L, H, starts[B]);
    const auto tiles = tiles_by_length(lengths, B);
    for_each_tile(nthreads, tiles.size(),
                  [&](int64_t i) { forward_tile<T>(s, tiles[i], lengths, starts.data(), gi, whh_t, out, saved); });
}

template <typename T>
void backward(int64_t B, int64_t L, int64_t H, const T* dout, const T* saved, const T* whh, const int64_t* lengths,
              T* dgi, T* dgh, int nthreads) {
    const auto starts = row_starts(lengths, B);
    const Shape s(B, L, H, starts[B]);
    const auto tiles = tiles_by_length(lengths, B);
    for_each_tile(nthreads, tiles.size(), [&](int64_t i) {
        backward_tile<T>(s, tiles[i], lengths, starts.data(), dout, saved, whh, dgi, dgh);
    });
}


// The memory write of one row (kg (L, K), its `len` valid steps): V (R, K) from 0; with
// states, the memory after every valid step is stored there (L, R, K).
template <typename T>
void write_row(int64_t len, int64_t R, int64_t K, const T* __restrict kg, const T* __restrict rel, T* __restrict V,
               T* __restrict states, T* __restrict E) {
    std::fill(V, V + R * K, T(0));
    for (int64_t t = 0; t < len; ++t) {
        const T* e = kg + t * K;
        for (int64_t a = 0; a < R; ++a) {
            T* v = V + a * K;
            for (int64_t k = 0; k < K; ++k) E[k] = e[k] + rel[a * K + k];  // the attribute vector e_t + r_a
            T z = sigmoid_(dot(v, E, K));
            for (int64_t k = 0; k < K; ++k) v[k] += z * (E[k] - v[k]);  // erase, then add
        }
        if (states) std::memcpy(states + t * R * K, V, sizeof(T) * R * K);
    }
}

template <typename T>
void memory_write(int64_t B, int64_t L, int64_t R, int64_t K, const T* kg, const int64_t* lengths, const T* rel, T* V,
                  T* states, int nthreads) {
    for_each_range(nthreads, B, 8, [&](int64_t b0, int64_t b1) {  // 8 rows a tile
        std::vector<T> E(K);
        for (int64_t b = b0; b < b1; ++b)
            write_row<T>(lengths[b], R, K, kg + b * L * K, rel, V + b * R * K, states ? states + b * L * R * K : nullptr,
                         E.data());
    });
}

// The read, m = sum_a w_a v_a with w = softmax_a(gamma s . r_a), at M positions (a row's final
// memory, or every step's), and its gradient towards the query s: dw_a = dm . v_a,
// dl_a = w_a (dw_a - sum_c w_c dw_c), ds = gamma sum_a dl_a r_a. The memory (frozen KG) and the
// keys need none. Torch makes ~8 small operations of it and as many under autograd.
template <typename T>
void read_position(int64_t R, int64_t K, const T* __restrict V, const T* __restrict rel, const T* __restrict s, T gamma,
                   T* __restrict m, T* __restrict w) {
    T top = -INFINITY, z = 0;
    for (int64_t a = 0; a < R; ++a) {
        w[a] = gamma * dot(s, rel + a * K, K);
        top = w[a] > top ? w[a] : top;
    }
    for (int64_t a = 0; a < R; ++a) z += (w[a] = exp_(w[a] - top));
    std::fill(m, m + K, T(0));
    for (int64_t a = 0; a < R; ++a) {
        w[a] /= z;
        for (int64_t k = 0; k < K; ++k) m[k] += w[a] * V[a * K + k];
    }
}

template <typename T>
void read_backward_position(int64_t R, int64_t K, const T* __restrict V, const T* __restrict rel,
                            const T* __restrict w, const T* __restrict dm, T gamma, T* __restrict dw,
                            T* __restrict ds) {
    T g = 0;
    for (int64_t a = 0; a < R; ++a) {
        dw[a] = dot(dm, V + a * K, K);
        g += w[a] * dw[a];
    }
    std::fill(ds, ds + K, T(0));
    for (int64_t a = 0; a < R; ++a) {
        const T dl = gamma * w[a] * (dw[a] - g);
        for (int64_t k = 0; k < K; ++k) ds[k] += dl * rel[a * K + k];
    }
}

template <typename T>
void memory_read(int64_t M, int64_t R, int64_t K, const T* V, const T* rel, const T* s, T gamma, T* m, T* w,
                 int nthreads) {
    for_each_range(nthreads, M, 64, [&](int64_t j0, int64_t j1) {  // 64 positions a tile
        for (int64_t j = j0; j < j1; ++j)
            read_position<T>(R, K, V + j * R * K, rel, s + j * K, gamma, m + j * K, w + j * R);
    });
}

template <typename T>
void memory_read_backward(int64_t M, int64_t R, int64_t K, const T* V, const T* rel, const T* w, const T* dm, T gamma,
                          T* ds, int nthreads) {
    for_each_range(nthreads, M, 64, [&](int64_t j0, int64_t j1) {
        std::vector<T> dw(R);
        for (int64_t j = j0; j < j1; ++j)
            read_backward_position<T>(R, K, V + j * R * K, rel, w + j * R, dm + j * K, gamma, dw.data(), ds + j * K);
    });
}

// 3. The CE loss over all items, its value and its gradient in one pass (ksr.cross_entropy):
//    for targets j with user vector p_j and items i with vector q_i,
//        s_ji = p_j . q_i,  loss_j = log sum_i exp(s_ji) - s_j,target
//        dL/ds_ji = (softmax_i(s_j.) - [i = target_j]) * c_j     (c_j = 1/n: the mean)
//        dP = dS Q,  dQ = dS^T P
//    Torch makes the (n x N) scores in memory and reads them back ~5 times (max, exp, sum,
//    scale, two products); here a block of RB targets' scores, item-major (N x RB: the softmax's
//    sums run down columns, vectorized across the block), stays in cache from its product to
//    its last use. The gradient is made with the value (the loss is the graph's last node, so
//    dL/ds is known here up to the scalar that backward brings).
//    Threads take chunks of blocks; each chunk sums its dQ apart and the chunks' sums are added in
//    a fixed order, so the result does not depend on the thread count.
constexpr int64_t RB = KSR_VBYTES == 64 ? 64 : 48;  // targets per block: a multiple of PAD, (Np x RB) within L2
constexpr int64_t CHUNKS = 8;   // at most this many chunks (and dQ sums) per call

struct CEShape {
    int64_t n, N, D, Np, Dp, Dr, blocks, chunks;  // Np: N to a multiple of RT; Dp: D to PAD; Dr: D to RT
    CEShape(int64_t n, int64_t N, int64_t D)
        : n(n), N(N), D(D), Np(up(N, RT)), Dp(up(D, PAD)), Dr(up(D, RT)), blocks((n + RB - 1) / RB),
          chunks(std::min(CHUNKS, blocks)) {}
};

// The softmax of one block, in place, down columns (each column one target): s (Np x RB) item-major
// scores, rows >= N padding. Leaves dL/ds there, scaled by c (0 for a block's padding columns);
// writes loss_j for the block's real columns.
template <typename T>
void softmax_block(int64_t N, const int64_t* __restrict t, int64_t cols, T c, T* __restrict s, T* __restrict loss) {
    alignas(64) T m[RB], z[RB], st[RB], scale[RB];
    for (int64_t j = 0; j < RB; ++j) m[j] = s[j], z[j] = T(0);
    for (int64_t i = 1; i < N; ++i)
        for (int64_t j = 0; j < RB; ++j) m[j] = s[i * RB + j] > m[j] ? s[i * RB + j] : m[j];
    for (int64_t j = 0; j < cols; ++j) st[j] = s[t[j] * RB + j];
    for (int64_t i = 0; i < N; ++i) {
        T* __restrict row = s + i * RB;
        for (int64_t j = 0; j < RB; ++j) {
            T e = exp_(row[j] - m[j]);
            row[j] = e;
            z[j] += e;
        }
    }
    for (int64_t j = 0; j < RB; ++j) scale[j] = j < cols ? c / z[j] : T(0);
    for (int64_t i = 0; i < N; ++i)
        for (int64_t j = 0; j < RB; ++j) s[i * RB + j] *= scale[j];
    std::fill(s + N * RB, s + up(N, RT) * RB, T(0));  // padding items: no gradient
    for (int64_t j = 0; j < cols; ++j) {
        s[t[j] * RB + j] -= c;
        loss[j] = m[j] + std::log(z[j]) - st[j];
    }
}

// One chunk of blocks: loss and dP of its targets, and its own sum dQc (Np x Dp).
// qp: Q padded (Np x Dp); qt: Q^T padded (Dr x Np); p (n x D) the targets' user vectors.
template <typename T>
void ce_chunk(const CEShape& s, int64_t chunk, const T* p, const int64_t* t, const T* qp, const T* qt, T c,
              bool grad, T* loss, T* dp, T* dqc) {
    std::vector<T> S(s.Np * RB), pt(s.D * RB), pb(RB * s.Dp), dpt(s.Dr * RB);
    const int64_t b0 = chunk * s.blocks / s.chunks, b1 = (chunk + 1) * s.blocks / s.chunks;
    if (grad) std::fill(dqc, dqc + s.Np * s.Dp, T(0));
    for (int64_t b = b0; b < b1; ++b) {
        const int64_t j0 = b * RB, cols = std::min(RB, s.n - j0);
        std::fill(pt.begin(), pt.end(), T(0));
        std::fill(pb.begin(), pb.end(), T(0));
        for (int64_t j = 0; j < cols; ++j)
            for (int64_t d = 0; d < s.D; ++d) pt[d * RB + j] = pb[j * s.Dp + d] = p[(j0 + j) * s.D + d];
        for (int64_t i = 0; i < s.Np; i += RT)  // S^T = Q P_b^T (Np x RB)
            tile_product<T>(qp + i * s.Dp, s.Dp, pt.data(), s.D, RB, S.data() + i * RB);
        softmax_block<T>(s.N, t + j0, cols, c, S.data(), loss + j0);
        if (!grad) continue;
        for (int64_t d = 0; d < s.Dr; d += RT)  // dP_b^T = Q^T dS^T (Dr x RB)
            tile_product<T>(qt + d * s.Np, s.Np, S.data(), s.Np, RB, dpt.data() + d * RB);
        for (int64_t j = 0; j < cols; ++j)
            for (int64_t d = 0; d < s.D; ++d) dp[(j0 + j) * s.D + d] = dpt[d * RB + j];
        for (int64_t i = 0; i < s.Np; i += RT)  // dQ += dS^T P_b (Np x Dp)
            tile_product<T, true>(S.data() + i * RB, RB, pb.data(), RB, s.Dp, dqc + i * s.Dp);
    }
}

template <typename T>
void cross_entropy(int64_t n, int64_t N, int64_t D, const T* p, const int64_t* t, const T* q, T c, T* loss, T* dp,
                   T* dq, int nthreads) {
    const CEShape s(n, N, D);
    const bool grad = dp != nullptr;
    std::vector<T> qp(s.Np * s.Dp, T(0)), qt(s.Dr * s.Np, T(0)), dqc(grad ? s.chunks * s.Np * s.Dp : 0);
    for (int64_t i = 0; i < N; ++i)  // Q and Q^T, padded with zeros to the products' blocks
        for (int64_t d = 0; d < D; ++d) qp[i * s.Dp + d] = qt[d * s.Np + i] = q[i * D + d];
    for_each_tile(nthreads, s.chunks, [&](int64_t k) {
        ce_chunk<T>(s, k, p, t, qp.data(), qt.data(), c, grad, loss, dp, grad ? dqc.data() + k * s.Np * s.Dp : nullptr);
    });
    if (!grad) return;
    for_each_range(nthreads, N, 64, [&](int64_t r0, int64_t r1) {  // dQ (N x D) = the chunks' sums, in chunk order
        for (int64_t r = r0; r < r1; ++r)
            for (int64_t d = 0; d < D; ++d) {
                T acc = 0;
                for (int64_t k = 0; k < s.chunks; ++k) acc += dqc[(k * s.Np + r) * s.Dp + d];
                dq[r * D + d] = acc;
            }
    });
}

// 4. The dropout mask: out[i] = 1 / (1 - p) where a uniform draw u_i >= p, else 0 (nn.Dropout's
//    mask, scaled). u_i comes from the counter-based generator SplitMix64 at position i of the
//    stream `seed` (torch draws the seed, so --seed still fixes every mask): no state, so any
//    thread makes any part of the mask and the result does not depend on the thread count.
//    torch's bernoulli_ draws one element after another on one thread.
inline uint64_t splitmix64(uint64_t x) {
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

template <typename T> void dropout_mask(int64_t n, double p, uint64_t seed, T* out, int nthreads) {
    const uint64_t threshold = uint64_t(p * 9007199254740992.0);  // p * 2^53: u_i < p <=> bits < threshold
    const T keep = T(1.0 / (1.0 - p));
    for_each_range(nthreads, n, 4096, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j)
            out[j] = (splitmix64(seed + uint64_t(j + 1) * 0x9E3779B97F4A7C15ull) >> 11) < threshold ? T(0) : keep;
    });
}

// 5. The rate the register block reaches: each of nthreads threads makes `iters` products of a
//    6 x 128 block by a 128 x 384 matrix (the GRU's step product), all in its own cache. What
//    bench/epoch.py calls the compiled kernels' peak: the FLOPs per second this CPU's vector units give
//    this code, beside the rate of torch's own BLAS.
void product_loop(int64_t iters, int nthreads) {
    constexpr int64_t K = 128, N = 384;
    for_each_tile(nthreads, nthreads, [&](int64_t) {
        std::vector<float> a(RT * K, 0.5f), w(K * N, 0.25f), out(RT * N, 0.0f);
        for (int64_t i = 0; i < iters; ++i) {
            tile_product<float>(a.data(), K, w.data(), K, N, out.data());
            a[i % (RT * K)] = out[i % N] * 1e-9f;  // each product depends on the last: none is skipped
        }
        volatile float sink = out[0];
        (void)sink;
    });
}

}  // namespace

// The entry points (ctypes). Arrays are C-contiguous: gi, dgi, dgh (n, 3H) and saved (5, n, H)
// at the n = sum(lengths) valid steps, packed row after row; out, dout (B, L, H); lengths (B,)
// in [0, L]; whh_t = W_hh^T padded to (H, Gp) and whh = W_hh padded to (3H, Hp) with zero
// columns. out must come zeroed (its padding steps stay 0).
extern "C" {
int ksr_pad() { return PAD; }  // the multiple that the weights' columns are padded to
void ksr_gru_forward_f32(int64_t B, int64_t L, int64_t H, const float* gi, const float* whh_t,
                         const int64_t* lengths, float* out, float* saved, int nthreads) {
    forward<float>(B, L, H, gi, whh_t, lengths, out, saved, nthreads);
}
void ksr_gru_forward_f64(int64_t B, int64_t L, int64_t H, const double* gi, const double* whh_t,
                         const int64_t* lengths, double* out, double* saved, int nthreads) {
    forward<double>(B, L, H, gi, whh_t, lengths, out, saved, nthreads);
}
void ksr_gru_backward_f32(int64_t B, int64_t L, int64_t H, const float* dout, const float* saved, const float* whh,
                          const int64_t* lengths, float* dgi, float* dgh, int nthreads) {
    backward<float>(B, L, H, dout, saved, whh, lengths, dgi, dgh, nthreads);
}
void ksr_gru_backward_f64(int64_t B, int64_t L, int64_t H, const double* dout, const double* saved,
                          const double* whh, const int64_t* lengths, double* dgi, double* dgh, int nthreads) {
    backward<double>(B, L, H, dout, saved, whh, lengths, dgi, dgh, nthreads);
}
// The memory write: kg (B, L, K), lengths (B,) in [0, L], rel (R, K) -> V (B, R, K), and when
// states is not null the memory after every step (B, L, R, K), which must come zeroed.
void ksr_memory_write_f32(int64_t B, int64_t L, int64_t R, int64_t K, const float* kg, const int64_t* lengths,
                          const float* rel, float* V, float* states, int nthreads) {
    memory_write<float>(B, L, R, K, kg, lengths, rel, V, states, nthreads);
}
void ksr_memory_write_f64(int64_t B, int64_t L, int64_t R, int64_t K, const double* kg, const int64_t* lengths,
                          const double* rel, double* V, double* states, int nthreads) {
    memory_write<double>(B, L, R, K, kg, lengths, rel, V, states, nthreads);
}
// The read: V (M, R, K), rel (R, K), s (M, K) -> m (M, K) and the attention w (M, R); its
// backward: w, dm (M, K) -> ds (M, K).
void ksr_memory_read_f32(int64_t M, int64_t R, int64_t K, const float* V, const float* rel, const float* s,
                         double gamma, float* m, float* w, int nthreads) {
    memory_read<float>(M, R, K, V, rel, s, float(gamma), m, w, nthreads);
}
void ksr_memory_read_f64(int64_t M, int64_t R, int64_t K, const double* V, const double* rel, const double* s,
                         double gamma, double* m, double* w, int nthreads) {
    memory_read<double>(M, R, K, V, rel, s, gamma, m, w, nthreads);
}
void ksr_memory_read_backward_f32(int64_t M, int64_t R, int64_t K, const float* V, const float* rel, const float* w,
                                  const float* dm, double gamma, float* ds, int nthreads) {
    memory_read_backward<float>(M, R, K, V, rel, w, dm, float(gamma), ds, nthreads);
}
void ksr_memory_read_backward_f64(int64_t M, int64_t R, int64_t K, const double* V, const double* rel,
                                  const double* w, const double* dm, double gamma, double* ds, int nthreads) {
    memory_read_backward<double>(M, R, K, V, rel, w, dm, gamma, ds, nthreads);
}
// The CE loss: p (n, D), targets t (n,) in [0, N), q (N, D) the items' vectors; c the weight of
// each target (1/n for the mean) -> loss (n,) per target; with dp not null also dp = dL/dP (n, D)
// and dq = dL/dQ (N, D).
void ksr_cross_entropy_f32(int64_t n, int64_t N, int64_t D, const float* p, const int64_t* t, const float* q,
                           double c, float* loss, float* dp, float* dq, int nthreads) {
    cross_entropy<float>(n, N, D, p, t, q, float(c), loss, dp, dq, nthreads);
}
void ksr_cross_entropy_f64(int64_t n, int64_t N, int64_t D, const double* p, const int64_t* t, const double* q,
                           double c, double* loss, double* dp, double* dq, int nthreads) {
    cross_entropy<double>(n, N, D, p, t, q, c, loss, dp, dq, nthreads);
}
// The dropout mask (n,) for drop probability p in [0, 1), from the stream `seed`.
void ksr_dropout_mask_f32(int64_t n, double p, uint64_t seed, float* out, int nthreads) {
    dropout_mask<float>(n, p, seed, out, nthreads);
}
void ksr_dropout_mask_f64(int64_t n, double p, uint64_t seed, double* out, int nthreads) {
    dropout_mask<double>(n, p, seed, out, nthreads);
}
// The register block's rate: nthreads threads x iters products of (6 x 128) @ (128 x 384), float.
void ksr_product_loop(int64_t iters, int nthreads) { product_loop(iters, nthreads); }
}
