// ArBridge's CPU kernels, one module built for this machine (native_kernels.py).
//
// The headers beside this file are its parts, each one kernel and the reasons for
// it; they are compiled here as one unit, so the decoder-layer loop
// (decoder_layers.h) calls the others directly, and a fresh machine waits for one
// compiler run before SERVING, not four.
#include "decoder_layers.h"
#include "int8_activations.h"
#include "paged_attention.h"
#include "rms_norm.h"
#include "skinny_matmul.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("skinny_matmul", &skinny_matmul, "x W^T for a few rows, weights read once");
  m.def("int8_activations_matmul", &int8_activations_matmul,
        "x W^T for a few rows, int8 weights and int8 activations (VNNI where the CPU has it)");
  m.def("rms_norm", &rms_norm, "x * rsqrt(mean(x^2) + eps) * weight over the last dim");
  m.def("rotary_decode_attention", &rotary_decode_attention,
        "rotary, KV write and decode attention of one layer from its fused q/k/v (CPU)");
  m.def("write_kv", &write_kv, "new keys and values into their KV pool blocks (CPU)");
  m.def("paged_decode_attention", &paged_decode_attention,
        "decode attention over KV pool blocks (float32 or bfloat16, CPU)");
  pybind11::class_<DecoderLayers>(m, "DecoderLayers")
      .def(pybind11::init<int64_t, int64_t, int64_t, double>())
      .def("add_layer", &DecoderLayers::add_layer)
      // With the GIL held, as every kernel call: released, the event loop's work ran on
      // the two cores the step's threads use (one storm-bench run each: the storm 133 s
      // held against 160 s released, the bystander's first token 0.81 against 1.23 s).
      .def("forward", &DecoderLayers::forward,
           "every decoder layer of a decode pass, from the embeddings");
}
