// RMSNorm over the last dimension in one call: y = x * rsqrt(mean(x^2) + eps) * weight.
//
// torch runs F.rms_norm on the CPU as about eight ops (pow, mean, add, rsqrt, mul, ...)
// and the bfloat16 LlamaRMSNorm as eight more; a decode step at one row calls it
// 2 x layers + 1 times, and there the ops, not the arithmetic, are the cost (measured
// 22 us a call under the profiler, against a few hundred nanoseconds of work).
//
// x       [..., hidden]  float32, or bfloat16 (then the statistics in float32 and the
//                        scaled row rounded to bfloat16 before the weight multiplies
//                        it, as transformers' LlamaRMSNorm does)
// weight  [hidden]       x's dtype
// The mean is summed in another order than torch's, so results agree to rounding.
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>

namespace {

template <typename T>
void norm_rows(const T* x, const T* weight, T* y, int64_t rows, int64_t hidden, float eps) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* xr = x + r * hidden;
      T* yr = y + r * hidden;
      float squares = 0.f;
      for (int64_t i = 0; i < hidden; ++i) {
        const float v = static_cast<float>(xr[i]);
        squares += v * v;
      }
      const float scale = 1.f / std::sqrt(squares / static_cast<float>(hidden) + eps);
      for (int64_t i = 0; i < hidden; ++i) {
        // float32: (x * scale) * w, torch's order; bfloat16: the scaled row rounded
        // to bfloat16, then times the weight and rounded again.
        const T scaled = static_cast<T>(static_cast<float>(xr[i]) * scale);
        yr[i] = static_cast<T>(static_cast<float>(scaled) * static_cast<float>(weight[i]));
      }
    }
  });
}

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  TORCH_CHECK(x.scalar_type() == weight.scalar_type() &&
              (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16),
              "float32 or bfloat16 x and weight of one dtype");
  const int64_t hidden = x.size(-1);
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == hidden, "weight [hidden] expected");
  const torch::Tensor xc = x.contiguous(), wc = weight.contiguous();
  auto y = torch::empty_like(xc);
  const int64_t rows = hidden ? xc.numel() / hidden : 0;
  if (x.scalar_type() == torch::kFloat32) {
    norm_rows<float>(xc.data_ptr<float>(), wc.data_ptr<float>(), y.data_ptr<float>(), rows,
                     hidden, static_cast<float>(eps));
  } else {
    norm_rows<at::BFloat16>(xc.data_ptr<at::BFloat16>(), wc.data_ptr<at::BFloat16>(),
                            y.data_ptr<at::BFloat16>(), rows, hidden, static_cast<float>(eps));
  }
  return y;
}
