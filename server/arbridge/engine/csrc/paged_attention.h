// Decode attention straight from the KV pool's blocks: one query per row, its keys
// and values read where they lie (block table), once, with no gathered copy.
//
// query  [rows, heads, dim]            float32 or bfloat16 (keys and values alike)
// keys   [blocks, kv_heads, block_tokens, dim]   one layer of the pool, contiguous
// values [blocks, kv_heads, block_tokens, dim]
// tables [rows, max_blocks] int64      each row's blocks, in order
// lengths [rows] int64                 positions each row attends: 0 .. length-1
// -> [rows, heads, dim]
//
// Query head i reads KV head i / (heads / kv_heads), as repeat_interleave does. One
// task per (row, KV head) serves that head's whole query group, so each key and value
// is read once per group. Softmax in float32: max, then exp and sum, then the values.
//
// bfloat16 is computed as SDPA's CPU kernel computes it within one KV split (contexts
// up to 512 tokens): float32 dot products, exp(score - max) rounded to bfloat16
// before it weighs the values, float32 sums, one division by the float32 sum at the
// end, one rounding of the output.
#pragma once
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

// Tokens per task in float32: a row's keys are read in runs of this many, so a few
// rows still make enough tasks for every thread (one task per KV head left a third of
// 2 cores idle with SmolLM2's 3 KV heads), and the partial softmaxes are merged after.
constexpr int64_t kChunkTokens = 128;

template <typename T>
static void attend(const torch::Tensor& query, const torch::Tensor& keys,
                   const torch::Tensor& values, const torch::Tensor& tables,
                   const torch::Tensor& lengths, double scale, torch::Tensor& out) {
  constexpr bool reduced = !std::is_same<T, float>::value;
  const int64_t rows = query.size(0), heads = query.size(1), dim = query.size(2);
  const int64_t kv_heads = keys.size(1), block_tokens = keys.size(2);
  const int64_t max_blocks = tables.size(1), group = heads / kv_heads;
  const T* q = query.data_ptr<T>();
  const T* k = keys.data_ptr<T>();
  const T* v = values.data_ptr<T>();
  const int64_t* table = tables.data_ptr<int64_t>();
  const int64_t* length = lengths.data_ptr<int64_t>();
  T* o = out.data_ptr<T>();
  const float s = static_cast<float>(scale);
  // A head's tokens lie together within a block: one contiguous run per block.
  const int64_t block_stride = kv_heads * block_tokens * dim;
  int64_t longest = 0;
  for (int64_t row = 0; row < rows; ++row) {
    TORCH_CHECK(length[row] >= 1 && length[row] <= max_blocks * block_tokens,
                "length past the block table");
    longest = std::max(longest, length[row]);
  }
  // bfloat16 keeps one task per (row, KV head): it rounds the weights against the
  // row's own maximum, as SDPA does.
  const int64_t chunk = reduced ? longest
                                : std::max(block_tokens, kChunkTokens / block_tokens * block_tokens);
  const int64_t chunks = (longest + chunk - 1) / chunk;
  // Each task's partial softmax per query of its group: maximum, sum, weighted values.
  const int64_t tasks = rows * kv_heads * chunks;
  std::vector<float> part_max(tasks * group), part_sum(tasks * group),
      part_acc(tasks * group * dim);

  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores, qf(group * dim), row_f(dim);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row = task / (kv_heads * chunks), head = task / chunks % kv_heads;
      const int64_t from = task % chunks * chunk, to = std::min(length[row], from + chunk);
      float* pm = part_max.data() + task * group;
      float* ps = part_sum.data() + task * group;
      float* pa = part_acc.data() + task * group * dim;
      if (from >= to) {  // this row is shorter than the longest: nothing here
        std::fill(pm, pm + group, -INFINITY);
        std::fill(ps, ps + group, 0.f);
        std::fill(pa, pa + group * dim, 0.f);
        continue;
      }
      const int64_t n = to - from;
      scores.assign(group * n, 0.f);
      const T* qg = q + (row * heads + head * group) * dim;
      for (int64_t i = 0; i < group * dim; ++i) qf[i] = static_cast<float>(qg[i]);
      // Every token from..to-1, block by block: calls visit(t, token) with that KV
      // head's keys or values of token from + t, in float32. Each block is a run of its
      // own page; the next one is prefetched while this one is read (the hardware's
      // prefetcher stops at page boundaries).
      auto each_token = [&](const T* pool, auto&& visit) {
        auto run_of = [&](int64_t token) {
          return pool + table[row * max_blocks + token / block_tokens] * block_stride +
                 head * block_tokens * dim + token % block_tokens * dim;
        };
        for (int64_t first = from; first < to;) {
          const T* run = run_of(first);
          const int64_t count = std::min(block_tokens - first % block_tokens, to - first);
          const int64_t next = first + count;
          if (next < to) {
            const char* ahead = reinterpret_cast<const char*>(run_of(next));
            const int64_t bytes = std::min(block_tokens, to - next) * dim * sizeof(T);
            for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(ahead + b);
          }
          for (int64_t i = 0; i < count; ++i) {
            if constexpr (reduced) {
              const T* src = run + i * dim;
#pragma omp simd
              for (int64_t d = 0; d < dim; ++d) row_f[d] = static_cast<float>(src[d]);
              visit(first - from + i, row_f.data());
            } else {
              visit(first - from + i, reinterpret_cast<const float*>(run + i * dim));
            }
          }
          first = next;
        }
      };
      // Both passes' keys and values requested at once, block by block: reading them
      // one run at a time left the memory system mostly idle (cold KV, as every decode
      // step finds it after streaming the weights).
      for (int64_t first = from - from % block_tokens; first < to; first += block_tokens) {
        const int64_t offset = table[row * max_blocks + first / block_tokens] * block_stride +
                               head * block_tokens * dim;
        const int64_t bytes = block_tokens * dim * sizeof(T);
        for (int64_t b = 0; b < bytes; b += 64) {
          __builtin_prefetch(reinterpret_cast<const char*>(k + offset) + b);
          __builtin_prefetch(reinterpret_cast<const char*>(v + offset) + b);
        }
      }
      each_token(k, [&](int64_t t, const float* kt) {
        for (int64_t g = 0; g < group; ++g) {
          const float* qh = qf.data() + g * dim;
          float dot = 0.f;
#pragma omp simd reduction(+ : dot)
          for (int64_t d = 0; d < dim; ++d) dot += qh[d] * kt[d];
          scores[g * n + t] = dot * s;
        }
      });
      for (int64_t g = 0; g < group; ++g) {
        float* sg = scores.data() + g * n;
        const float top = *std::max_element(sg, sg + n);
        float sum = 0.f;
#pragma omp simd reduction(+ : sum)
        for (int64_t t = 0; t < n; ++t) {
          sg[t] = std::exp(sg[t] - top);
          sum += sg[t];
        }
        if constexpr (reduced) {  // the weights the values see, rounded
          for (int64_t t = 0; t < n; ++t) sg[t] = static_cast<float>(static_cast<T>(sg[t]));
        }
        pm[g] = top;
        ps[g] = sum;
      }
      std::fill(pa, pa + group * dim, 0.f);
      each_token(v, [&](int64_t t, const float* vt) {
        for (int64_t g = 0; g < group; ++g) {
          const float w = scores[g * n + t];
          float* ag = pa + g * dim;
#pragma omp simd
          for (int64_t d = 0; d < dim; ++d) ag[d] += w * vt[d];
        }
      });
    }
  });
  // Merge each query's chunks: rescale to the overall maximum, divide by the sum once.
  at::parallel_for(0, rows * heads, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(dim);
    for (int64_t qi = begin; qi < end; ++qi) {
      const int64_t row = qi / heads, head = qi % heads / group, g = qi % group;
      const int64_t first = (row * kv_heads + head) * chunks;
      float top = -INFINITY;
      for (int64_t c = 0; c < chunks; ++c) top = std::max(top, part_max[(first + c) * group + g]);
      float sum = 0.f;
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t at = (first + c) * group + g;
        if (part_sum[at] == 0.f) continue;
        const float weight = chunks == 1 ? 1.f : std::exp(part_max[at] - top);
        sum += part_sum[at] * weight;
        const float* pa = part_acc.data() + at * dim;
        for (int64_t d = 0; d < dim; ++d) acc[d] += pa[d] * weight;
      }
      const float inv = 1.f / sum;
      T* oq = o + qi * dim;
      for (int64_t d = 0; d < dim; ++d) oq[d] = static_cast<T>(acc[d] * inv);
    }
  });
}

torch::Tensor paged_decode_attention(const torch::Tensor& query, const torch::Tensor& keys,
                                     const torch::Tensor& values, const torch::Tensor& tables,
                                     const torch::Tensor& lengths, double scale) {
  const auto dtype = query.scalar_type();
  TORCH_CHECK((dtype == torch::kFloat32 || dtype == torch::kBFloat16) &&
              keys.scalar_type() == dtype && values.scalar_type() == dtype,
              "float32 or bfloat16, one dtype throughout");
  TORCH_CHECK(query.is_contiguous() && keys.is_contiguous() && values.is_contiguous() &&
              tables.is_contiguous() && lengths.is_contiguous(), "contiguous inputs only");
  TORCH_CHECK(keys.size(3) == query.size(2) && query.size(1) % keys.size(1) == 0,
              "shapes do not match");
  auto out = torch::empty_like(query);
  if (dtype == torch::kFloat32) {
    attend<float>(query, keys, values, tables, lengths, scale, out);
  } else {
    attend<c10::BFloat16>(query, keys, values, tables, lengths, scale, out);
  }
  return out;
}

// The new tokens' keys and values into their blocks, both in one call (two
// index_puts and their reshapes cost more than the copy at one token a row).
// store [blocks, kv_heads, block_tokens, dim] contiguous; states [rows, kv_heads, q, dim]
// with any strides; blocks, offsets [rows * q]: each new token's block and place.
template <typename T>
static void write_one(torch::Tensor& store, const torch::Tensor& states, const int64_t* block,
                      const int64_t* offset) {
  const int64_t rows = states.size(0), kv_heads = states.size(1), q = states.size(2);
  const int64_t dim = states.size(3), block_tokens = store.size(2);
  const auto st = states.strides();
  T* dst = store.data_ptr<T>();
  const T* src = states.data_ptr<T>();
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t t = 0; t < q; ++t) {
      const int64_t i = r * q + t;
      for (int64_t h = 0; h < kv_heads; ++h) {
        T* to = dst + ((block[i] * kv_heads + h) * block_tokens + offset[i]) * dim;
        const T* from = src + r * st[0] + h * st[1] + t * st[2];
        for (int64_t d = 0; d < dim; ++d) to[d] = from[d * st[3]];
      }
    }
  }
}

void write_kv(torch::Tensor keys, torch::Tensor values, const torch::Tensor& new_keys,
              const torch::Tensor& new_values, const torch::Tensor& blocks,
              const torch::Tensor& offsets) {
  const auto dtype = keys.scalar_type();
  TORCH_CHECK(values.scalar_type() == dtype && new_keys.scalar_type() == dtype &&
              new_values.scalar_type() == dtype, "one dtype throughout");
  TORCH_CHECK(keys.is_contiguous() && values.is_contiguous() && blocks.is_contiguous() &&
              offsets.is_contiguous(), "contiguous stores and indices only");
  TORCH_CHECK(new_keys.dim() == 4 && new_keys.sizes() == new_values.sizes() &&
              new_keys.size(1) == keys.size(1) && new_keys.size(3) == keys.size(3) &&
              blocks.numel() == new_keys.size(0) * new_keys.size(2) &&
              offsets.numel() == blocks.numel(), "shapes do not match");
  const int64_t* block = blocks.data_ptr<int64_t>();
  const int64_t* offset = offsets.data_ptr<int64_t>();
  for (int64_t i = 0; i < blocks.numel(); ++i) {
    TORCH_CHECK(block[i] >= 0 && block[i] < keys.size(0) && offset[i] >= 0 &&
                offset[i] < keys.size(2), "block or offset out of range");
  }
  if (dtype == torch::kFloat32) {
    write_one<float>(keys, new_keys, block, offset);
    write_one<float>(values, new_values, block, offset);
  } else if (dtype == torch::kBFloat16) {
    write_one<c10::BFloat16>(keys, new_keys, block, offset);
    write_one<c10::BFloat16>(values, new_values, block, offset);
  } else {
    TORCH_CHECK(false, "float32 or bfloat16 only");
  }
}

// Rotary position embedding of one head, as the fused decoder writes it in torch:
// x * cos + roll(x, dim / 2) * sin, with the tables already [cos, cos] and [-sin, sin];
// each product rounded to T, then their sum (no fused multiply-add: torch's numbers).
template <typename T>
__attribute__((optimize("fp-contract=off"))) static void rotate(
    const T* __restrict x, const T* __restrict cos, const T* __restrict sin, int64_t dim,
    T* __restrict out) {
  const int64_t half = dim / 2;
  for (int64_t d = 0; d < dim; ++d) {
    const T a = static_cast<T>(static_cast<float>(x[d]) * static_cast<float>(cos[d]));
    const T b = static_cast<T>(static_cast<float>(x[(d + half) % dim]) *
                               static_cast<float>(sin[d]));
    out[d] = static_cast<T>(static_cast<float>(a) + static_cast<float>(b));
  }
}

// A decode pass's attention for one layer in one call, from its fused q/k/v projection:
// rotary on the queries and the new keys, the new keys and values into their blocks,
// then attention as paged_decode_attention. At one stream the dozen torch ops this
// replaces (slices, roll, transposes, copies) cost more than the attention itself.
// fused [rows, q, heads + 2 kv_heads, dim] contiguous; cos, sin [rows, q, 1, dim];
// keys, values, tables, lengths as paged_decode_attention; blocks, offsets as write_kv
// -> [rows, q, heads * dim]
torch::Tensor rotary_decode_attention(const torch::Tensor& fused, const torch::Tensor& cos,
                                      const torch::Tensor& sin, torch::Tensor keys,
                                      torch::Tensor values, const torch::Tensor& blocks,
                                      const torch::Tensor& offsets, const torch::Tensor& tables,
                                      const torch::Tensor& lengths, int64_t heads,
                                      double scale) {
  const auto dtype = fused.scalar_type();
  TORCH_CHECK(fused.dim() == 4 && fused.is_contiguous() && cos.is_contiguous() &&
              sin.is_contiguous() && cos.scalar_type() == dtype && sin.scalar_type() == dtype,
              "contiguous fused [rows, q, heads + 2 kv_heads, dim] and tables of its dtype");
  const int64_t rows = fused.size(0), q = fused.size(1), dim = fused.size(3);
  const int64_t kv_heads = keys.size(1);
  TORCH_CHECK(fused.size(2) == heads + 2 * kv_heads && dim % 2 == 0 &&
              cos.numel() == rows * q * dim && sin.numel() == cos.numel(),
              "fused heads or rotary tables do not match");
  auto query = torch::empty({rows * q, heads, dim}, fused.options());
  auto new_keys = torch::empty({rows, q, kv_heads, dim}, fused.options());
  auto turn = [&](auto zero) {
    using T = decltype(zero);
    const T* f = fused.data_ptr<T>();
    const T* c = cos.data_ptr<T>();
    const T* s = sin.data_ptr<T>();
    T* qo = query.data_ptr<T>();
    T* ko = new_keys.data_ptr<T>();
    const int64_t width = heads + 2 * kv_heads;
    for (int64_t i = 0; i < rows * q; ++i) {
      for (int64_t h = 0; h < heads + kv_heads; ++h) {
        T* out = h < heads ? qo + (i * heads + h) * dim : ko + (i * kv_heads + h - heads) * dim;
        rotate<T>(f + (i * width + h) * dim, c + i * dim, s + i * dim, dim, out);
      }
    }
  };
  if (dtype == torch::kFloat32) {
    turn(0.f);
  } else {
    TORCH_CHECK(dtype == torch::kBFloat16, "float32 or bfloat16 only");
    turn(c10::BFloat16());
  }
  const auto new_values = fused.narrow(2, heads + kv_heads, kv_heads).transpose(1, 2);
  write_kv(keys, values, new_keys.transpose(1, 2), new_values, blocks, offsets);
  return paged_decode_attention(query, keys, values, tables, lengths, scale)
      .view({rows, q, heads * dim});
}
