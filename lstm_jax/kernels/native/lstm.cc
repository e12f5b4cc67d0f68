// The LSTM on the CPU, written out: XLA FFI handlers for the forward pass (with or without the
// residuals the backward pass reads) and for the backward pass (the whole gradient).
//
// What it does: per step the products x_t W_x + h_{t-1} W_h (the input projection a few steps
// at a time, see kProjectionRows), the gates and the cell update (forward); per step
// dh = dG_{t+1} W_h^T and the gate gradients dG_t, and a chunk of steps at a time the weight,
// bias and input gradients from dG (backward, see gradient_chunk). Both weights are packed once
// per call so that each step reads them in the order it uses them. Resets (packed documents):
// flagged steps start from a reset carry instead of the previous step's.
//
// Threads split the hidden units (blocks of 8, one 256-bit vector): a thread computes all four
// gates of its units, so the cell update needs nothing from the others and one barrier per step
// (after h_t, or dG_t, is written) suffices. The calling thread is one of them; the rest come from
// a pool of our own that sleeps between calls. GCC/Clang vector extensions, not intrinsics: the
// same source compiles for any CPU (-march=native picks AVX2/AVX-512 or SSE/NEON).
//
// Layouts, row-major, time-major: xs [T, B, I]; w_x [I, 4H], w_h [H, 4H], b [4H] (gate blocks
// i, f, g, o along the last axis); h0, c0 [B, H]; ys [T, B, H]; residuals gates [T, B, 4H] (the
// activations i, f, g, o) and cs [T, B, H] (c_t); resets flags [T, B] (bytes), hr, cr [B, H].

#include <pthread.h>
#include <sys/mman.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#ifndef LSTM_JAX_NO_FFI
#include "xla/ffi/api/ffi.h"
#endif

namespace {

// --- vectors of 8 floats ---------------------------------------------------------------------

typedef float v8 __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4)));  // unaligned access
typedef int32_t v8i __attribute__((vector_size(32)));
constexpr int L = 8;

inline v8 load(const float* p) { return *reinterpret_cast<const v8u*>(p); }
inline void store(float* p, v8 v) { *reinterpret_cast<v8u*>(p) = v; }
inline v8 splat(float x) { return v8{x, x, x, x, x, x, x, x}; }
// The first n (1..8) lanes; the rest zero.
inline v8 load_n(const float* p, int n) {
  if (n == L) return load(p);
  float t[L] = {};
  std::memcpy(t, p, n * sizeof(float));
  return load(t);
}
inline void store_n(float* p, v8 v, int n) {
  if (n == L) return store(p, v);
  float t[L];
  store(t, v);
  std::memcpy(p, t, n * sizeof(float));
}

// exp, Cephes' single-precision polynomial (about 1 ulp) after a range reduction by ln 2.
inline v8 exp_v(v8 x) {
  x = x < splat(-87.3f) ? splat(-87.3f) : x;
  x = x > splat(88.3f) ? splat(88.3f) : x;
  const v8 r = (x * 1.44269504088896341f + 12582912.f) - 12582912.f;  // round(x / ln 2)
  const v8 y = (x - r * 0.693359375f) + r * 2.12194440e-4f;
  v8 p = splat(1.9875691500e-4f);
  p = p * y + 1.3981999507e-3f;
  p = p * y + 8.3334519073e-3f;
  p = p * y + 4.1665795894e-2f;
  p = p * y + 1.6666665459e-1f;
  p = p * y + 5.0000001201e-1f;
  p = p * (y * y) + y + 1.f;
  const v8i scale = (__builtin_convertvector(r, v8i) + 127) << 23;  // 2^r
  return p * (v8)scale;
}

inline v8 sigmoid_v(v8 x) { return 1.f / (1.f + exp_v(-x)); }

// tanh: (1 - e) / (1 + e) with e = exp(-2|x|), and its odd series below |x| = 1/8, where that
// quotient would lose relative precision.
inline v8 tanh_v(v8 x) {
  const v8i sign = (v8i)x & (int32_t)0x80000000;
  const v8 ax = (v8)((v8i)x & 0x7fffffff);
  const v8 e = exp_v(-2.f * ax);
  const v8 big = (1.f - e) / (1.f + e);
  const v8 x2 = x * x;
  const v8 small = x + x * x2 * (-1.f / 3 + x2 * (2.f / 15 + x2 * (-17.f / 315 + x2 * (62.f / 2835))));
  return ax < splat(0.125f) ? small : (v8)((v8i)big | sign);
}

// --- threads ---------------------------------------------------------------------------------

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// All n threads wait here until the last arrives. Spins for a few microseconds (about a step's
// work), then yields the core at every check: when the cores are shared (another process, or
// XLA's own threads), the thread being waited for may be descheduled, and a waiter that kept
// spinning would hold its core for a whole scheduler time slice (measured: 15x slower steps
// with two processes on two cores).
constexpr int kSpins = 256;

class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {
    if (n_ == 1) return;
    const int phase = phase_.load(std::memory_order_relaxed);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      phase_.store(phase + 1, std::memory_order_release);
      return;
    }
    for (int spins = 0; phase_.load(std::memory_order_acquire) == phase; ++spins) {
      if (spins < kSpins) cpu_relax(); else std::this_thread::yield();
    }
  }

 private:
  const int n_;
  std::atomic<int> count_{0}, phase_{0};
};

int available_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

// Runs job(j, n, barrier) for j = 0..n-1 on n threads, the caller being thread 0, with a barrier
// for those n. Workers sleep on a condition variable between calls. One call at a time: a second
// concurrent caller runs alone (n = 1), as does every call on a one-core machine and in a child
// process forked after the pool started (which has none of its threads).
class Pool {
 public:
  static Pool& get() {
    static Pool* pool = [] {
      pthread_atfork(nullptr, nullptr, [] { forked_ = true; });
      return new Pool(available_cores());  // never destroyed: workers outlive statics
    }();
    return *pool;
  }
  int size() const { return static_cast<int>(workers_.size()) + 1; }

  using Job = std::function<void(int, int, Barrier&)>;

  void run(int n, const Job& job) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    n = std::min(n, size());
    if (!busy.owns_lock() || n == 1 || forked_) {
      Barrier alone(1);
      return job(0, 1, alone);
    }
    Barrier barrier(n);
    {
      std::lock_guard<std::mutex> g(m_);
      job_ = &job;
      barrier_ = &barrier;
      threads_ = n;
      running_.store(n - 1, std::memory_order_relaxed);
      ++generation_;
    }
    cv_.notify_all();
    job(0, n, barrier);
    for (int spins = 0; running_.load(std::memory_order_acquire) > 0; ++spins) {
      if (spins < kSpins) cpu_relax(); else std::this_thread::yield();
    }
  }

 private:
  explicit Pool(int n) {
    for (int j = 1; j < n; ++j) workers_.emplace_back([this, j] { loop(j); });
    for (auto& w : workers_) w.detach();
  }
  void loop(int j) {
    uint64_t seen = 0;
    for (;;) {
      const Job* job;
      Barrier* barrier;
      int n;
      {
        std::unique_lock<std::mutex> g(m_);
        cv_.wait(g, [&] { return generation_ != seen; });
        seen = generation_;
        job = job_, barrier = barrier_, n = threads_;
      }
      if (j < n) {
        (*job)(j, n, *barrier);
        running_.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }
  std::vector<std::thread> workers_;
  std::mutex busy_, m_;
  std::condition_variable cv_;
  const Job* job_ = nullptr;
  Barrier* barrier_ = nullptr;
  int threads_ = 1;
  uint64_t generation_ = 0;
  std::atomic<int> running_{0};
  static inline std::atomic<bool> forked_{false};
};

// Threads for a step's product [B, K] x [K, 4H] cut into `blocks` column blocks: enough work per
// thread per step to pay for a barrier (a few hundred nanoseconds). LSTM_JAX_NATIVE_THREADS
// overrides.
int threads_for(int64_t B, int64_t K, int64_t H, int blocks) {
  static const int forced = [] {
    const char* s = std::getenv("LSTM_JAX_NATIVE_THREADS");
    return s ? std::atoi(s) : 0;
  }();
  int n = forced > 0 ? forced : Pool::get().size();
  const int64_t fmas_per_step = B * K * 4 * H;
  if (forced <= 0 && fmas_per_step < (1 << 16)) n = 1;
  return std::max(1, std::min(n, blocks));
}

// --- the per-step product --------------------------------------------------------------------

// Every product is a small matrix product acc [B, 16] += a [B, K] w [K, 16] over a chunk k0..k1
// of K, with w packed as [K][2][8] (two vectors per k). Rows go 6 at a time: 6 x 2 = 12
// accumulators, 2 weight vectors and a broadcast in AVX2's 16 registers.
constexpr int64_t kPacked = 2 * L;  // floats per k of a packed w

template <int R>
void product(const float* a, int64_t lda, const float* w, int64_t k0, int64_t k1, v8* acc, int64_t acc_stride) {
  v8 s[R][2];
  for (int r = 0; r < R; ++r) s[r][0] = acc[r * acc_stride], s[r][1] = acc[r * acc_stride + 1];
  for (int64_t k = k0; k < k1; ++k) {
    v8 w0 = load(w + k * kPacked), w1 = load(w + k * kPacked + L);
    // With 4 rows or fewer GCC folds these loads into every FMA (8 loads per k instead of 2),
    // and the load ports, not the FMAs, set the pace: 45 instead of 90 GFLOP/s at 8 rows (two
    // tiles of 4). An empty asm makes it keep them in registers.
    if constexpr (R <= 4) asm("" : "+x"(w0), "+x"(w1));
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const v8 x = splat(a[r * lda + k]);
      s[r][0] += x * w0;
      s[r][1] += x * w1;
    }
  }
  for (int r = 0; r < R; ++r) acc[r * acc_stride] = s[r][0], acc[r * acc_stride + 1] = s[r][1];
}

constexpr int kRows = 6;
// Rows of w taken at a time: 256 x 2 vectors = 16 KiB, which stays in the L1 cache while every
// row tile of the batch passes over it.
constexpr int64_t kChunk = 256;

// acc[b * acc_stride + {0, 1}] (+)= a[b, :] w for b < B: zeroed first unless `accumulate`. The
// batch is cut into tiles of at most kRows rows, as even as possible (32 rows: 6, 6, 5, 5, 5, 5).
void multiply(const float* a, int64_t lda, int64_t B, const float* w, int64_t K, v8* acc, int64_t acc_stride,
              bool accumulate = false) {
  if (!accumulate)
    for (int64_t b = 0; b < B; ++b) acc[b * acc_stride] = acc[b * acc_stride + 1] = v8{};
  const int64_t tiles = (B + kRows - 1) / kRows;
  for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
    const int64_t k1 = std::min(K, k0 + kChunk);
    for (int64_t tile = 0, b0 = 0; tile < tiles; ++tile) {
      const int64_t rows = (B - b0) / (tiles - tile) + ((B - b0) % (tiles - tile) ? 1 : 0);
      const float* ab = a + b0 * lda;
      v8* accb = acc + b0 * acc_stride;
      switch (rows) {
        case 6: product<6>(ab, lda, w, k0, k1, accb, acc_stride); break;
        case 5: product<5>(ab, lda, w, k0, k1, accb, acc_stride); break;
        case 4: product<4>(ab, lda, w, k0, k1, accb, acc_stride); break;
        case 3: product<3>(ab, lda, w, k0, k1, accb, acc_stride); break;
        case 2: product<2>(ab, lda, w, k0, k1, accb, acc_stride); break;
        default: product<1>(ab, lda, w, k0, k1, accb, acc_stride);
      }
      b0 += rows;
    }
  }
}

// This thread's accumulators: n vectors, kept between calls.
v8* accumulators(size_t n) {
  thread_local std::vector<v8> buffer;
  if (buffer.size() < n) buffer.resize(n);
  return buffer.data();
}

// This thread's scratch of at least n floats, kept between calls.
float* scratch(std::vector<float>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

// Blocks [lo, hi) of `blocks` for thread j of n.
inline void share(int blocks, int j, int n, int& lo, int& hi) {
  lo = static_cast<int>(int64_t(blocks) * j / n);
  hi = static_cast<int>(int64_t(blocks) * (j + 1) / n);
}

inline int lanes(int64_t H, int64_t u0) { return static_cast<int>(std::min<int64_t>(L, H - u0)); }

void pad_rows(const float* src, int64_t B, int64_t H, int64_t Hp, float* dst) {
  for (int64_t b = 0; b < B; ++b) {
    std::memcpy(dst + b * Hp, src + b * H, H * sizeof(float));
    std::memset(dst + b * Hp + H, 0, (Hp - H) * sizeof(float));
  }
}

void unpad_rows(const float* src, int64_t B, int64_t H, int64_t Hp, float* dst) {
  for (int64_t b = 0; b < B; ++b) std::memcpy(dst + b * H, src + b * Hp, H * sizeof(float));
}

// Resets: flags [T, B] (null: none) mark the steps that start from the reset carry hr, cr [B, H]
// instead of the previous step's (packed documents: nothing crosses a boundary).
struct Resets {
  const uint8_t* flags;
  const float* hr;
  const float* cr;
  bool at(int64_t t, int64_t B, int64_t b) const { return flags && flags[t * B + b]; }
};

// --- forward ---------------------------------------------------------------------------------

struct Forward {
  int64_t T, B, I, H, Hp;  // Hp: H rounded up to the vector width
  const float* xs;       // [T, B, I]
  const float* w_x;      // packed [blocks][2][I][2][8]: W_x[k, (2p + q) H + 8 blk + lane]
  const float* w;        // packed [blocks][2][H][2][8]: W_h[k, (2p + q) H + 8 blk + lane]
  const float* bias;     // [4H]
  float* h[2];           // [B, Hp] each: h_{t-1} and h_t, alternately
  float* c;              // [B, Hp]
  float* ys;             // [T, B, H]
  float* gates;          // [T, B, 4H] or null
  float* cs;             // [T, B, H] or null
  Resets resets;
};

// W [K, 4H] packed for the forward pass: [blocks][2][K][2][8].
void pack_forward(const float* w_h, int64_t K, int64_t H, int blocks, float* out) {
  for (int blk = 0; blk < blocks; ++blk)
    for (int p = 0; p < 2; ++p)
      for (int64_t k = 0; k < K; ++k)
        for (int q = 0; q < 2; ++q)
          for (int l = 0; l < L; ++l) {
            const int64_t u = int64_t(blk) * L + l;
            *out++ = u < H ? w_h[k * 4 * H + (2 * p + q) * H + u] : 0.f;
          }
}

// Rows of the input projection computed at a time: the steps of a chunk of about this many rows
// (batch x steps) are projected together before they run, so the projection's weights are read
// once per chunk rather than once per step, and its result stays in this thread's cache.
constexpr int64_t kProjectionRows = 64;

inline int64_t projection_steps(int64_t B) { return std::max<int64_t>(1, kProjectionRows / std::max<int64_t>(B, 1)); }

// x_t W_x for steps t0..t0+S-1 and unit block blk: xacc [S * B][4] (gate pre-activations).
void forward_project(const Forward& a, int64_t t0, int64_t S, int blk, v8* xacc) {
  for (int p = 0; p < 2; ++p)
    multiply(a.xs + t0 * a.B * a.I, a.I, S * a.B, a.w_x + (int64_t(blk) * 2 + p) * a.I * kPacked, a.I, xacc + 2 * p, 4);
}

// Step t for unit block blk: the gates of every row, xacc (x_t W_x, from forward_project) +
// h_{t-1} W_h + b with h_{t-1} = hin (acc [B][4]: the pre-activations i, f, g, o), then c_t and
// h_t = hout.
void forward_block(const Forward& a, int64_t t, int blk, const float* hin, float* hout, const v8* xacc, v8* acc) {
  const int64_t H = a.H, G = 4 * H, B = a.B;
  for (int p = 0; p < 2; ++p) multiply(hin, a.Hp, B, a.w + (int64_t(blk) * 2 + p) * H * kPacked, H, acc + 2 * p, 4);
  const int64_t u0 = int64_t(blk) * L;
  const int n = lanes(H, u0);
  const v8 bi = load_n(a.bias + u0, n), bf = load_n(a.bias + u0 + H, n), bg = load_n(a.bias + u0 + 2 * H, n),
           bo = load_n(a.bias + u0 + 3 * H, n);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t row = t * B + b;
    const v8 *z = acc + b * 4, *x = xacc + b * 4;
    const v8 i = sigmoid_v(z[0] + x[0] + bi);
    const v8 f = sigmoid_v(z[1] + x[1] + bf);
    const v8 g = tanh_v(z[2] + x[2] + bg);
    const v8 o = sigmoid_v(z[3] + x[3] + bo);
    float* cp = a.c + b * a.Hp + u0;
    const v8 c_prev = a.resets.at(t, B, b) ? load_n(a.resets.cr + b * H + u0, n) : load(cp);
    const v8 c = f * c_prev + i * g;
    store(cp, c);
    const v8 h = o * tanh_v(c);
    // What the next step's product reads: h_t, or the reset carry where that step starts afresh.
    const bool reset_next = t + 1 < a.T && a.resets.at(t + 1, B, b);
    store(hout + b * a.Hp + u0, reset_next ? load_n(a.resets.hr + b * H + u0, n) : h);
    store_n(a.ys + row * H + u0, h, n);
    if (a.gates) {
      float* gp = a.gates + row * G + u0;
      store_n(gp, i, n), store_n(gp + H, f, n), store_n(gp + 2 * H, g, n), store_n(gp + 3 * H, o, n);
    }
    if (a.cs) store_n(a.cs + row * H + u0, c, n);
  }
}

}  // namespace

// Forward over T steps: xs [T, B, I], w_x [I, 4H], w_h [H, 4H], b [4H], h0, c0 [B, H] -> ys, h_T,
// c_T, and the residuals gates and cs unless they are null (inference). Resets: flags [T, B]
// (null: none), hr, cr [B, H].
extern "C" void lstm_jax_native_forward(int64_t T, int64_t B, int64_t I, int64_t H, const float* xs,
                                        const float* w_x, const float* w_h, const float* bias, const float* h0,
                                        const float* c0, const uint8_t* flags, const float* hr, const float* cr,
                                        float* ys, float* h_last, float* c_last, float* gates, float* cs) {
  const int blocks = static_cast<int>((H + L - 1) / L);
  const int64_t Hp = int64_t(blocks) * L;
  thread_local std::vector<float> packed_buf, state_buf;
  float* packed = scratch(packed_buf, size_t(blocks) * 4 * (I + H) * L);
  float* state = scratch(state_buf, size_t(3 * B * Hp));
  pack_forward(w_x, I, H, blocks, packed);
  pack_forward(w_h, H, H, blocks, packed + size_t(blocks) * 4 * I * L);
  Forward a{T, B, I, H, Hp, xs, packed, packed + size_t(blocks) * 4 * I * L, bias, {state, state + B * Hp},
            state + 2 * B * Hp, ys, gates, cs, Resets{flags, hr, cr}};
  pad_rows(h0, B, H, Hp, a.h[0]);
  pad_rows(c0, B, H, Hp, a.c);
  for (int64_t b = 0; T > 0 && b < B; ++b)  // the first step's product reads h from here
    if (a.resets.at(0, B, b)) std::memcpy(a.h[0] + b * Hp, hr + b * H, H * sizeof(float));
  Pool::get().run(threads_for(B, I + H, H, blocks), [&](int j, int nt, Barrier& barrier) {
    int lo, hi;
    share(blocks, j, nt, lo, hi);
    const int64_t S = projection_steps(B), chunk = S * B * 4;  // xacc vectors per block
    v8* acc = accumulators(size_t(B) * 4 + size_t(hi - lo) * chunk);
    v8* xacc = acc + B * 4;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t s = t % S;
      if (s == 0)
        for (int blk = lo; blk < hi; ++blk) forward_project(a, t, std::min(S, T - t), blk, xacc + (blk - lo) * chunk);
      for (int blk = lo; blk < hi; ++blk)
        forward_block(a, t, blk, a.h[t % 2], a.h[(t + 1) % 2], xacc + (blk - lo) * chunk + s * B * 4, acc);
      barrier.wait();
    }
  });
  unpad_rows(a.h[T % 2], B, H, Hp, h_last);
  unpad_rows(a.c, B, H, Hp, c_last);
}

namespace {

// --- backward --------------------------------------------------------------------------------
//
// Per step, threads split the hidden units as in the forward pass: dh = dG_{t+1} W_h^T, then dG_t
// and dc_{t-1} for their units. dG lives only a chunk of steps at a time (two chunk buffers,
// alternating): once a chunk is complete, every thread takes its share of the chunk's gradient
// products while they are in cache -- rows of dW = [x | h_prev]^T dG (W_x's and W_h's rows, split
// between threads) and column blocks of dxs = dG W_x^T -- and the buffer is reused two chunks
// later. So dG never goes to memory as a [T, B, 4H] array, and nothing is left for XLA to do.

struct Backward {
  int64_t T, B, I, H, Hp, G, Gp, Gs, S;  // Gp: 4H rounded up to 16; Gs: dG's row stride; S: steps per chunk
  const float* w;       // packed [pairs][4H][2][8]: W_h[8 (2 pair + q) + lane, k] (0 past H)
  const float* wxt;     // packed [ipairs][4H][2][8]: W_x[8 (2 pair + q) + lane, k] (0 past I)
  const float* xs;      // [T, B, I]
  const float* h0;      // [B, H]
  const float* ys;      // [T, B, H]
  const float* gates;   // [T, B, 4H]
  const float* cs;      // [T, B, H]
  const float* c0;      // [B, H]
  const float* dys;     // [T, B, H]
  const float* dh_last; // [B, H]
  float* dG;            // 2 chunk buffers of [S * B, Gs]
  float* dc;            // [B, Hp]: dL/dc_t, carried back
  float* db;            // [4, Hp]: the bias gradient, summed over rows
  float* dxs;           // [T, B, I] out
  Resets resets;
  float* dhr;           // [B, Hp]: the reset carry's gradients, summed over the steps that start from it
  float* dcr;           // [B, Hp]

  // dG_t's B rows (Gs floats apart): chunk t / S in buffer (t / S) % 2.
  float* dg(int64_t t) const { return dG + (((t / S) % 2) * S + t % S) * B * Gs; }
};

// Steps per chunk of the gradient products: about this many rows (batch x steps), enough for the
// products to run near the machine's rate, few enough that a chunk's dG (rows x 4H) stays in cache.
constexpr int64_t kGradientRows = 256;

inline int64_t gradient_steps(int64_t B) { return std::max<int64_t>(1, kGradientRows / std::max<int64_t>(B, 1)); }

// W [U, G] packed for products with W^T, 16 rows (two unit blocks) at a time: [pairs][G][2][8].
void pack_transposed(const float* w, int64_t U, int64_t G, int pairs, float* out) {
  for (int pair = 0; pair < pairs; ++pair)
    for (int64_t k = 0; k < G; ++k)
      for (int q = 0; q < 2; ++q)
        for (int l = 0; l < L; ++l) {
          const int64_t u = (int64_t(pair) * 2 + q) * L + l;
          *out++ = u < U ? w[u * G + k] : 0.f;
        }
}

// Step t for the unit blocks of pair `pair`: dh (dG_{t+1} W_h^T into acc [B][2], or the
// cotangent of h_T at the last step), then dG_t, dc_{t-1} and the bias gradient.
void backward_pair(const Backward& a, int64_t t, int pair, v8* acc) {
  const int64_t H = a.H, G = a.G, B = a.B;
  if (t + 1 < a.T) multiply(a.dg(t + 1), a.Gs, B, a.w + int64_t(pair) * G * kPacked, G, acc, 2);
  float* dgt = a.dg(t);
  for (int q = 0; q < 2; ++q) {
    const int64_t u0 = (int64_t(pair) * 2 + q) * L;
    if (u0 >= H) break;
    const int n = lanes(H, u0);
    v8 db[4] = {};
    for (int64_t b = 0; b < B; ++b) {
      const int64_t row = t * B + b;
      v8 dh_next = t + 1 < a.T ? acc[b * 2 + q] : load_n(a.dh_last + b * H + u0, n);
      if (t + 1 < a.T && a.resets.at(t + 1, B, b)) {  // step t + 1 started from hr, not h_t
        float* p = a.dhr + b * a.Hp + u0;
        store(p, load(p) + dh_next);
        dh_next = v8{};
      }
      const v8 dh = dh_next + load_n(a.dys + row * H + u0, n);
      const float* gp = a.gates + row * G + u0;
      const v8 i = load_n(gp, n), f = load_n(gp + H, n), g = load_n(gp + 2 * H, n), o = load_n(gp + 3 * H, n);
      const v8 c = load_n(a.cs + row * H + u0, n);
      const bool reset = a.resets.at(t, B, b);
      const v8 c_prev = reset ? load_n(a.resets.cr + b * H + u0, n)
                              : t > 0 ? load_n(a.cs + (row - B) * H + u0, n) : load_n(a.c0 + b * H + u0, n);
      const v8 tc = tanh_v(c);
      float* dcp = a.dc + b * a.Hp + u0;
      const v8 dc = load(dcp) + dh * o * (1.f - tc * tc);
      if (reset) {  // c_prev was cr
        float* p = a.dcr + b * a.Hp + u0;
        store(p, load(p) + dc * f);
        store(dcp, v8{});
      } else {
        store(dcp, dc * f);
      }
      const v8 d[4] = {dc * g * i * (1.f - i), dc * c_prev * f * (1.f - f), dc * i * (1.f - g * g),
                       dh * tc * o * (1.f - o)};
      float* dst = dgt + b * a.Gs + u0;
      for (int k = 0; k < 4; ++k) store_n(dst + k * H, d[k], n), db[k] += d[k];
    }
    for (int k = 0; k < 4; ++k) {
      float* p = a.db + k * a.Hp + u0;
      store(p, load(p) + db[k]);
    }
  }
}

// dh_0 = dG_0 W_h^T for the unit blocks of pair `pair`, into out [B, H].
void backward_first(const Backward& a, int pair, v8* acc, float* out) {
  multiply(a.dg(0), a.Gs, a.B, a.w + int64_t(pair) * a.G * kPacked, a.G, acc, 2);
  for (int q = 0; q < 2; ++q) {
    const int64_t u0 = (int64_t(pair) * 2 + q) * L;
    if (u0 >= a.H) break;
    for (int64_t b = 0; b < a.B; ++b) {
      if (a.resets.at(0, a.B, b)) {  // step 0 started from hr, not h0
        float* p = a.dhr + b * a.Hp + u0;
        store(p, load(p) + acc[b * 2 + q]);
        store_n(out + b * a.H + u0, v8{}, lanes(a.H, u0));
      } else {
        store_n(out + b * a.H + u0, acc[b * 2 + q], lanes(a.H, u0));
      }
    }
  }
}

// This thread's part of the gradient products of the complete chunk of steps t0..t1-1 (K rows):
// rows z0..z1-1 of dW = [x | h_prev]^T dG (z < I: W_x's, else W_h's), accumulated into
// dw [z1 - z0][Gp / 8] through zt (those rows of [x | h_prev]^T for the chunk, [z1 - z0][K]) and
// panel (a 16-column block of the chunk's dG, [K][16]); and dxs = dG W_x^T for the input columns
// of pairs p0..p1-1 (through acc [K][2]).
void gradient_chunk(const Backward& a, int64_t t0, int64_t t1, int64_t z0, int64_t z1, int p0, int p1, float* zt,
                    float* panel, v8* dw, v8* acc) {
  const int64_t B = a.B, I = a.I, H = a.H, K = (t1 - t0) * B, nz = z1 - z0;
  const float* dgc = a.dg(t0);  // the chunk's rows, consecutive
  if (nz > 0) {
    for (int64_t r = 0; r < K; ++r) {
      const int64_t row = t0 * B + r;  // h_prev of row (t, b): ys one step back, h0, or hr after a reset
      const float* x = a.xs + row * I;
      const float* h = a.resets.flags && a.resets.flags[row] ? a.resets.hr + (row % B) * H
                       : row < B                            ? a.h0 + row * H
                                                            : a.ys + (row - B) * H;
      for (int64_t z = z0; z < z1; ++z) zt[(z - z0) * K + r] = z < I ? x[z] : h[z - I];
    }
    for (int64_t c0 = 0; c0 < a.Gp; c0 += kPacked) {
      for (int64_t r = 0; r < K; ++r) std::memcpy(panel + r * kPacked, dgc + r * a.Gs + c0, kPacked * sizeof(float));
      multiply(zt, K, nz, panel, K, dw + c0 / L, a.Gp / L, true);
    }
  }
  for (int p = p0; p < p1; ++p) {
    multiply(dgc, a.Gs, K, a.wxt + int64_t(p) * a.G * kPacked, a.G, acc, 2);
    for (int q = 0; q < 2; ++q) {
      const int64_t u0 = (int64_t(p) * 2 + q) * L;
      if (u0 >= I) break;
      for (int64_t r = 0; r < K; ++r) store_n(a.dxs + (t0 * B + r) * I + u0, acc[r * 2 + q], lanes(I, u0));
    }
  }
}

}  // namespace

// Backward over T steps: the gradients of the loss with respect to w_x [I, 4H], w_h [H, 4H],
// b [4H], xs [T, B, I], h0, c0 [B, H] and the reset carry hr, cr [B, H] (zero without resets),
// from the forward pass's inputs, outputs ys and residuals (gates, cs) and the cotangents
// dys [T, B, H], dh_last, dc_last [B, H].
extern "C" void lstm_jax_native_backward(int64_t T, int64_t B, int64_t I, int64_t H, const float* w_x,
                                         const float* w_h, const float* xs, const float* h0, const float* ys,
                                         const float* gates, const float* cs, const float* c0, const uint8_t* flags,
                                         const float* hr, const float* cr, const float* dys, const float* dh_last,
                                         const float* dc_last, float* dw_x, float* dw_h, float* db, float* dxs,
                                         float* dh0, float* dc0, float* dhr, float* dcr) {
  const int64_t G = 4 * H;
  std::memset(dhr, 0, B * H * sizeof(float));
  std::memset(dcr, 0, B * H * sizeof(float));
  if (T == 0) {
    std::memset(dw_x, 0, I * G * sizeof(float));
    std::memset(dw_h, 0, H * G * sizeof(float));
    std::memset(db, 0, G * sizeof(float));
    std::memcpy(dh0, dh_last, B * H * sizeof(float));
    std::memcpy(dc0, dc_last, B * H * sizeof(float));
    return;
  }
  const int pairs = static_cast<int>((H + 2 * L - 1) / (2 * L)), ipairs = static_cast<int>((I + 2 * L - 1) / (2 * L));
  const int64_t Hp = int64_t(pairs) * 2 * L, Gp = (G + 2 * L - 1) / (2 * L) * (2 * L), S = gradient_steps(B);
  // One cache line more than Gp: rows 4 KiB apart (H = 256) would share the L1 cache's sets.
  const int64_t Gs = Gp + kPacked;
  thread_local std::vector<float> packed_buf, state_buf;
  float* packed = scratch(packed_buf, size_t(pairs + ipairs) * G * kPacked);
  float* state = scratch(state_buf, size_t(3 * B * Hp + 4 * Hp + 2 * S * B * Gs));
  pack_transposed(w_h, H, G, pairs, packed);
  pack_transposed(w_x, I, G, ipairs, packed + size_t(pairs) * G * kPacked);
  float* dc = state;
  float* dhrp = dc + B * Hp;
  float* dcrp = dhrp + B * Hp;
  float* dbp = dcrp + B * Hp;
  float* dG = dbp + 4 * Hp;
  pad_rows(dc_last, B, H, Hp, dc);
  // The padding columns of dG are read by the weight-gradient products (their results dropped).
  std::memset(dhrp, 0, (2 * B * Hp + 4 * Hp + 2 * S * B * Gs) * sizeof(float));
  Backward a{T, B, I, H, Hp, G, Gp, Gs, S, packed, packed + size_t(pairs) * G * kPacked, xs, h0, ys, gates, cs, c0,
             dys, dh_last, dG, dc, dbp, dxs, Resets{flags, hr, cr}, dhrp, dcrp};
  Pool::get().run(threads_for(B, G, H, pairs), [&](int j, int nt, Barrier& barrier) {
    int lo, hi, p0, p1, z0, z1;
    share(pairs, j, nt, lo, hi);
    share(ipairs, j, nt, p0, p1);
    share(static_cast<int>(I + H), j, nt, z0, z1);
    const int64_t nz = z1 - z0, K = S * B;
    // This thread's rows of dW, [nz][Gp / 8] vectors: accumulated over the chunks, copied out at
    // the end (rows of the outputs need not be vector-aligned).
    v8* acc = accumulators(size_t(std::max(B, K)) * 2 + size_t(nz) * (Gp / L));
    v8* dw = acc + std::max(B, K) * 2;
    std::fill(dw, dw + nz * (Gp / L), v8{});
    thread_local std::vector<float> zt_buf;
    float* zt = scratch(zt_buf, size_t(nz + kPacked) * K);
    float* panel = zt + nz * K;
    for (int64_t t = T - 1; t >= 0; --t) {
      for (int pair = lo; pair < hi; ++pair) backward_pair(a, t, pair, acc);
      barrier.wait();
      // Chunk t..t1-1 is complete; the next step reads only its first step, the chunk after
      // writes the other buffer, and this buffer is written again only after the next barrier.
      if (t % S == 0) gradient_chunk(a, t, std::min(T, t + S), z0, z1, p0, p1, zt, panel, dw, acc);
    }
    for (int pair = lo; pair < hi; ++pair) backward_first(a, pair, acc, dh0);
    for (int64_t z = z0; z < z1; ++z)
      std::memcpy(z < I ? dw_x + z * G : dw_h + (z - I) * G, dw + (z - z0) * (Gp / L), G * sizeof(float));
  });
  for (int k = 0; k < 4; ++k) std::memcpy(db + k * H, dbp + k * Hp, H * sizeof(float));
  unpad_rows(dc, B, H, Hp, dc0);
  if (flags) unpad_rows(dhrp, B, H, Hp, dhr), unpad_rows(dcrp, B, H, Hp, dcr);
}

// --- XLA FFI handlers --------------------------------------------------------------------------

#ifndef LSTM_JAX_NO_FFI
namespace {

namespace ffi = xla::ffi;
using F32 = ffi::Buffer<ffi::F32>;
using OutF32 = ffi::ResultBuffer<ffi::F32>;
using U8 = ffi::Buffer<ffi::U8>;

// Asks the kernel to back a fresh output buffer with 2 MiB pages where it can (as the oneDNN
// form's rnn.cc does for its workspace): XLA allocates the residuals anew at every call, and
// faulting tens of MB in 4 KiB at a time cost more than the products written into them.
void prefer_huge_pages(void* data, size_t bytes) {
  constexpr uintptr_t kHuge = 2u << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
}

void prefer_huge_pages(OutF32& b) { prefer_huge_pages(b->typed_data(), b->element_count() * sizeof(float)); }

// Shapes the Python side guarantees; checked again here because a wrong one would read out of bounds.
ffi::Error check(bool ok, const char* what) {
  return ok ? ffi::Error::Success()
            : ffi::Error(ffi::ErrorCode::kInvalidArgument, std::string("lstm_jax native LSTM: ") + what);
}

template <typename Fn>
ffi::Error guarded(Fn fn) {
  try {
    fn();
    return ffi::Error::Success();
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("lstm_jax native LSTM: ") + e.what());
  }
}

// Resets as the Python side passes them: flags [T, B] with hr, cr [B, H], or all three empty.
struct ResetArgs {
  U8 flags;
  F32 hr, cr;
  bool present() const { return flags.element_count() > 0; }
  bool consistent(int64_t T, int64_t B, int64_t H) const {
    return present() ? flags.element_count() == T * B && hr.element_count() == B * H && cr.element_count() == B * H
                     : hr.element_count() == 0 && cr.element_count() == 0;
  }
  const uint8_t* flags_or_null() const { return present() ? flags.typed_data() : nullptr; }
};

// xs [T, B, I], w_x [I, 4H], w_h [H, 4H], b [4H], h0, c0 [B, H], resets -> ys [T, B, H], h_T, c_T
// [B, H] (and, training, gates [T, B, 4H], cs [T, B, H]).
ffi::Error forward(F32 xs, F32 w_x, F32 w_h, F32 b, F32 h0, F32 c0, const ResetArgs& r, OutF32 ys, OutF32 h,
                   OutF32 c, float* gates, float* cs) {
  const auto d = xs.dimensions();
  if (d.size() != 3 || h0.dimensions().size() != 2) return check(false, "xs must be [T, B, I], h0 [B, H]");
  const int64_t T = d[0], B = d[1], I = d[2], H = h0.dimensions()[1];
  if (auto e = check(h0.dimensions()[0] == B && w_x.element_count() == 4 * I * H &&
                     w_h.element_count() == 4 * H * H && b.element_count() == 4 * H &&
                     c0.element_count() == B * H && r.consistent(T, B, H),
                     "inconsistent shapes");
      e.failure())
    return e;
  return guarded([&] {
    lstm_jax_native_forward(T, B, I, H, xs.typed_data(), w_x.typed_data(), w_h.typed_data(), b.typed_data(),
                            h0.typed_data(), c0.typed_data(), r.flags_or_null(), r.hr.typed_data(),
                            r.cr.typed_data(), ys->typed_data(), h->typed_data(), c->typed_data(), gates, cs);
  });
}

ffi::Error ForwardImpl(F32 xs, F32 w_x, F32 w_h, F32 b, F32 h0, F32 c0, U8 flags, F32 hr, F32 cr, OutF32 ys,
                       OutF32 h, OutF32 c) {
  return forward(xs, w_x, w_h, b, h0, c0, ResetArgs{flags, hr, cr}, ys, h, c, nullptr, nullptr);
}

ffi::Error ForwardTrainImpl(F32 xs, F32 w_x, F32 w_h, F32 b, F32 h0, F32 c0, U8 flags, F32 hr, F32 cr, OutF32 ys,
                            OutF32 h, OutF32 c, OutF32 gates, OutF32 cs) {
  for (OutF32* out : {&ys, &gates, &cs}) prefer_huge_pages(*out);
  return forward(xs, w_x, w_h, b, h0, c0, ResetArgs{flags, hr, cr}, ys, h, c, gates->typed_data(),
                 cs->typed_data());
}

// w_x, w_h, xs, h0, ys, gates, cs, c0, resets, dys, dh_T, dc_T -> dw_x, dw_h, db, dxs, dh0, dc0,
// dhr, dcr.
ffi::Error BackwardImpl(F32 w_x, F32 w_h, F32 xs, F32 h0, F32 ys, F32 gates, F32 cs, F32 c0, U8 flags, F32 hr,
                        F32 cr, F32 dys, F32 dh, F32 dc, OutF32 dw_x, OutF32 dw_h, OutF32 db, OutF32 dxs,
                        OutF32 dh0, OutF32 dc0, OutF32 dhr, OutF32 dcr) {
  const auto d = xs.dimensions();
  if (d.size() != 3 || c0.dimensions().size() != 2) return check(false, "xs must be [T, B, I], c0 [B, H]");
  const int64_t T = d[0], B = d[1], I = d[2], H = c0.dimensions()[1];
  const ResetArgs r{flags, hr, cr};
  if (auto e = check(c0.dimensions()[0] == B && w_x.element_count() == 4 * I * H &&
                     w_h.element_count() == 4 * H * H && h0.element_count() == B * H &&
                     ys.element_count() == T * B * H && gates.element_count() == T * B * 4 * H &&
                     cs.element_count() == T * B * H && dys.element_count() == T * B * H &&
                     dh.element_count() == B * H && dc.element_count() == B * H && r.consistent(T, B, H) &&
                     dhr->element_count() == B * H && dcr->element_count() == B * H,
                     "inconsistent shapes");
      e.failure())
    return e;
  prefer_huge_pages(dxs);
  return guarded([&] {
    lstm_jax_native_backward(T, B, I, H, w_x.typed_data(), w_h.typed_data(), xs.typed_data(), h0.typed_data(),
                             ys.typed_data(), gates.typed_data(), cs.typed_data(), c0.typed_data(),
                             r.flags_or_null(), hr.typed_data(), cr.typed_data(), dys.typed_data(), dh.typed_data(),
                             dc.typed_data(), dw_x->typed_data(), dw_h->typed_data(), db->typed_data(),
                             dxs->typed_data(), dh0->typed_data(), dc0->typed_data(), dhr->typed_data(),
                             dcr->typed_data());
  });
}

}  // namespace

#define LSTM_JAX_ARGS6 Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>().Arg<F32>()
#define LSTM_JAX_RESETS Arg<U8>().Arg<F32>().Arg<F32>()
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxNativeLstmForward, ForwardImpl,
                              ffi::Ffi::Bind().LSTM_JAX_ARGS6.LSTM_JAX_RESETS.Ret<F32>().Ret<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxNativeLstmForwardTrain, ForwardTrainImpl,
                              ffi::Ffi::Bind().LSTM_JAX_ARGS6.LSTM_JAX_RESETS.Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Ret<F32>().Ret<F32>());
XLA_FFI_DEFINE_HANDLER_SYMBOL(LstmJaxNativeLstmBackward, BackwardImpl,
                              ffi::Ffi::Bind().LSTM_JAX_ARGS6.Arg<F32>().Arg<F32>().LSTM_JAX_RESETS
                                  .Arg<F32>().Arg<F32>().Arg<F32>()
                                  .Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>().Ret<F32>()
                                  .Ret<F32>().Ret<F32>());
#endif  // LSTM_JAX_NO_FFI
