// Definitions shared by the CPU and CUDA kernels of volt::voxelize and volt::patchify: the voxel-key
// packing, the floor and random-pick rules (mirrored bit for bit by volt/ops/*.py), and the host-side
// input checks and per-scene key plan. Every rule here has a twin in the pure-PyTorch reference.
#pragma once

#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#ifdef __CUDACC__
#define VOLT_HD __host__ __device__ __forceinline__
#else
#define VOLT_HD inline
#endif

namespace volt {

// Canonical voxel key: 21 bits per axis, x most significant. Sorting by it is sorting (x, y, z)
// lexicographically. Kernels may pack each scene with fewer bits per axis (just enough for its
// extent); that keeps the same order, so the voxel order is the same on every backend.
constexpr int kAxisBits = 21;
constexpr int64_t kAxisLimit = int64_t(1) << kAxisBits;  // voxels per axis per scene, exclusive

// Patch sizes P below 2^21 keep the slot count P^3 within int64.
constexpr int64_t kPatchLimit = int64_t(1) << 21;

VOLT_HD int64_t pack_key(int64_t x, int64_t y, int64_t z) {
  return (x << (2 * kAxisBits)) | (y << kAxisBits) | z;
}

// Number of bits needed to store values 0..n-1 (0 for n <= 1).
inline int bits_for(uint64_t n) {
  int b = 0;
  while (b < 64 && (n - 1) >> b) ++b;
  return n <= 1 ? 0 : b;
}

// Random pick inside voxel v (count points): pick_offset = scale_pick(pick_bits32(seed, v), count), the
// top 32 bits of the v-th output of splitmix64 seeded with `seed`, scaled to [0, count) by a multiply and
// shift (count < 2^31). The two halves are apart so a kernel can compute the bits of many voxels ahead
// (a loop that vectorizes). The reference computes the same integers.
VOLT_HD uint64_t splitmix64(uint64_t seed, uint64_t v) {
  uint64_t z = seed + (v + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
VOLT_HD uint32_t pick_bits32(uint64_t seed, uint64_t v) { return uint32_t(splitmix64(seed, v) >> 32); }
VOLT_HD int64_t scale_pick(uint32_t bits, int64_t count) { return int64_t((uint64_t(bits) * uint64_t(count)) >> 32); }
VOLT_HD int64_t pick_offset(uint64_t seed, uint64_t v, int64_t count) {
  return scale_pick(pick_bits32(seed, v), count);
}

// floor(x) of a finite x with arithmetic only (no branch, no SSE4.1 round instruction), so loops over
// it vectorize. Values of magnitude >= 2^mantissa are integers already and are kept as they are.
template <typename T>
inline T floor_fast(T x) {  // host only (CUDA uses floor)
  constexpr T big = sizeof(T) == 4 ? T(8388608.0) : T(4503599627370496.0);
  const T a = std::fabs(x);
  const T keep = T(a < big);  // 1 where rounding through `big` is exact
  const T r = std::copysign((a + big) - big, x) * keep + x * (T(1) - keep);  // x rounded to nearest
  return r - T(r > x);
}

// Python-style floor division and modulo (patch index and in-patch offset of negative coordinates).
VOLT_HD int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (q * b != a && ((a < 0) != (b < 0))) ? q - 1 : q;
}
VOLT_HD int64_t floor_mod(int64_t a, int64_t b) { return a - floor_div(a, b) * b; }

// ---- host-side checks and the per-scene key plan (used before launching any kernel) ----------------

// Offsets are cumulative end indices: non-decreasing, >= 0, the last one equal to n.
inline void check_offsets(const int64_t* off, int64_t num_scenes, int64_t n, const char* what) {
  int64_t prev = 0;
  for (int64_t s = 0; s < num_scenes; ++s) {
    TORCH_CHECK_VALUE(off[s] >= prev, "volt: offset must be non-decreasing cumulative end indices of the ", what,
                      ", but offset[", s, "] = ", off[s], " < ", prev);
    prev = off[s];
  }
  TORCH_CHECK_VALUE(prev == n, "volt: offset[-1] must equal the number of ", what, " (", n, "), got ",
                    num_scenes ? std::to_string(prev) : std::string("an empty offset"));
}

template <typename scalar_t>
void check_grid_sizes(const scalar_t* gs, int64_t num_scenes) {
  for (int64_t s = 0; s < num_scenes; ++s)
    TORCH_CHECK_VALUE(std::isfinite(double(gs[s])) && gs[s] > 0, "volt: grid_size must be finite and > 0, got ",
                      double(gs[s]), " for scene ", s);
}

// How one scene's voxels are packed into the sort key: bits per axis and the scene's key base.
struct ScenePack {
  int bx = 0, by = 0, bz = 0;  // bits per axis (0 when the scene is one voxel thick)
  uint64_t base = 0;           // key of the scene's min corner in the batch-wide key space
};

struct VoxelPlan {
  std::vector<ScenePack> scenes;
  bool single_word = true;  // all scenes fit one uint64 key space (else: sort by local key, then scene)
  int key_bits = 0;         // bits of the batch-wide key (single word) or of the largest local key
  int scene_bits = 0;       // bits of the scene id (two-word mode)
};

// lo/hi: per-scene min/max of floor(coord / grid_size), B x 3, already known to be from finite coords.
// Raises ValueError when a scene's extent overflows the 21-bit-per-axis key.
template <typename scalar_t>
VoxelPlan make_voxel_plan(const scalar_t* lo, const scalar_t* hi, const int64_t* off, int64_t num_scenes,
                          const scalar_t* gs) {
  VoxelPlan plan;
  plan.scenes.resize(num_scenes);
  unsigned __int128 total = 0;  // size of the batch-wide key space: sum over scenes of 2^local_bits
  int max_local = 0;
  int64_t prev = 0;
  for (int64_t s = 0; s < num_scenes; ++s) {
    ScenePack& p = plan.scenes[s];
    p.base = uint64_t(total);  // meaningful only while total <= 2^64 (single-word mode)
    const bool empty = off[s] == prev;
    prev = off[s];
    if (empty) continue;
    int bits[3];
    for (int a = 0; a < 3; ++a) {
      // Exact in double whenever the true extent is below 2^21 (a representable integer).
      const double ext = double(hi[s * 3 + a]) - double(lo[s * 3 + a]);
      TORCH_CHECK_VALUE(ext < double(kAxisLimit), "volt: scene ", s, " spans ", ext, " grid cells along axis ",
                        "xyz"[a], " (grid_size ", double(gs[s]), "); the voxel key holds at most ", kAxisLimit,
                        " per axis: use a larger grid_size or split the scene");
      bits[a] = bits_for(uint64_t(ext) + 1);
    }
    p.bx = bits[0];
    p.by = bits[1];
    p.bz = bits[2];
    const int local = bits[0] + bits[1] + bits[2];  // <= 63
    max_local = local > max_local ? local : max_local;
    total += (unsigned __int128)1 << local;
  }
  const unsigned __int128 one = 1;
  plan.single_word = total <= (one << 64);
  plan.scene_bits = bits_for(uint64_t(num_scenes));
  if (!plan.single_word)
    plan.key_bits = max_local;
  else
    plan.key_bits = total > (one << 63) ? 64 : bits_for(uint64_t(total));
  return plan;
}

}  // namespace volt
