// Task runner shared by the CPU kernels (radix_sort.h for_each_chunk: voxelize, patchify; kernel_map.cpp,
// csrc/cpu/sparse_conv.cpp, csrc/cpu/slot_matmul.cpp).
// run_tasks(n, f) calls f(task) once for every task in [0, n). Threads take the next free task from a
// counter, so a thread the OS delays does not stall the others; callers keep results independent of the
// thread count by making each task's work fixed. Runs serially with one thread or inside a parallel region.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace volt {
namespace cpu {

template <typename F>
void run_tasks(int64_t n, const F& f) {
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), n);
  if (threads <= 1 || at::in_parallel_region()) {
    for (int64_t t = 0; t < n; ++t) f(t);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t t = next++; t < n; t = next++) f(t);
  });
}

}  // namespace cpu
}  // namespace volt
