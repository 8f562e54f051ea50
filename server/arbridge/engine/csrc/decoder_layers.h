// Every decoder layer of a Llama-family decode pass in one call from Python.
//
// At one stream a decode step of SmolLM2 is 30 layers x ~8 kernel calls, and each
// call from Python (dispatch, views, the Projection's choice of kernel, small torch
// ops for the residual adds and SwiGLU) cost about 2 of the 9 ms an int8 step took
// (measured: the step's kernels replayed alone in 6.9 ms). This file runs the same
// kernels, in the same order, with the same roundings, from one C++ loop:
//
//   h = rms_norm(x);  q,k,v = qkv(h);  a = rotary + KV write + paged attention
//   x = x + out(a);   h = rms_norm(x); x = x + down(silu(gate(h)) * up(h))
//
// so its results are the fused decoder's, bit for bit (a test compares them). The
// projections are the few-row kernel's (skinny_matmul.cpp) on the weights the fused
// decoder holds; the residual adds and SwiGLU are torch's own ops, called from here.
// Layers with anything else (Qwen3's q/k norms, experts) keep the Python path.
#pragma once
#include "int8_activations.h"
#include "paged_attention.h"
#include "rms_norm.h"
#include "skinny_matmul.h"

#include <vector>

namespace {

// y = x W^T (+ b) as the fused decoder's Projection runs it through the few-row
// kernels: float32/bfloat16 weights, or int8 rows with one bfloat16 scale each (and
// then the activations bfloat16, or int8 with `int8_activations`).
struct Linear {
  torch::Tensor weight;
  c10::optional<torch::Tensor> scales;
  c10::optional<torch::Tensor> bias;
  bool int8_activations;

  torch::Tensor operator()(const torch::Tensor& x) const {
    auto y = int8_activations ? int8_activations_matmul(x, weight, *scales)
                              : skinny_matmul(x, weight, scales);
    return bias ? y + *bias : y;
  }
};

struct Layer {
  torch::Tensor attn_norm, mlp_norm;
  Linear qkv, out, gate_up, down;
};

}  // namespace

class DecoderLayers {
 public:
  DecoderLayers(int64_t heads, int64_t kv_heads, int64_t head_dim, double eps)
      : heads_(heads), kv_heads_(kv_heads), head_dim_(head_dim), eps_(eps) {}

  // One layer: its two norm weights, then per projection (qkv, out, gate_up, down)
  // its weight, scales (int8), bias and whether its activations go in as int8.
  void add_layer(torch::Tensor attn_norm, torch::Tensor mlp_norm,
                 const std::vector<c10::optional<torch::Tensor>>& operands,
                 const std::vector<bool>& int8_activations) {
    TORCH_CHECK(operands.size() == 12 && int8_activations.size() == 4 && operands[0] &&
                operands[3] && operands[6] && operands[9],
                "four projections of (weight, scales, bias) expected");
    Linear linear[4];
    for (int p = 0; p < 4; ++p) {
      linear[p] = Linear{*operands[3 * p], operands[3 * p + 1], operands[3 * p + 2],
                         int8_activations[p]};
      TORCH_CHECK(!int8_activations[p] || linear[p].scales, "int8 activations need int8 weights");
    }
    TORCH_CHECK(linear[0].weight.size(0) == (heads_ + 2 * kv_heads_) * head_dim_ &&
                linear[2].weight.size(0) % 2 == 0, "qkv or gate_up rows do not match the heads");
    layers_.push_back(Layer{attn_norm, mlp_norm, linear[0], linear[1], linear[2], linear[3]});
  }

  // x [rows, q, hidden] (the embeddings); cos, sin [rows, q, 1, dim]; kv: the pool's
  // data [layers, 2, blocks, kv_heads, block_tokens, dim]; blocks, offsets, tables,
  // lengths as PagedKVCache prepares them -> x after the last layer.
  torch::Tensor forward(torch::Tensor x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const torch::Tensor& kv, const torch::Tensor& blocks,
                        const torch::Tensor& offsets, const torch::Tensor& tables,
                        const torch::Tensor& lengths) const {
    TORCH_CHECK(x.dim() == 3 && kv.dim() == 6 && kv.size(0) == static_cast<int64_t>(layers_.size()),
                "x [rows, q, hidden] and a KV pool of one entry per layer expected");
    const int64_t rows = x.size(0), q = x.size(1), hidden = x.size(2);
    const int64_t tokens = rows * q;
    const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim_));
    x = x.contiguous();
    for (size_t i = 0; i < layers_.size(); ++i) {
      const Layer& layer = layers_[i];
      const auto store = kv.select(0, static_cast<int64_t>(i));
      auto h = rms_norm(x, layer.attn_norm, eps_).view({tokens, hidden});
      const auto fused = layer.qkv(h).view({rows, q, heads_ + 2 * kv_heads_, head_dim_});
      const auto attended = rotary_decode_attention(fused, cos, sin, store.select(0, 0),
                                                    store.select(0, 1), blocks, offsets, tables,
                                                    lengths, heads_, scale);
      x = x + layer.out(attended.view({tokens, heads_ * head_dim_})).view({rows, q, hidden});
      h = rms_norm(x, layer.mlp_norm, eps_).view({tokens, hidden});
      const auto gate_up = layer.gate_up(h).chunk(2, -1);
      const auto act = at::silu(gate_up[0]) * gate_up[1];
      x = x + layer.down(act).view({rows, q, hidden});
    }
    return x;
  }

 private:
  int64_t heads_, kv_heads_, head_dim_;
  double eps_;
  std::vector<Layer> layers_;
};
