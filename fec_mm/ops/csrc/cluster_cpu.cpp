// CPU kernels of the FEC clustering ops (docs/notes/design.md §2, mixer steps 4-7 and
// cluster pooling; the encoding also with Context Clusters' weighted update, §7). Semantics are those of fec_mm/ops/reference.py.
//
// Memory: nothing of size M×N or M×N×d is allocated. The assignment streams
// over tiles of kPointBlock points × kCenterBlock centers: one BLAS call per
// tile, the argmax fused right after it, so each thread only holds a tile.
// Backward needs no similarity matrix at all: a point interacts with its
// chosen center only, so every gradient is an O(N·d) gather or scatter.
//
// Speed: with many centers (the cluster poolings: thousands per region) the
// similarity product is the cost of the op. On CPUs with bf16 dot products
// (AVX512-BF16) float32 inputs first score all centers in bf16, twice as
// fast, then rescore exactly (double) only the centers that the bf16 error
// bound cannot rule out; the argmax is the exact one (see prefilter_rows).
//
// Determinism: work is split into fixed tiles and fixed channel chunks that
// do not depend on the thread count; every sum over points runs in point
// order inside one task (no atomics), in double precision.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define FEC_HAVE_X86 1
#endif

namespace {

constexpr double kEps = 1e-12;          // F.normalize's clamp of the norm
constexpr int64_t kPointBlock = 512;    // points per assignment tile
constexpr int64_t kCenterBlock = 512;   // centers per assignment tile
constexpr int64_t kChunk = 16;          // channels per aggregation task
// bf16 pre-pass (float32 inputs, see prefilter_rows): used from this many
// centers on, over strips of kStripRows points; a strip whose bound leaves
// more than kMaxCandidates centers for some point (near-identical centers,
// e.g. in padding) is scored exactly instead.
constexpr int64_t kPrefilterMinCenters = 256;
constexpr int64_t kStripRows = 128;
constexpr int64_t kMaxCandidates = 64;

// Grain of at::parallel_for for items of `work` scalar operations each: a
// loop with less than kSerialWork operations in all runs inline. Starting a
// parallel region costs more than small loops, and on a loaded machine every
// region waits for its slowest thread to be scheduled.
constexpr int64_t kSerialWork = int64_t(1) << 22;
inline int64_t grain(int64_t work) {
  return std::max<int64_t>(1, kSerialWork / std::max<int64_t>(work, 1));
}

// ---------------------------------------------------------------- argmax of a row
// First index of the maximum of row[0:len) (ties to the lowest index).
template <typename scalar_t>
inline int64_t row_argmax_scalar(const scalar_t* row, int64_t len, scalar_t* best) {
  int64_t arg = 0;
  scalar_t b = row[0];
  for (int64_t i = 1; i < len; ++i) {
    if (row[i] > b) {
      b = row[i];
      arg = i;
    }
  }
  *best = b;
  return arg;
}

#ifdef FEC_HAVE_X86
// Same result as row_argmax_scalar: each lane keeps its first maximum (strict
// >), then the lowest index among the lanes holding the overall maximum.
__attribute__((target("avx512f"))) int64_t row_argmax_avx512(const float* row, int64_t len,
                                                             float* best) {
  const __m512 neg_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 vmax = neg_inf;
  __m512i vidx = _mm512_setzero_si512();
  __m512i cur = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  int64_t i = 0;
  for (; i + 16 <= len; i += 16) {
    __m512 v = _mm512_loadu_ps(row + i);
    __mmask16 gt = _mm512_cmp_ps_mask(v, vmax, _CMP_GT_OQ);
    vmax = _mm512_mask_mov_ps(vmax, gt, v);
    vidx = _mm512_mask_mov_epi32(vidx, gt, cur);
    cur = _mm512_add_epi32(cur, step);
  }
  if (i < len) {
    __mmask16 tail = static_cast<__mmask16>((1u << (len - i)) - 1u);
    __m512 v = _mm512_mask_loadu_ps(neg_inf, tail, row + i);
    __mmask16 gt = _mm512_mask_cmp_ps_mask(tail, v, vmax, _CMP_GT_OQ);
    vmax = _mm512_mask_mov_ps(vmax, gt, v);
    vidx = _mm512_mask_mov_epi32(vidx, gt, cur);
  }
  float m = _mm512_reduce_max_ps(vmax);
  __mmask16 at_max = _mm512_cmp_ps_mask(vmax, _mm512_set1_ps(m), _CMP_EQ_OQ);
  if (at_max == 0) {  // every value NaN or -inf: fall back to the plain scan
    return row_argmax_scalar(row, len, best);
  }
  *best = m;
  return _mm512_mask_reduce_min_epi32(at_max, vidx);
}

bool cpu_has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}

// 16 bf16 values (raw bits) as float32: bf16 is the top half of a float32.
__attribute__((target("avx512f,avx512bw,avx512vl"))) inline __m512 load_bf16(
    const uint16_t* p, __mmask16 mask) {
  const __m256i h = _mm256_maskz_loadu_epi16(mask, p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

inline __mmask16 tail_mask(int64_t left) {
  return left >= 16 ? static_cast<__mmask16>(0xFFFF)
                    : static_cast<__mmask16>((1u << left) - 1u);
}

// Maximum of a bf16 row (NaNs skipped; the caller only passes finite data).
__attribute__((target("avx512f,avx512bw,avx512vl"))) float bf16_row_max(const uint16_t* row,
                                                                        int64_t len) {
  __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < len; i += 16) {
    const __mmask16 m = tail_mask(len - i);
    vmax = _mm512_mask_max_ps(vmax, m, load_bf16(row + i, m), vmax);
  }
  return _mm512_reduce_max_ps(vmax);
}

// Appends to `out` (in increasing order) the indices of row entries >= thr;
// false as soon as there are more than `cap`.
__attribute__((target("avx512f,avx512bw,avx512vl"))) bool bf16_row_candidates(
    const uint16_t* row, int64_t len, float thr, int64_t cap, std::vector<int64_t>& out) {
  const __m512 vthr = _mm512_set1_ps(thr);
  for (int64_t i = 0; i < len; i += 16) {
    const __mmask16 m = tail_mask(len - i);
    unsigned hit = _mm512_mask_cmp_ps_mask(m, load_bf16(row + i, m), vthr, _CMP_GE_OQ);
    while (hit) {
      if (static_cast<int64_t>(out.size()) == cap) return false;
      out.push_back(i + __builtin_ctz(hit));
      hit &= hit - 1;
    }
  }
  return true;
}

bool cpu_has_bf16_dot() {
#if (defined(__GNUC__) && __GNUC__ >= 11) || (defined(__clang__) && __clang_major__ >= 12)
  static const bool has = __builtin_cpu_supports("avx512bf16") &&
                          __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl");
  return has;
#else
  return false;
#endif
}
#else
bool cpu_has_bf16_dot() { return false; }
#endif

template <typename scalar_t>
inline int64_t row_argmax(const scalar_t* row, int64_t len, scalar_t* best) {
  return row_argmax_scalar(row, len, best);
}

template <>
inline int64_t row_argmax<float>(const float* row, int64_t len, float* best) {
#ifdef FEC_HAVE_X86
  if (cpu_has_avx512()) return row_argmax_avx512(row, len, best);
#endif
  return row_argmax_scalar(row, len, best);
}

// ---------------------------------------------------------------- helpers
template <typename scalar_t>
inline double dot(const scalar_t* a, const scalar_t* b, int64_t d) {
  double s = 0.0;
  for (int64_t k = 0; k < d; ++k) s += static_cast<double>(a[k]) * static_cast<double>(b[k]);
  return s;
}

inline double clamped_norm(double sq) { return std::max(std::sqrt(sq), kEps); }

// Backward of y = x / max(|x|, eps) for one row: writes dx from dy.
template <typename scalar_t>
inline void normalize_backward_row(const scalar_t* x, const double* dy, scalar_t* dx,
                                   int64_t d) {
  double sq = 0.0, xdy = 0.0;
  for (int64_t k = 0; k < d; ++k) {
    sq += static_cast<double>(x[k]) * x[k];
    xdy += static_cast<double>(x[k]) * dy[k];
  }
  double norm = std::sqrt(sq);
  if (norm >= kEps) {
    // d(x/|x|) = (dy - y (y·dy)) / |x| with y = x/|x|
    double coef = xdy / (norm * norm);
    for (int64_t k = 0; k < d; ++k)
      dx[k] = static_cast<scalar_t>((dy[k] - x[k] * coef) / norm);
  } else {
    for (int64_t k = 0; k < d; ++k) dx[k] = static_cast<scalar_t>(dy[k] / kEps);
  }
}

at::Tensor normalize_rows(const at::Tensor& x) {
  return x / at::linalg_vector_norm(x, 2, {-1}, true).clamp_min(kEps);
}

// Sign of alpha: the argmax of alpha·cos is the argmax of cos (alpha > 0),
// of -cos (alpha < 0), or index 0 (alpha = 0, every score equal; also NaN).
int alpha_sign(const at::Tensor& alpha) {
  double a = alpha.item<double>();
  return a > 0 ? 1 : (a < 0 ? -1 : 0);
}

// ---------------------------------------------------------------- assignment
#ifdef FEC_HAVE_X86
// Exact argmax_m c_m · p_n for the rows n of P (float32, (bn, d), row n at
// p_ptr + n·d) over the centers c (float32 (M, d) at c_ptr, each of norm <= 1,
// and their bf16 copy cb), through a bf16 pre-pass. Writes arg[0:bn) and
// returns true, or returns false (arg unspecified) when some row has more than
// kMaxCandidates candidates or non-finite data: the caller scores exactly then.
//
// Bound: bf16 rounds each input with relative error u = 2^-8, products are
// exact in float32, sums are float32 and the result is rounded to bf16. So
// |S~_m - s_m| <= |p|·(3u + 3u² + u³ + 2γ_d) + d·2^-125 (flushed denormals)
// <= eps = |p|·(2^-6 + d·2^-22) + d·2^-125. The true maximiser m* has S~_m* >=
// s_m* - eps >= s_m - eps >= S~_m - 2·eps for every m, so every m with
// S~_m >= max S~ - 2·eps is a candidate and the exact maximiser is among them.
// Candidates are rescored in double, in index order with strict > (ties to the
// lowest index).
bool prefilter_rows(const at::Tensor& P, const float* p_ptr, const at::Tensor& cb,
                    const float* c_ptr, at::Tensor& strip, std::vector<int64_t>& cand,
                    int64_t* arg) {
  const int64_t bn = P.size(0), d = P.size(1), M = cb.size(0);
  for (int64_t s0 = 0; s0 < bn; s0 += kStripRows) {
    const int64_t rows = std::min(kStripRows, bn - s0);
    at::Tensor S = strip.narrow(0, 0, rows * M).view({rows, M});
    at::mm_out(S, P.narrow(0, s0, rows).to(at::kBFloat16), cb.t());
    const uint16_t* s_bits = reinterpret_cast<const uint16_t*>(S.data_ptr<at::BFloat16>());
    for (int64_t i = 0; i < rows; ++i) {
      const float* p = p_ptr + (s0 + i) * d;
      const double eps = std::sqrt(dot(p, p, d)) * (std::ldexp(1.0, -6) + d * std::ldexp(1.0, -22)) +
                         d * std::ldexp(1.0, -125);
      const uint16_t* row = s_bits + i * M;
      const float top = bf16_row_max(row, M);
      if (!std::isfinite(eps) || !std::isfinite(top)) return false;
      // the largest float <= top - 2·eps
      const double thr_d = static_cast<double>(top) - 2.0 * eps;
      float thr = static_cast<float>(thr_d);
      if (static_cast<double>(thr) > thr_d)
        thr = std::nextafter(thr, -std::numeric_limits<float>::infinity());
      cand.clear();
      if (!bf16_row_candidates(row, M, thr, kMaxCandidates, cand)) return false;
      int64_t best_m = cand.front();
      double best = dot(p, c_ptr + best_m * d, d);
      for (size_t j = 1; j < cand.size(); ++j) {
        const double v = dot(p, c_ptr + cand[j] * d, d);
        if (v > best) {
          best = v;
          best_m = cand[j];
        }
      }
      arg[s0 + i] = best_m;
    }
  }
  return true;
}
#endif

// Whether assign_impl<scalar_t> takes the bf16 pre-pass for M centers.
template <typename scalar_t>
bool use_prefilter(int64_t M) {
  return std::is_same<scalar_t, float>::value && M >= kPrefilterMinCenters &&
         cpu_has_bf16_dot();
}

// index[r, n] = argmax_m sign·cos(c_m, p_n) (ties to the lowest m) and
// cos[r, n] = cos(c_index, p_n). The argmax is taken on sign·(cn_m · p_n):
// dividing by |p_n| > 0 does not change it.
template <typename scalar_t>
void assign_impl(const at::Tensor& points, const at::Tensor& cn, int sign, at::Tensor& index,
                 at::Tensor& cos) {
  const int64_t R = points.size(0), N = points.size(1), d = points.size(2);
  const int64_t M = cn.size(1);
  const scalar_t* p_ptr = points.data_ptr<scalar_t>();
  const scalar_t* c_ptr = cn.data_ptr<scalar_t>();
  int64_t* i_ptr = index.data_ptr<int64_t>();
  scalar_t* cos_ptr = cos.data_ptr<scalar_t>();
  const at::Tensor signed_cn = sign < 0 ? -cn : cn;  // negation is exact
  const int64_t blocks = (N + kPointBlock - 1) / kPointBlock;
  // non-finite centers keep the plain path, whose NaN handling is the reference's
  const bool prefilter =
      sign != 0 && use_prefilter<scalar_t>(M) && at::isfinite(cn).all().item<bool>();
  const at::Tensor signed_cb = prefilter ? signed_cn.to(at::kBFloat16) : at::Tensor();

  at::parallel_for(0, R * blocks, grain(kPointBlock * M * d), [&](int64_t begin, int64_t end) {
    // Grad mode is thread-local: worker threads must not record the mm.
    at::NoGradGuard no_grad;
    at::Tensor tile = at::empty({kPointBlock * std::min(M, kCenterBlock)}, points.options());
    at::Tensor strip = prefilter ? at::empty({kStripRows * M}, signed_cb.options()) : at::Tensor();
    std::vector<int64_t> cand;
    cand.reserve(kMaxCandidates);
    std::vector<scalar_t> best(kPointBlock);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / blocks, n0 = (task % blocks) * kPointBlock;
      const int64_t bn = std::min(kPointBlock, N - n0);
      int64_t* arg = i_ptr + r * N + n0;
      if (sign == 0) {
        std::fill(arg, arg + bn, 0);
      } else {
        const at::Tensor P = points[r].narrow(0, n0, bn);
        bool done = false;
#ifdef FEC_HAVE_X86
        if (prefilter) {
          done = prefilter_rows(P, reinterpret_cast<const float*>(p_ptr + (r * N + n0) * d),
                                signed_cb[r], signed_cn[r].data_ptr<float>(), strip, cand, arg);
        }
#endif
        for (int64_t m0 = 0; !done && m0 < M; m0 += kCenterBlock) {
          const int64_t bm = std::min(kCenterBlock, M - m0);
          at::Tensor S = tile.narrow(0, 0, bn * bm).view({bn, bm});
          at::mm_out(S, P, signed_cn[r].narrow(0, m0, bm).t());
          const scalar_t* s = S.data_ptr<scalar_t>();
          for (int64_t i = 0; i < bn; ++i) {
            scalar_t v;
            const int64_t a = row_argmax<scalar_t>(s + i * bm, bm, &v);
            // strict >: a tie with an earlier tile keeps the earlier center
            if (m0 == 0 || v > best[i]) {
              best[i] = v;
              arg[i] = m0 + a;
            }
          }
        }
      }
      // cos of the chosen center, recomputed in a fixed order
      for (int64_t i = 0; i < bn; ++i) {
        const scalar_t* p = p_ptr + (r * N + n0 + i) * d;
        const scalar_t* c = c_ptr + (r * M + arg[i]) * d;
        cos_ptr[r * N + n0 + i] =
            static_cast<scalar_t>(dot(c, p, d) / clamped_norm(dot(p, p, d)));
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> assign(const at::Tensor& points, const at::Tensor& centers,
                                          int sign) {
  at::Tensor index = at::empty({points.size(0), points.size(1)},
                               points.options().dtype(at::kLong));
  at::Tensor cos = at::empty({points.size(0), points.size(1)}, points.options());
  at::Tensor cn = normalize_rows(centers).contiguous();
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "cluster_assign",
                             [&] { assign_impl<scalar_t>(points, cn, sign, index, cos); });
  return {index, cos};
}

// ---------------------------------------------------------------- aggregation
at::Tensor count_members(const at::Tensor& index, int64_t M) {
  const int64_t R = index.size(0), N = index.size(1);
  at::Tensor count = at::zeros({R, M}, index.options().dtype(at::kInt));
  const int64_t* idx = index.data_ptr<int64_t>();
  int32_t* cnt = count.data_ptr<int32_t>();
  at::parallel_for(0, R, grain(N), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t n = 0; n < N; ++n) ++cnt[r * M + idx[r * N + n]];
  });
  return count;
}

// out[r, m] = (base[r, m] + Σ_{index[r,n]=m} weight[r,n]·x[r,n]) / div[r, m]
// (1 when `div` is null); base and weight are optional. Tasks are (region, channel chunk) and points are summed in order
// in double precision, so the result is bitwise reproducible.
template <typename in_t, typename out_t>
void scatter_rows(const at::Tensor& x, const double* weight, const at::Tensor& index,
                  const at::Tensor& base, const double* div, at::Tensor& out) {
  const int64_t R = x.size(0), N = x.size(1), d = x.size(2), M = out.size(1);
  const int64_t chunks = (d + kChunk - 1) / kChunk;
  const in_t* x_ptr = x.data_ptr<in_t>();
  const in_t* b_ptr = base.defined() ? base.data_ptr<in_t>() : nullptr;
  const int64_t* idx = index.data_ptr<int64_t>();
  out_t* o_ptr = out.data_ptr<out_t>();
  at::parallel_for(0, R * chunks, grain(N * kChunk), [&](int64_t begin, int64_t end) {
    std::vector<double> acc;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t r = task / chunks, k0 = (task % chunks) * kChunk;
      const int64_t w = std::min(kChunk, d - k0);
      acc.assign(M * w, 0.0);
      for (int64_t n = 0; n < N; ++n) {
        const in_t* xr = x_ptr + (r * N + n) * d + k0;
        double* a = acc.data() + idx[r * N + n] * w;
        const double wt = weight ? weight[r * N + n] : 1.0;
        for (int64_t k = 0; k < w; ++k) a[k] += wt * static_cast<double>(xr[k]);
      }
      for (int64_t m = 0; m < M; ++m) {
        const int64_t row = (r * M + m) * d + k0;
        const double dm = div ? div[r * M + m] : 1.0;
        for (int64_t k = 0; k < w; ++k) {
          const double b = b_ptr ? static_cast<double>(b_ptr[row + k]) : 0.0;
          o_ptr[row + k] = static_cast<out_t>((b + acc[m * w + k]) / dm);
        }
      }
    }
  });
}

// Denominators of the center update, double (R, M): 1 + count_m, or with
// `weight` (the similarities s_n) 1 + Σ_{a(n)=m} s_n, summed in point order.
at::Tensor denominators(const at::Tensor& index, int64_t M, const double* weight) {
  const int64_t R = index.size(0), N = index.size(1);
  at::Tensor den = at::ones({R, M}, index.options().dtype(at::kDouble));
  const int64_t* idx = index.data_ptr<int64_t>();
  double* d_ptr = den.data_ptr<double>();
  at::parallel_for(0, R, grain(N), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r)
      for (int64_t n = 0; n < N; ++n)
        d_ptr[r * M + idx[r * N + n]] += weight ? weight[r * N + n] : 1.0;
  });
  return den;
}

// g_m = (vcenter_m + Σ_{a(n)=m} w_n·v_n) / den_m: FEC's mean (w = 1, docs/notes/design.md §2
// step 6) or Context Clusters' similarity-weighted update (w = s, docs/notes/design.md §7).
at::Tensor aggregate(const at::Tensor& values, const at::Tensor& value_centers,
                     const at::Tensor& index, const double* weight, const at::Tensor& den) {
  at::Tensor g = at::empty_like(value_centers);
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "cluster_aggregate", [&] {
    scatter_rows<scalar_t, scalar_t>(values, weight, index, value_centers,
                                     den.data_ptr<double>(), g);
  });
  return g;
}

// Gradients through cos_n = ĉ_{a(n)} · p̂_n for a per-point gradient gcos
// (double, (R,N)): returns (grad points, grad centers).
template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> cos_backward(const at::Tensor& gcos, const at::Tensor& points,
                                                const at::Tensor& centers,
                                                const at::Tensor& index) {
  const int64_t R = points.size(0), N = points.size(1), d = points.size(2);
  const int64_t M = centers.size(1);
  const at::Tensor cn = normalize_rows(centers).contiguous();
  at::Tensor gp = at::empty_like(points);
  at::Tensor gc = at::empty_like(centers);
  at::Tensor w = at::empty({R, N}, gcos.options());
  const scalar_t* p_ptr = points.data_ptr<scalar_t>();
  const scalar_t* cn_ptr = cn.data_ptr<scalar_t>();
  const int64_t* idx = index.data_ptr<int64_t>();
  const double* g_ptr = gcos.data_ptr<double>();
  double* w_ptr = w.data_ptr<double>();
  scalar_t* gp_ptr = gp.data_ptr<scalar_t>();
  at::parallel_for(0, R * N, grain(4 * d), [&](int64_t begin, int64_t end) {
    std::vector<double> dy(d);
    for (int64_t i = begin; i < end; ++i) {
      const scalar_t* p = p_ptr + i * d;
      const scalar_t* c = cn_ptr + ((i / N) * M + idx[i]) * d;
      for (int64_t k = 0; k < d; ++k) dy[k] = g_ptr[i] * c[k];
      normalize_backward_row(p, dy.data(), gp_ptr + i * d, d);
      // d cn_a += gcos_n · p̂_n = (gcos_n / max(|p_n|, eps)) · p_n
      w_ptr[i] = g_ptr[i] / clamped_norm(dot(p, p, d));
    }
  });
  at::Tensor gcn = at::empty(centers.sizes(), gcos.options());
  scatter_rows<scalar_t, double>(points, w_ptr, index, at::Tensor(), nullptr, gcn);
  const scalar_t* c_ptr = centers.data_ptr<scalar_t>();
  const double* gcn_ptr = gcn.data_ptr<double>();
  scalar_t* gc_ptr = gc.data_ptr<scalar_t>();
  at::parallel_for(0, R * M, grain(4 * d), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      normalize_backward_row(c_ptr + i * d, gcn_ptr + i * d, gc_ptr + i * d, d);
  });
  return {gp, gc};
}

void check(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "fec_mm._ext: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), "fec_mm._ext: ", name, " must be contiguous");
  TORCH_CHECK(t.dim() == 3, "fec_mm._ext: ", name, " must be 3-D");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "fec_mm._ext: ", name, " must be float32 or float64");
}

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

// ================================================================= exported ops

// index (R,N) int64 and cos (R,N) of the cosine argmax (ties to the lowest m).
std::tuple<at::Tensor, at::Tensor> cluster_assign_forward(const at::Tensor& points,
                                                          const at::Tensor& centers) {
  at::NoGradGuard no_grad;  // autograd is handled in Python (library.py)
  check(points, "points");
  check(centers, "centers");
  return assign(points, centers, 1);
}

// grad_cos (R,N) -> (grad points, grad centers).
std::tuple<at::Tensor, at::Tensor> cluster_assign_backward(const at::Tensor& grad_cos,
                                                           const at::Tensor& points,
                                                           const at::Tensor& centers,
                                                           const at::Tensor& index) {
  at::NoGradGuard no_grad;  // autograd is handled in Python (library.py)
  const at::Tensor gcos = grad_cos.to(at::kDouble).contiguous();
  std::tuple<at::Tensor, at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "cluster_assign_backward", [&] {
    out = cos_backward<scalar_t>(gcos, points, centers, index);
  });
  return out;
}

// Mixer steps 4-7: returns (out (R,N,d), index (R,N), cos (R,N), g (R,M,d),
// den (R,M)); the last four are what backward needs. den_m is the center
// update's denominator: 1 + count_m, or 1 + Σ_{a(n)=m} s_n when `weighted`
// (Context Clusters, docs/notes/design.md §7: g_m = (v_m + Σ s_n·v_n) / den_m).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> cluster_encode_forward(
    const at::Tensor& points, const at::Tensor& values, const at::Tensor& centers,
    const at::Tensor& value_centers, const at::Tensor& alpha, const at::Tensor& beta,
    bool weighted) {
  at::NoGradGuard no_grad;  // autograd is handled in Python (library.py)
  check(points, "points");
  check(values, "values");
  check(centers, "centers");
  check(value_centers, "value_centers");
  const int64_t R = points.size(0), N = points.size(1), d = values.size(2);
  const int64_t M = centers.size(1);
  const double a = alpha.item<double>(), b = beta.item<double>();
  at::Tensor index, cos;
  std::tie(index, cos) = assign(points, centers, alpha_sign(alpha));
  at::Tensor s = at::empty({R, N}, cos.options().dtype(at::kDouble));
  double* s_ptr = s.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(cos.scalar_type(), "cluster_encode_similarity", [&] {
    const scalar_t* cos_ptr = cos.data_ptr<scalar_t>();
    at::parallel_for(0, R * N, grain(16), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        s_ptr[i] = sigmoid(b + a * static_cast<double>(cos_ptr[i]));
    });
  });
  const double* weight = weighted ? s_ptr : nullptr;
  const at::Tensor den = denominators(index, M, weight);
  at::Tensor g = aggregate(values, value_centers, index, weight, den);
  at::Tensor out = at::empty_like(values);
  AT_DISPATCH_FLOATING_TYPES(values.scalar_type(), "cluster_encode_forward", [&] {
    const scalar_t* g_ptr = g.data_ptr<scalar_t>();
    const int64_t* idx = index.data_ptr<int64_t>();
    scalar_t* o_ptr = out.data_ptr<scalar_t>();
    at::parallel_for(0, R * N, grain(4 * d), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* gr = g_ptr + ((i / N) * M + idx[i]) * d;
        for (int64_t k = 0; k < d; ++k)
          o_ptr[i * d + k] = static_cast<scalar_t>(s_ptr[i] * gr[k]);
      }
    });
  });
  return {out, index, cos, g, den.to(cos.scalar_type())};
}

// Backward of cluster_encode_forward: (grad points, values, centers,
// value_centers, alpha, beta); alpha and beta grads are 0-d float64.
// With out_n = s_n·g_a and g_a = (vc_a + Σ w_k·v_k) / den_a:
//   grad_g_m = Σ_{a(n)=m} s_n·grad_out_n, grad vc_m = grad_g_m / den_m,
//   grad v_n = w_n·grad_g_a / den_a, and
//   grad s_n = grad_out_n·g_a (+ grad_g_a·(v_n - g_a) / den_a when w = s).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
cluster_encode_backward(const at::Tensor& grad_out, const at::Tensor& points,
                        const at::Tensor& values, const at::Tensor& centers,
                        const at::Tensor& alpha, const at::Tensor& beta, const at::Tensor& index,
                        const at::Tensor& cos, const at::Tensor& g, const at::Tensor& denom,
                        bool weighted) {
  at::NoGradGuard no_grad;  // autograd is handled in Python (library.py)
  check(grad_out, "grad_out");
  check(values, "values");
  const int64_t R = grad_out.size(0), N = grad_out.size(1), d = grad_out.size(2);
  const int64_t M = g.size(1);
  const double a = alpha.item<double>(), b = beta.item<double>();
  at::Tensor s = at::empty({R, N}, cos.options().dtype(at::kDouble));
  at::Tensor gz = at::empty({R, N}, s.options());
  at::Tensor gcos = at::empty({R, N}, s.options());
  at::Tensor grad_g = at::empty_like(g);  // Σ_{a(n)=m} s_n · grad_out_n
  at::Tensor gvc = at::empty_like(g);
  at::Tensor gv = at::empty_like(grad_out);
  const at::Tensor den = denom.to(at::kDouble).contiguous();
  const double* den_ptr = den.data_ptr<double>();
  const int64_t* idx = index.data_ptr<int64_t>();
  double* s_ptr = s.data_ptr<double>();
  double* gz_ptr = gz.data_ptr<double>();
  double* gcos_ptr = gcos.data_ptr<double>();
  AT_DISPATCH_FLOATING_TYPES(grad_out.scalar_type(), "cluster_encode_backward", [&] {
    const scalar_t* cos_ptr = cos.data_ptr<scalar_t>();
    at::parallel_for(0, R * N, grain(16), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) s_ptr[i] = sigmoid(b + a * cos_ptr[i]);
    });
    scatter_rows<scalar_t, scalar_t>(grad_out, s_ptr, index, at::Tensor(), nullptr, grad_g);
    const scalar_t* go = grad_out.data_ptr<scalar_t>();
    const scalar_t* v_ptr = values.data_ptr<scalar_t>();
    const scalar_t* g_ptr = g.data_ptr<scalar_t>();
    const scalar_t* gg = grad_g.data_ptr<scalar_t>();
    scalar_t* gv_ptr = gv.data_ptr<scalar_t>();
    scalar_t* gvc_ptr = gvc.data_ptr<scalar_t>();
    at::parallel_for(0, R * N, grain(4 * d), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t row = ((i / N) * M + idx[i]);
        const double inv = 1.0 / den_ptr[row];
        // out_n = s_n·g_a: d s_n = grad_out_n · g_a, through the sigmoid
        double gs = dot(go + i * d, g_ptr + row * d, d);
        const double w = weighted ? s_ptr[i] : 1.0;
        if (weighted) {
          // d g_a / d s_n = (v_n - g_a) / den_a
          double t = 0.0;
          for (int64_t k = 0; k < d; ++k)
            t += static_cast<double>(gg[row * d + k]) *
                 (static_cast<double>(v_ptr[i * d + k]) - g_ptr[row * d + k]);
          gs += t * inv;
        }
        gz_ptr[i] = gs * s_ptr[i] * (1.0 - s_ptr[i]);
        gcos_ptr[i] = a * gz_ptr[i];
        for (int64_t k = 0; k < d; ++k)
          gv_ptr[i * d + k] = static_cast<scalar_t>(w * gg[row * d + k] * inv);
      }
    });
    at::parallel_for(0, R * M, grain(4 * d), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const double inv = 1.0 / den_ptr[i];
        for (int64_t k = 0; k < d; ++k)
          gvc_ptr[i * d + k] = static_cast<scalar_t>(gg[i * d + k] * inv);
      }
    });
  });
  // Scalar grads: sums in point order, in double.
  double ga = 0.0, gb = 0.0;
  AT_DISPATCH_FLOATING_TYPES(cos.scalar_type(), "cluster_encode_backward_scalars", [&] {
    const scalar_t* cos_ptr = cos.data_ptr<scalar_t>();
    for (int64_t i = 0; i < R * N; ++i) {
      ga += gz_ptr[i] * cos_ptr[i];
      gb += gz_ptr[i];
    }
  });
  at::Tensor gp, gc;
  AT_DISPATCH_FLOATING_TYPES(points.scalar_type(), "cluster_encode_backward_cos", [&] {
    std::tie(gp, gc) = cos_backward<scalar_t>(gcos, points, centers, index);
  });
  const auto scalar_opts = s.options();
  return {gp, gv, gc, gvc, at::full({}, ga, scalar_opts), at::full({}, gb, scalar_opts)};
}

// Cluster pooling: returns (g (R,M,d), index (R,N), count (R,M) int32).
std::tuple<at::Tensor, at::Tensor, at::Tensor> cluster_pool_forward(
    const at::Tensor& points, const at::Tensor& values, const at::Tensor& centers,
    const at::Tensor& value_centers) {
  at::NoGradGuard no_grad;  // autograd is handled in Python (library.py)
  check(points, "points");
  check(values, "values");
  check(centers, "centers");
  check(value_centers, "value_centers");
  at::Tensor index = std::get<0>(assign(points, centers, 1));
  const at::Tensor count = count_members(index, centers.size(1));
  const at::Tensor den = denominators(index, centers.size(1), nullptr);
  return {aggregate(values, value_centers, index, nullptr, den), index, count};
}

// grad g (R,M,d) -> (grad values (R,N,d), grad value_centers (R,M,d)).
std::tuple<at::Tensor, at::Tensor> cluster_pool_backward(const at::Tensor& grad_g,
                                                         const at::Tensor& index,
                                                         const at::Tensor& count) {
  at::NoGradGuard no_grad;  // autograd is handled in Python (library.py)
  check(grad_g, "grad_g");
  const int64_t R = grad_g.size(0), M = grad_g.size(1), d = grad_g.size(2);
  const int64_t N = index.size(1);
  at::Tensor gvc = grad_g / (count.unsqueeze(-1).to(grad_g.scalar_type()) + 1);
  at::Tensor gv = at::empty({R, N, d}, grad_g.options());
  const int64_t* idx = index.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(grad_g.scalar_type(), "cluster_pool_backward", [&] {
    const scalar_t* src = gvc.data_ptr<scalar_t>();
    scalar_t* dst = gv.data_ptr<scalar_t>();
    at::parallel_for(0, R * N, grain(4 * d), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i)
        std::copy_n(src + ((i / N) * M + idx[i]) * d, d, dst + i * d);
    });
  });
  return {gv, gvc};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CPU kernels of the FEC clustering ops (fec_mm.ops)";
  m.def("cluster_assign_forward", &cluster_assign_forward, "cosine argmax assignment");
  m.def("cluster_assign_backward", &cluster_assign_backward, "backward of the assignment cos");
  m.def("cluster_encode_forward", &cluster_encode_forward, "clustering feature encoding");
  m.def("cluster_encode_backward", &cluster_encode_backward, "backward of the encoding");
  m.def("cluster_pool_forward", &cluster_pool_forward, "clustering feature pooling");
  m.def("cluster_pool_backward", &cluster_pool_backward, "backward of the pooling");
  m.def("prefilter_available", &cpu_has_bf16_dot,
        "whether float32 assignments over many centers take the exact bf16 pre-pass");
}
