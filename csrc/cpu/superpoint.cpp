// CPU kernel of volt::felzenszwalb (schema in csrc/volt.cpp; semantics = felzenszwalb_reference in
// volt/ops/superpoint.py, which the result must equal exactly).
// Input: edges (E,2) int64 vertex pairs (E < 2^32), weights (E,) float32, num_vertices N, k_thresh,
// seg_min_verts. Output: (N,) int64 segment ids 0..S-1, numbered by each segment's smallest vertex.
// Algorithm: edges sorted by (weight, edge index) with NaN last, via one sort of 64-bit words
// (order-preserving weight bits << 32 | index) with the stable radix sort of cpu/radix_sort.h;
// Felzenszwalb's merge with float32 thresholds w + c / size; a second pass over the same order joins
// segments below seg_min_verts. Union-find is inherently sequential, so there is neither a parallel loop
// here nor a CUDA kernel.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "cpu/radix_sort.h"

namespace volt {
namespace cpu {
namespace {

using at::Tensor;

// Order-preserving map of a float32 weight to uint32: -0 reads as +0, every NaN sorts after +Inf.
inline uint32_t weight_key(float w) {
  if (std::isnan(w)) return std::numeric_limits<uint32_t>::max();
  if (w == 0.0f) w = 0.0f;
  uint32_t bits;
  std::memcpy(&bits, &w, sizeof(bits));
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

struct DisjointSets {
  std::vector<int64_t> parent, size;
  explicit DisjointSets(int64_t n) : parent(n), size(n, 1) { std::iota(parent.begin(), parent.end(), int64_t(0)); }
  int64_t find(int64_t x) {
    int64_t root = x;
    while (parent[root] != root) root = parent[root];
    while (parent[x] != root) {  // path compression
      const int64_t next = parent[x];
      parent[x] = root;
      x = next;
    }
    return root;
  }
  int64_t join(int64_t a, int64_t b) {  // union by size; returns the new root
    if (size[a] < size[b]) std::swap(a, b);
    parent[b] = a;
    size[a] += size[b];
    return a;
  }
};

// Edges per call: an edge's index must fit the low 32 bits of its sort word.
constexpr int64_t kMaxEdges = (int64_t(1) << 32) - 1;

// Sorted edge order: indices by (weight key, index), from one word per edge (E <= kMaxEdges); the radix
// sort of the words' high 32 bits is stable, and the words start in index order, so ties stay in index order.
std::vector<int64_t> sorted_edges(const float* w, int64_t E) {
  std::vector<uint64_t> words(E);
  for (int64_t i = 0; i < E; ++i) words[i] = (uint64_t(weight_key(w[i])) << 32) | uint64_t(i);
  std::vector<uint64_t> tmp(E);
  const uint64_t* sorted = radix_sort_words(words.data(), tmp.data(), E, 32, 64);
  std::vector<int64_t> order(E);
  for (int64_t i = 0; i < E; ++i) order[i] = int64_t(sorted[i] & 0xFFFFFFFFull);
  return order;
}

Tensor felzenszwalb_cpu(const Tensor& edges_in, const Tensor& weights_in, int64_t num_vertices, double k_thresh,
                        int64_t seg_min_verts) {
  TORCH_CHECK_VALUE(edges_in.dim() == 2 && edges_in.size(1) == 2 && edges_in.scalar_type() == at::kLong,
                    "volt::felzenszwalb: edges must be an int64 (E, 2) tensor, got ", edges_in.scalar_type(), " ",
                    edges_in.sizes());
  TORCH_CHECK_VALUE(weights_in.dim() == 1 && weights_in.size(0) == edges_in.size(0) &&
                        weights_in.scalar_type() == at::kFloat,
                    "volt::felzenszwalb: weights must be float32 (", edges_in.size(0), ",), got ",
                    weights_in.scalar_type(), " ", weights_in.sizes());
  TORCH_CHECK_VALUE(num_vertices >= 0, "volt::felzenszwalb: num_vertices must be >= 0, got ", num_vertices);
  TORCH_CHECK_VALUE(edges_in.size(0) <= kMaxEdges, "volt::felzenszwalb: at most 2^32 - 1 edges per call (the edge ",
                    "sort packs an edge's index into 32 bits), got ", edges_in.size(0),
                    "; split the graph or sparsify its edges");
  const Tensor edges = edges_in.contiguous();
  const Tensor weights = weights_in.contiguous();
  const int64_t E = edges.size(0), N = num_vertices;
  const int64_t* e = edges.const_data_ptr<int64_t>();
  const float* w = weights.const_data_ptr<float>();
  for (int64_t i = 0; i < 2 * E; ++i)
    TORCH_CHECK_VALUE(e[i] >= 0 && e[i] < N, "volt::felzenszwalb: edge ", i / 2, " names vertex ", e[i],
                      " but the graph has ", N, " vertices");

  const std::vector<int64_t> order = sorted_edges(w, E);
  const float c = float(k_thresh);
  DisjointSets sets(N);
  std::vector<float> thresh(N, c);
  for (const int64_t i : order) {
    const int64_t a = sets.find(e[2 * i]), b = sets.find(e[2 * i + 1]);
    const float wi = w[i] == 0.0f ? 0.0f : w[i];
    if (a != b && wi <= thresh[a] && wi <= thresh[b]) {
      const int64_t r = sets.join(a, b);
      thresh[r] = wi + c / float(sets.size[r]);  // float32 arithmetic, as the reference
    }
  }
  for (const int64_t i : order) {
    const int64_t a = sets.find(e[2 * i]), b = sets.find(e[2 * i + 1]);
    if (a != b && (sets.size[a] < seg_min_verts || sets.size[b] < seg_min_verts)) sets.join(a, b);
  }
  // Number segments by their first vertex.
  Tensor out = at::empty({N}, edges.options());
  int64_t* ids = out.data_ptr<int64_t>();
  std::vector<int64_t> label(N, -1);
  int64_t next = 0;
  for (int64_t v = 0; v < N; ++v) {
    const int64_t r = sets.find(v);
    if (label[r] < 0) label[r] = next++;
    ids[v] = label[r];
  }
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace volt

TORCH_LIBRARY_IMPL(volt, CPU, m) { m.impl("felzenszwalb", &volt::cpu::felzenszwalb_cpu); }
