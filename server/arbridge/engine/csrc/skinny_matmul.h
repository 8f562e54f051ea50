// y = x W^T for a few rows of x (a decode step: one row per stream, or one stream's
// last token and its draft), reading each weight row once, straight from memory.
//
// x       [rows, in]   float32 or bfloat16, contiguous
// weight  [out, in]    float32, bfloat16 or int8 (then `scales` [out], one per row)
// -> y    [rows, out]  in x's dtype (int8: rounded to bfloat16 first, as torch's
//                      weight-only int8 kernel returns it)
//
// At batch 1 a decode step is a stream of weight reads; BLAS libraries tuned for
// square products leave a third of the memory bandwidth unused there on some CPUs
// (measured on a 2-core AMD EPYC: 20.8 of 32 GB/s). Here each task takes a run of
// output rows, widens each weight row to float32 once into a buffer that stays in
// L1, and takes its dot product with every x row: float32 sums, the loops written
// for the compiler to vectorize with this CPU's own instructions (-march=native).
// Sums run in another order than BLAS's, so results agree to float rounding.
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

inline float bf16_to_float(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float out;
  std::memcpy(&out, &wide, sizeof(out));
  return out;
}

#if defined(__AVX512F__)
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;  // AVX2 (and narrower: the compiler splits the vectors)
#endif
typedef float vfloat __attribute__((vector_size(kLanes * sizeof(float))));

inline vfloat load(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline float lane_sum(vfloat v) {
  float sum = 0.f;
  for (int i = 0; i < kLanes; ++i) sum += v[i];
  return sum;
}

// sums[r] = x[r] . w for R rows of x and one weight row: each weight vector is loaded
// once for all R rows, two vectors a step (2R accumulators in registers). Measured
// against pairing two weight rows per step: that ran 30-70 % slower at 1-4 rows.
template <int R>
inline void tile(const float* __restrict w, const float* __restrict x, int64_t in,
                 float* sums) {
  vfloat a[R], b[R];
  for (int r = 0; r < R; ++r) a[r] = b[r] = vfloat{};
  int64_t i = 0;
  for (; i + 2 * kLanes <= in; i += 2 * kLanes) {
    const vfloat v0 = load(w + i), v1 = load(w + i + kLanes);
    for (int r = 0; r < R; ++r) {
      a[r] += v0 * load(x + r * in + i);
      b[r] += v1 * load(x + r * in + i + kLanes);
    }
  }
  for (; i + kLanes <= in; i += kLanes) {
    const vfloat v0 = load(w + i);
    for (int r = 0; r < R; ++r) a[r] += v0 * load(x + r * in + i);
  }
  for (int r = 0; r < R; ++r) {
    float t = lane_sum(a[r] + b[r]);
    for (int64_t j = i; j < in; ++j) t += w[j] * x[r * in + j];
    sums[r] = t;
  }
}

// Widens weight row `row` into `out` (float32); float32 rows are read in place.
inline const float* widen(const float* weight, int64_t in, int64_t row, float*) {
  return weight + row * in;
}

inline const float* widen(const uint16_t* __restrict weight, int64_t in, int64_t row,
                          float* __restrict out) {
  const uint16_t* w = weight + row * in;
  for (int64_t i = 0; i < in; ++i) out[i] = bf16_to_float(w[i]);
  return out;
}

inline const float* widen(const int8_t* __restrict weight, int64_t in, int64_t row,
                          float* __restrict out) {
  const int8_t* w = weight + row * in;
  for (int64_t i = 0; i < in; ++i) out[i] = static_cast<float>(w[i]);
  return out;
}

// One x row against an int8 (or bfloat16) weight row: each weight vector is widened
// in registers (sign-extend and convert; for bfloat16 a shift) and meets x at once. The two-pass widen-then-dot wrote
// and reread a buffer; measured on 120 SmolLM2-shaped projections (119 MB, cold),
// 11.9-12.5 ms a step before, 5.2-5.9 ms after. Four rows per x load was slower cold
// (12.6-14.9 ms): four weight streams at once.
inline vfloat load_int8(const int8_t* p) {
#if defined(__AVX512F__)
  const __m512 f = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#elif defined(__AVX2__)
  const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
      _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
#else
  vfloat f;
  for (int i = 0; i < kLanes; ++i) f[i] = static_cast<float>(p[i]);
#endif
  vfloat v;
  std::memcpy(&v, &f, sizeof(v));
  return v;
}

// bfloat16 the same way: zero-extend to 32 bits, shift into a float's high half.
inline vfloat load_bf16(const uint16_t* p) {
#if defined(__AVX512F__)
  const __m512 f = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
#elif defined(__AVX2__)
  const __m256 f = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
#else
  vfloat f;
  for (int i = 0; i < kLanes; ++i) f[i] = bf16_to_float(p[i]);
#endif
  vfloat v;
  std::memcpy(&v, &f, sizeof(v));
  return v;
}

inline vfloat load_weight(const int8_t* p) { return load_int8(p); }
inline vfloat load_weight(const uint16_t* p) { return load_bf16(p); }
inline float scalar_weight(int8_t w) { return static_cast<float>(w); }
inline float scalar_weight(uint16_t w) { return bf16_to_float(w); }

template <typename W>
inline float widened_dot(const W* __restrict w, const float* __restrict x, int64_t in) {
  vfloat acc = vfloat{};
  int64_t i = 0;
  for (; i + kLanes <= in; i += kLanes) acc += load_weight(w + i) * load(x + i);
  float t = lane_sum(acc);
  for (; i < in; ++i) t += scalar_weight(w[i]) * x[i];
  return t;
}

constexpr int kRowBlock = 8;  // x rows per tile

// One x row: a plain dot product the compiler vectorizes and unrolls by itself
// (measured faster at one row than the two-weight-row tile: 92 % of the read
// bandwidth on a 2-core AMD EPYC).
inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  float sum = 0.f;
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// sums[r, o] = x[r] . weight[o] (times scales[o] when given), float32.
template <typename W>
void skinny(const float* x, const W* weight, const uint16_t* scales, int64_t rows,
            int64_t in, int64_t out, float* sums) {
  // Runs of rows big enough that a task is not all overhead (at least ~64 KB read).
  const int64_t grain = std::max<int64_t>(8, (64 << 10) / std::max<int64_t>(1, in * sizeof(W)));
  at::parallel_for(0, out, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buffer(in);
    if constexpr (!std::is_same<W, float>::value) {
      if (rows == 1) {
        for (int64_t o = begin; o < end; ++o) {
          const float scale = scales ? bf16_to_float(scales[o]) : 1.f;
          sums[o] = widened_dot(weight + o * in, x, in) * scale;
        }
        return;
      }
    }
    if (rows == 1) {
      for (int64_t o = begin; o < end; ++o) {
        const float scale = scales ? bf16_to_float(scales[o]) : 1.f;
        sums[o] = dot(widen(weight, in, o, buffer.data()), x, in) * scale;
      }
      return;
    }
    float part[kRowBlock];
    for (int64_t o = begin; o < end; ++o) {
      const float* w = widen(weight, in, o, buffer.data());
      const float scale = scales ? bf16_to_float(scales[o]) : 1.f;
      for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
        const int64_t count = std::min<int64_t>(kRowBlock, rows - r0);
        const float* xr = x + r0 * in;
        switch (count) {
          case 1: tile<1>(w, xr, in, part); break;
          case 2: tile<2>(w, xr, in, part); break;
          case 3: tile<3>(w, xr, in, part); break;
          case 4: tile<4>(w, xr, in, part); break;
          case 5: tile<5>(w, xr, in, part); break;
          case 6: tile<6>(w, xr, in, part); break;
          case 7: tile<7>(w, xr, in, part); break;
          default: tile<8>(w, xr, in, part); break;
        }
        for (int64_t r = 0; r < count; ++r) sums[(r0 + r) * out + o] = part[r] * scale;
      }
    }
  });
}

#if defined(__AVX512BF16__)
// bfloat16 rows against bfloat16 weights on CPUs with AVX-512 BF16: vdpbf16ps takes
// 32 products an instruction, each exact in float32 (8-bit mantissas), summed in
// float32 as the widening path sums them, pairs first: the same numbers in another
// order (as BLAS's), where widening spent three instructions per 16 weights and read
// them at 20 of 35 GB/s on a 2-core AMD EPYC.
template <int R>
inline void bf16_row_dots(const uint16_t* __restrict w, const uint16_t* __restrict x,
                          int64_t in, float* out) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= in; i += 32) {
    const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + i);
    for (int r = 0; r < R; ++r)
      acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_loadu_si512(x + r * in + i), wv);
  }
  if (i < in) {
    const __mmask32 live = (1u << (in - i)) - 1;
    const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(live, w + i);
    for (int r = 0; r < R; ++r)
      acc[r] = _mm512_dpbf16_ps(acc[r], (__m512bh)_mm512_maskz_loadu_epi16(live, x + r * in + i),
                                wv);
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(acc[r]);
}

void skinny_bf16(const uint16_t* x, const uint16_t* weight, int64_t rows, int64_t in,
                 int64_t out, float* sums) {
  const int64_t grain = std::max<int64_t>(8, (64 << 10) / std::max<int64_t>(1, in * 2));
  at::parallel_for(0, out, grain, [&](int64_t begin, int64_t end) {
    float part[4];
    for (int64_t o = begin; o < end; ++o) {
      for (int64_t r0 = 0; r0 < rows; r0 += 4) {
        const int64_t count = std::min<int64_t>(4, rows - r0);
        const uint16_t* w = weight + o * in;
        const uint16_t* xr = x + r0 * in;
        switch (count) {
          case 1: bf16_row_dots<1>(w, xr, in, part); break;
          case 2: bf16_row_dots<2>(w, xr, in, part); break;
          case 3: bf16_row_dots<3>(w, xr, in, part); break;
          default: bf16_row_dots<4>(w, xr, in, part); break;
        }
        for (int64_t r = 0; r < count; ++r) sums[(r0 + r) * out + o] = part[r];
      }
    }
  });
}
#endif

// x (float32 or bfloat16) into float32 `out`, through bfloat16 when `round`.
void to_float(const torch::Tensor& x, bool round, float* out) {
  const int64_t n = x.numel();
  if (x.scalar_type() == torch::kBFloat16) {
    const at::BFloat16* p = x.data_ptr<at::BFloat16>();
    for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(p[i]);
    return;
  }
  TORCH_CHECK(x.scalar_type() == torch::kFloat32, "float32 or bfloat16 x");
  const float* p = x.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i)
    out[i] = round ? static_cast<float>(at::BFloat16(p[i])) : p[i];
}

// float32 sums into `result` (float32 or bfloat16), through bfloat16 when `round`
// (at::BFloat16 rounds to nearest even, as torch's casts do).
void from_float(const float* sums, bool round, torch::Tensor& result) {
  const int64_t n = result.numel();
  if (result.scalar_type() == torch::kBFloat16) {
    at::BFloat16* p = result.data_ptr<at::BFloat16>();
    for (int64_t i = 0; i < n; ++i) p[i] = at::BFloat16(sums[i]);
    return;
  }
  float* p = result.data_ptr<float>();
  for (int64_t i = 0; i < n; ++i)
    p[i] = round ? static_cast<float>(at::BFloat16(sums[i])) : sums[i];
}

}  // namespace

torch::Tensor skinny_matmul(const torch::Tensor& x, const torch::Tensor& weight,
                            const c10::optional<torch::Tensor>& scales) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1),
              "x [rows, in] and weight [out, in] expected");
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous(), "contiguous inputs only");
  const int64_t rows = x.size(0), in = x.size(1), out = weight.size(0);
  const auto kind = weight.scalar_type();
  const bool int8 = kind == torch::kInt8;
  TORCH_CHECK(int8 == scales.has_value(), "scales go with int8 weights, and only with them");
  TORCH_CHECK(kind == torch::kFloat32 || kind == torch::kBFloat16 || int8,
              "float32, bfloat16 or int8 weights");
  // x as float32 (for int8: rounded to bfloat16 first, the activations torch's
  // weight-only int8 kernel takes), and the result in x's dtype (for int8: rounded
  // to bfloat16 first, as that kernel returns it), converted here in plain loops: at
  // one row the four torch casts around each of 120 projections cost a millisecond
  // a step.
#if defined(__AVX512BF16__)
  if (kind == torch::kBFloat16 && x.scalar_type() == torch::kBFloat16) {
    auto result = torch::empty({rows, out}, x.options());
    std::vector<float> sums(rows * out);
    skinny_bf16(reinterpret_cast<const uint16_t*>(x.data_ptr<at::BFloat16>()),
                reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>()), rows, in,
                out, sums.data());
    from_float(sums.data(), false, result);
    return result;
  }
#endif
  std::vector<float> xbuf;
  const float* xp;
  if (x.scalar_type() == torch::kFloat32 && !int8) {
    xp = x.data_ptr<float>();
  } else {
    xbuf.resize(rows * in);
    to_float(x, int8, xbuf.data());
    xp = xbuf.data();
  }
  const bool direct = x.scalar_type() == torch::kFloat32 && !int8;
  auto result = torch::empty({rows, out}, x.options());
  std::vector<float> sbuf(direct ? 0 : rows * out);
  float* sp = direct ? result.data_ptr<float>() : sbuf.data();
  if (kind == torch::kFloat32) {
    skinny<float>(xp, weight.data_ptr<float>(), nullptr, rows, in, out, sp);
  } else if (kind == torch::kBFloat16) {
    skinny<uint16_t>(xp, reinterpret_cast<const uint16_t*>(weight.data_ptr<at::BFloat16>()),
                     nullptr, rows, in, out, sp);
  } else {
    TORCH_CHECK(scales->scalar_type() == torch::kBFloat16 && scales->numel() == out &&
                scales->is_contiguous(), "bfloat16 scales, one per output row");
    skinny<int8_t>(xp, weight.data_ptr<int8_t>(),
                   reinterpret_cast<const uint16_t*>(scales->data_ptr<at::BFloat16>()), rows,
                   in, out, sp);
  }
  if (!direct) from_float(sp, int8, result);
  return result;
}
