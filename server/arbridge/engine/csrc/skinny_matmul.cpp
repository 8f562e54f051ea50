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
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cstdint>
#include <cstring>
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

// sums[r][j] = x[r] . w_j for R rows of x and two weight rows: each weight vector is
// loaded once for all R rows, each x vector once for both weight rows (2R
// accumulators in registers).
template <int R>
inline void tile(const float* __restrict w0, const float* __restrict w1,
                 const float* __restrict x, int64_t in, float sums[][2]) {
  vfloat a0[R], a1[R];
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = vfloat{};
  int64_t i = 0;
  for (; i + kLanes <= in; i += kLanes) {
    const vfloat v0 = load(w0 + i), v1 = load(w1 + i);
    for (int r = 0; r < R; ++r) {
      const vfloat xv = load(x + r * in + i);
      a0[r] += v0 * xv;
      a1[r] += v1 * xv;
    }
  }
  for (int r = 0; r < R; ++r) {
    float t0 = lane_sum(a0[r]), t1 = lane_sum(a1[r]);
    for (int64_t j = i; j < in; ++j) {
      t0 += w0[j] * x[r * in + j];
      t1 += w1[j] * x[r * in + j];
    }
    sums[r][0] = t0;
    sums[r][1] = t1;
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

constexpr int kRowBlock = 4;  // x rows per tile

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
    std::vector<float> buffer(2 * in);
    float part[kRowBlock][2];
    if (rows == 1) {
      for (int64_t o = begin; o < end; ++o) {
        const float scale = scales ? bf16_to_float(scales[o]) : 1.f;
        sums[o] = dot(widen(weight, in, o, buffer.data()), x, in) * scale;
      }
      return;
    }
    for (int64_t o = begin; o < end; o += 2) {
      const bool pair = o + 1 < end;
      const float* w0 = widen(weight, in, o, buffer.data());
      const float* w1 = pair ? widen(weight, in, o + 1, buffer.data() + in) : w0;
      const float s0 = scales ? bf16_to_float(scales[o]) : 1.f;
      const float s1 = scales && pair ? bf16_to_float(scales[o + 1]) : 1.f;
      for (int64_t r0 = 0; r0 < rows; r0 += kRowBlock) {
        const int64_t count = std::min<int64_t>(kRowBlock, rows - r0);
        const float* xr = x + r0 * in;
        switch (count) {
          case 1: tile<1>(w0, w1, xr, in, part); break;
          case 2: tile<2>(w0, w1, xr, in, part); break;
          case 3: tile<3>(w0, w1, xr, in, part); break;
          default: tile<4>(w0, w1, xr, in, part); break;
        }
        for (int64_t r = 0; r < count; ++r) {
          sums[(r0 + r) * out + o] = part[r][0] * s0;
          if (pair) sums[(r0 + r) * out + o + 1] = part[r][1] * s1;
        }
      }
    }
  });
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
  // x as float32 (for int8: through bfloat16 first, the activations torch's
  // weight-only int8 kernel takes).
  torch::Tensor xf = int8 ? x.to(torch::kBFloat16).to(torch::kFloat32)
                          : x.to(torch::kFloat32).contiguous();
  auto sums = torch::empty({rows, out}, x.options().dtype(torch::kFloat32));
  const float* xp = xf.data_ptr<float>();
  float* sp = sums.data_ptr<float>();
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
  if (int8) return sums.to(torch::kBFloat16).to(x.scalar_type());
  return sums.to(x.scalar_type());
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("skinny_matmul", &skinny_matmul, "x W^T for a few rows, weights read once");
}
