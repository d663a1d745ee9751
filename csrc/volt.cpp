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
  // Filled by the kernels: m.def("voxelize(...) -> (...)"); ...
}
