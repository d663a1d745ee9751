// The one place listing volt's operators: schemas only. Kernels register per device in
// csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA) with TORCH_LIBRARY_IMPL(volt, <Device>, m).
#include <Python.h>
#include <torch/library.h>

// Importing `volt._C` loads this library, whose static initializers register the ops below.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}

TORCH_LIBRARY(volt, m) {
  // >>> voxelize / patchify (volt/ops/voxelize.py, volt/ops/patchify.py)
  m.def("voxelize(Tensor coord, Tensor offset, Tensor grid_size, int? seed, bool with_order) -> "
        "(Tensor grid_coord, Tensor inverse, Tensor count, Tensor voxel_offset, Tensor order, Tensor pick)");
  m.def("patchify(Tensor grid_coord, Tensor scene, int num_scenes, int patch_size) -> "
        "(Tensor patch_coord, Tensor token_scene, Tensor voxel2token, Tensor slot, Tensor cu_seqlens)");
  // <<< voxelize / patchify
  // >>> sparse convolution (volt/ops/kernel_map.py, volt/ops/sparse_conv.py); offsets are CPU int64 (K+1)
  m.def("submanifold_map(Tensor coords, int[3] kernel_size) -> (Tensor in_idx, Tensor out_idx, Tensor offsets)");
  m.def("downsample_map(Tensor coords, int[3] kernel_size, int[3] stride) -> "
        "(Tensor out_coords, Tensor in_idx, Tensor out_idx, Tensor offsets)");
  m.def("sparse_conv_forward(Tensor feat, Tensor weight, Tensor in_idx, Tensor out_idx, Tensor offsets, "
        "int num_out) -> Tensor");
  m.def("sparse_conv_weight_grad(Tensor feat, Tensor grad_out, Tensor in_idx, Tensor out_idx, Tensor offsets) "
        "-> Tensor");
  // <<< sparse convolution
  // >>> slot-wise products of the tokenizer/detokenizer (volt/ops/slot_matmul.py); CPU only (CUDA runs torch's
  // dense products); groups/blocks are CPU int64
  m.def("slot_plan(Tensor voxel2token, Tensor slot, int num_tokens, int num_slots) -> "
        "(Tensor order, Tensor token, Tensor groups, Tensor blocks)");
  m.def("slot_matmul(Tensor x, Tensor weight, Tensor? bias, Tensor order, Tensor token, Tensor groups, "
        "Tensor blocks, int num_out, bool to_tokens) -> Tensor");
  m.def("slot_outer(Tensor a, Tensor b, Tensor order, Tensor token, Tensor groups, int num_slots, bool a_is_token) "
        "-> Tensor");
  // <<< slot-wise products
  // >>> superpoints (volt/ops/superpoint.py); CPU only: union-find is sequential
  m.def("felzenszwalb(Tensor edges, Tensor weights, int num_vertices, float k_thresh, int seg_min_verts) -> Tensor");
  // <<< superpoints
}
