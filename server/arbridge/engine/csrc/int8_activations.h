// y = x W^T with int8 weights AND int8 activations (W8A8), for any number of rows
// (rows in fours against each weight row, which stays in L1 meanwhile).
//
// x       [rows, in]   float32 or bfloat16, contiguous
// weight  [out, in]    int8, one bfloat16 scale per output row (`scales` [out])
// -> y    [rows, out]  in x's dtype
//
// The weight-only kernel (skinny_matmul.h) widens every int8 weight to float32 before
// it multiplies: three vector instructions per 16 weights, so on 2 cores it reads
// weights at ~24 GB/s, below the memory's ~35. Here each x row is quantized once,
// as llama.cpp's Q8_0 quantizes activations (blocks of 32 values, one float32 scale
// each: d = max|x| / 127, q = round(x / d)), and a weight row meets it in integer dot
// products: VNNI's vpdpbusd takes 64 int8 products a instruction. It multiplies
// unsigned by signed bytes, so the weights' signs move onto the activations
// (|w| . sign(w) x, as llama.cpp does). Integer sums are exact; each block's sum is
// scaled by its d in float32, and the row's total by the weight row's scale.
//
// Numbers differ from the weight-only path by the activations' rounding, so this is a
// mode of its own (`int8_activations`), measured by `arbridge perplexity --dtype
// int8-activations` (in `make eval`).
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace w8a8 {

constexpr int64_t kBlock = 32;  // activation values per scale
constexpr int64_t kChunk = 64;  // bytes per step of the dot product (two blocks)

inline float bf16_bits_to_float(uint16_t bits) {
  const uint32_t wide = static_cast<uint32_t>(bits) << 16;
  float out;
  std::memcpy(&out, &wide, sizeof(out));
  return out;
}

// One x row into int8 blocks `q` (zero past `in`, up to `padded`) and, per 64-byte
// chunk, 16 scales laid out as the dot product's 16 int32 lanes: lanes 0-7 sum the
// chunk's first block, lanes 8-15 its second.
// 127 / max|x| is an IEEE division (the kernels build with -fno-reciprocal-math: as
// 127 x (1 / max) it was a step off at times, and values near a rounding tie then
// landed a quantization step away from torch's).
template <typename T>
void quantize_row(const T* x, int64_t in, int64_t padded, int8_t* q, float* lane_scales) {
  for (int64_t begin = 0; begin < padded; begin += kBlock) {
    const int64_t end = std::min(in, begin + kBlock);
    float amax = 0.f;
    for (int64_t i = begin; i < end; ++i) amax = std::max(amax, std::fabs(static_cast<float>(x[i])));
    const float inverse = amax > 0.f ? 127.f / amax : 0.f;
    for (int64_t i = begin; i < begin + kBlock; ++i) {
      q[i] = i < end ? static_cast<int8_t>(std::nearbyint(static_cast<float>(x[i]) * inverse))
                     : 0;
    }
    float* lanes = lane_scales + begin / kChunk * 16 + (begin % kChunk ? 8 : 0);
    for (int k = 0; k < 8; ++k) lanes[k] = amax / 127.f;
  }
}

// The weight row's 64 bytes from `i`; past its end, copied into `tail` with zeros.
inline const int8_t* chunk_at(const int8_t* w, int64_t i, int64_t in, int8_t* tail) {
  if (i + kChunk <= in) return w + i;
  std::memset(tail, 0, kChunk);
  std::memcpy(tail, w + i, in - i);
  return tail;
}

// sum over chunks of lane_scales . (int32 lane sums of w x q), for `count` x rows
// (q rows `padded` apart, their lane scales `padded / 4` apart) against one weight
// row of `in` int8 values. The last partial chunk is copied into a zeroed buffer.
template <int R>
inline void row_dots(const int8_t* __restrict w, const int8_t* __restrict q,
                     const float* __restrict scales, int64_t in, int64_t padded, float* out) {
  alignas(64) int8_t tail[kChunk];
#if defined(__AVX512BW__)
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
#if !defined(__AVX512VNNI__)
  const __m512i ones = _mm512_set1_epi16(1);
#endif
  for (int64_t i = 0; i < in; i += kChunk) {
    const int8_t* wp = chunk_at(w, i, in, tail);
    const __m512i wv = _mm512_loadu_si512(wp);
    const __m512i magnitude = _mm512_abs_epi8(wv);
    const __mmask64 negative = _mm512_movepi8_mask(wv);
    for (int r = 0; r < R; ++r) {
      const __m512i xv = _mm512_loadu_si512(q + r * padded + i);
      const __m512i signed_x = _mm512_mask_sub_epi8(xv, negative, _mm512_setzero_si512(), xv);
#if defined(__AVX512VNNI__)
      const __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), magnitude, signed_x);
#else
      const __m512i dot = _mm512_madd_epi16(_mm512_maddubs_epi16(magnitude, signed_x), ones);
#endif
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot),
                               _mm512_loadu_ps(scales + r * (padded / 4) + i / 4), acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = _mm512_reduce_add_ps(acc[r]);
#elif defined(__AVX2__)
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
#if !defined(__AVXVNNI__)
  const __m256i ones = _mm256_set1_epi16(1);
#endif
  for (int64_t i = 0; i < in; i += kChunk) {
    const int8_t* wp = chunk_at(w, i, in, tail);
    for (int half = 0; half < 2; ++half) {  // one block of 32 a half
      const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wp + 32 * half));
      const __m256i magnitude = _mm256_sign_epi8(wv, wv);
      for (int r = 0; r < R; ++r) {
        const __m256i xv = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(q + r * padded + i + 32 * half));
        const __m256i signed_x = _mm256_sign_epi8(xv, wv);
#if defined(__AVXVNNI__)
        const __m256i dot = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), magnitude, signed_x);
#else
        const __m256i dot = _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, signed_x), ones);
#endif
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot),
                                 _mm256_loadu_ps(scales + r * (padded / 4) + i / 4 + 8 * half),
                                 acc[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, acc[r]);
    float sum = 0.f;
    for (float lane : lanes) sum += lane;
    out[r] = sum;
  }
#else
  (void)tail;
  for (int r = 0; r < R; ++r) {
    float sum = 0.f;
    for (int64_t begin = 0; begin < in; begin += kBlock) {
      int32_t dot = 0;
      for (int64_t i = begin; i < std::min(in, begin + kBlock); ++i)
        dot += static_cast<int32_t>(w[i]) * q[r * padded + i];
      sum += scales[r * (padded / 4) + begin / kChunk * 16 + (begin % kChunk ? 8 : 0)] * dot;
    }
    out[r] = sum;
  }
#endif
}

constexpr int kRowBlock = 4;  // x rows per pass over a weight row

}  // namespace w8a8

torch::Tensor int8_activations_matmul(const torch::Tensor& x, const torch::Tensor& weight,
                                      const torch::Tensor& scales) {
  using namespace w8a8;
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1),
              "x [rows, in] and weight [out, in] expected");
  TORCH_CHECK(x.is_contiguous() && weight.is_contiguous() && scales.is_contiguous(),
              "contiguous inputs only");
  TORCH_CHECK(weight.scalar_type() == torch::kInt8 && scales.scalar_type() == torch::kBFloat16 &&
              scales.numel() == weight.size(0), "int8 weights with one bfloat16 scale a row");
  const int64_t rows = x.size(0), in = x.size(1), out = weight.size(0);
  const int64_t padded = (in + kChunk - 1) / kChunk * kChunk;
  std::vector<int8_t> q(rows * padded);
  std::vector<float> lane_scales(rows * padded / 4);
  for (int64_t r = 0; r < rows; ++r) {
    if (x.scalar_type() == torch::kFloat32) {
      quantize_row(x.data_ptr<float>() + r * in, in, padded, q.data() + r * padded,
                   lane_scales.data() + r * padded / 4);
    } else {
      TORCH_CHECK(x.scalar_type() == torch::kBFloat16, "float32 or bfloat16 x");
      quantize_row(x.data_ptr<at::BFloat16>() + r * in, in, padded, q.data() + r * padded,
                   lane_scales.data() + r * padded / 4);
    }
  }
  std::vector<float> sums(rows * out);
  const int8_t* w = weight.data_ptr<int8_t>();
  const uint16_t* wscale = reinterpret_cast<const uint16_t*>(scales.data_ptr<at::BFloat16>());
  // Runs of rows big enough that a task is not all overhead (at least ~64 KB read).
  const int64_t grain = std::max<int64_t>(8, (64 << 10) / std::max<int64_t>(1, in));
  at::parallel_for(0, out, grain, [&](int64_t begin, int64_t end) {
    float part[w8a8::kRowBlock];
    for (int64_t o = begin; o < end; ++o) {
      const float scale = bf16_bits_to_float(wscale[o]);
      for (int64_t r0 = 0; r0 < rows; r0 += w8a8::kRowBlock) {
        const int64_t count = std::min<int64_t>(w8a8::kRowBlock, rows - r0);
        const int8_t* qr = q.data() + r0 * padded;
        const float* sr = lane_scales.data() + r0 * padded / 4;
        switch (count) {
          case 1: row_dots<1>(w + o * in, qr, sr, in, padded, part); break;
          case 2: row_dots<2>(w + o * in, qr, sr, in, padded, part); break;
          case 3: row_dots<3>(w + o * in, qr, sr, in, padded, part); break;
          default: row_dots<4>(w + o * in, qr, sr, in, padded, part); break;
        }
        for (int64_t r = 0; r < count; ++r) sums[(r0 + r) * out + o] = part[r] * scale;
      }
    }
  });
  auto result = torch::empty({rows, out}, x.options());
  if (x.scalar_type() == torch::kFloat32) {
    std::memcpy(result.data_ptr<float>(), sums.data(), sums.size() * sizeof(float));
  } else {
    at::BFloat16* p = result.data_ptr<at::BFloat16>();
    for (size_t i = 0; i < sums.size(); ++i) p[i] = at::BFloat16(sums[i]);
  }
  return result;
}
