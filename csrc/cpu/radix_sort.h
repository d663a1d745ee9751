// Parallel stable LSD radix sort of (key, index) pairs for the CPU kernels (voxelize, patchify).
// Input: n keys (uint32 or uint64) using their low `bits` bits. Output: the keys sorted ascending and
// `order` (int64) holding, for every sorted position, the element's original index (or a given payload),
// equal keys kept in their input order; or (radix_sort_words) packed key|index words sorted by key.
// Work is split into fixed contiguous chunks (chunk_bounds) whose digit counts combine in (digit, chunk)
// order, so the result is the same for any thread count.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "cpu/run_tasks.h"

namespace volt {
namespace cpu {

// Contiguous chunks of a fixed size (never fewer than one): they depend on n only, never on the
// thread count, so per-chunk partial results combine to the same answer on any machine.
constexpr int64_t kChunk = 65536;
inline std::vector<int64_t> chunk_bounds(int64_t n) {
  const int64_t t = std::max<int64_t>(1, (n + kChunk - 1) / kChunk);
  std::vector<int64_t> b(t + 1);
  for (int64_t i = 0; i <= t; ++i) b[i] = std::min(n, i * kChunk);
  return b;
}

// Runs f(chunk_index, begin, end) for every chunk, through run_tasks (threads take chunks from a shared
// counter, so a thread the OS parks on a busy machine does not hold the others up).
template <typename F>
void for_each_chunk(const std::vector<int64_t>& cb, const F& f) {
  run_tasks(int64_t(cb.size()) - 1, [&](int64_t c) { f(c, cb[c], cb[c + 1]); });
}

// Digit counts and offsets (< 2^32: at most 2^31 elements per call). Not int64_t, so that stores of
// 64-bit keys and words cannot alias them and the compiler keeps them out of the scatter's dependencies.
using Count = uint32_t;

template <typename T>
std::unique_ptr<T[]> uninitialized(int64_t n) {
  return std::unique_ptr<T[]>(new T[std::max<int64_t>(n, 1)]);  // default-init: no zeroing pass
}

// Scratch words for one call, taken from a per-thread cache (slot 0 or 1) when n <= kCachedWords.
// Freshly allocated multi-megabyte buffers come back from the OS page by page (faults, zeroing), which
// on some allocator states costs more than the sort itself; the cache keeps at most 2 x 32 MiB per
// calling thread. Larger requests get their own buffer, freed at the end of the call.
class Scratch {
 public:
  static constexpr int64_t kCachedWords = int64_t(1) << 22;
  Scratch(int slot, int64_t n) {
    if (n > kCachedWords) {
      own_ = uninitialized<uint64_t>(n);
      ptr_ = own_.get();
      return;
    }
    thread_local std::unique_ptr<uint64_t[]> cache[2];
    thread_local int64_t size[2] = {0, 0};
    if (size[slot] < n) {
      cache[slot] = uninitialized<uint64_t>(n);
      size[slot] = n;
    }
    ptr_ = cache[slot].get();
  }
  uint64_t* get() const { return ptr_; }

 private:
  std::unique_ptr<uint64_t[]> own_;
  uint64_t* ptr_ = nullptr;
};

// Digit layout: as few passes as possible with digits of at most 11 bits (2048 buckets keep the
// scatter's write streams in cache), the bits spread evenly over the passes.
struct DigitPlan {
  int passes = 0, digit = 0;
  explicit DigitPlan(int bits) {
    passes = (bits + 10) / 11;
    digit = passes ? (bits + passes - 1) / passes : 0;
  }
  int64_t radix() const { return int64_t(1) << digit; }
};

// Sorts keys[0, n) (low `bits` bits) stably. Element i's payload is payload_in[i] when given, else
// first_index + i; payloads must be < 2^32. `tmp` is scratch of n keys. `first_hist`, when given, holds
// the per-chunk counts of the lowest digit (chunks = chunk_bounds(n), layout [chunk][digit]), computed
// by the caller while it wrote the keys. Returns the buffer (keys or tmp) holding the sorted keys;
// `order` receives the payloads in sorted order.
template <typename K>
K* radix_sort(K* keys, K* tmp, int64_t n, int bits, const int64_t* payload_in, int64_t first_index, int64_t* order,
              const std::vector<Count>* first_hist = nullptr) {
  const DigitPlan dp(bits);
  if (dp.passes == 0 || n <= 1) {
    at::parallel_for(0, n, 65536, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) order[i] = payload_in ? payload_in[i] : first_index + i;
    });
    return keys;
  }
  const int64_t radix = dp.radix();
  const auto cb = chunk_bounds(n);
  const int64_t t = int64_t(cb.size()) - 1;
  std::vector<Count> hist = first_hist ? *first_hist : std::vector<Count>(t * radix);
  auto idx_a = uninitialized<uint32_t>(dp.passes > 1 ? n : 0);
  auto idx_b = uninitialized<uint32_t>(dp.passes > 2 ? n : 0);
  K* ksrc = keys;
  K* kdst = tmp;
  uint32_t* isrc = nullptr;
  uint32_t* idst = idx_a.get();
  for (int p = 0; p < dp.passes; ++p) {
    const int shift = p * dp.digit;
    const K mask = K(radix - 1);
    const bool last = p == dp.passes - 1;
    if (p > 0 || !first_hist)
      for_each_chunk(cb, [&](int64_t c, int64_t b, int64_t e) {
        Count* const h = hist.data() + c * radix;
        const K* const src = ksrc;
        const int sh = shift;
        const K mk = mask;
        std::fill(h, h + radix, 0);
        for (int64_t i = b; i < e; ++i) ++h[(src[i] >> sh) & mk];
      });
    // Exclusive scan in (digit, chunk) order: chunk c's items of a digit follow chunk c-1's (stability).
    Count run = 0;
    for (int64_t d = 0; d < radix; ++d)
      for (int64_t c = 0; c < t; ++c) {
        const Count v = hist[c * radix + d];
        hist[c * radix + d] = run;
        run += v;
      }
    // One scatter loop per payload source/destination, so the inner loop has no branches.
    auto scatter = [&](auto payload, auto store) {
      for_each_chunk(cb, [&](int64_t c, int64_t b, int64_t e) {
        // Local copies: the compiler must otherwise assume the key stores may change them.
        Count* const h = hist.data() + c * radix;
        const K* const src = ksrc;
        K* const dst = kdst;
        const int sh = shift;
        const K mk = mask;
        for (int64_t i = b; i < e; ++i) {
          const K k = src[i];
          const int64_t pos = h[(k >> sh) & mk]++;
          dst[pos] = k;
          store(pos, payload(i));
        }
      });
    };
    const uint32_t* const is = isrc;
    uint32_t* const id = idst;
    const auto from_src = [is](int64_t i) { return int64_t(is[i]); };
    const auto from_input = [payload_in](int64_t i) { return payload_in[i]; };
    const auto to_order = [order](int64_t pos, int64_t v) { order[pos] = v; };
    const auto to_idx = [id](int64_t pos, int64_t v) { id[pos] = uint32_t(v); };
    const auto iota = [first_index](int64_t i) { return first_index + i; };
    if (p == 0 && last)
      payload_in ? scatter(from_input, to_order) : scatter(iota, to_order);
    else if (p == 0)
      payload_in ? scatter(from_input, to_idx) : scatter(iota, to_idx);
    else
      last ? scatter(from_src, to_order) : scatter(from_src, to_idx);
    std::swap(ksrc, kdst);
    isrc = idst;
    idst = (idst == idx_a.get()) ? idx_b.get() : idx_a.get();
  }
  return ksrc;
}

// Sorts 64-bit words stably by their bits [lo_bit, hi_bit): the fast path, used when a key and its
// element index fit one word together (key << lo_bit | index), so every pass moves one 8-byte stream.
// `first_hist` as in radix_sort (counts of the lowest digit per chunk). Returns the buffer (w or tmp)
// holding the sorted words.
inline uint64_t* radix_sort_words(uint64_t* w, uint64_t* tmp, int64_t n, int lo_bit, int hi_bit,
                                  const std::vector<Count>* first_hist = nullptr) {
  const DigitPlan dp(hi_bit - lo_bit);
  if (dp.passes == 0 || n <= 1) return w;
  const int64_t radix = dp.radix();
  const auto cb = chunk_bounds(n);
  const int64_t t = int64_t(cb.size()) - 1;
  std::vector<Count> hist = first_hist ? *first_hist : std::vector<Count>(t * radix);
  uint64_t* src = w;
  uint64_t* dst = tmp;
  for (int p = 0; p < dp.passes; ++p) {
    const int sh = lo_bit + p * dp.digit;
    const uint64_t mk = uint64_t(radix - 1);
    if (p > 0 || !first_hist)
      for_each_chunk(cb, [&, src](int64_t c, int64_t b, int64_t e) {
        Count* const h = hist.data() + c * radix;
        std::fill(h, h + radix, 0);
        for (int64_t i = b; i < e; ++i) ++h[(src[i] >> sh) & mk];
      });
    Count run = 0;  // exclusive scan in (digit, chunk) order: stable
    for (int64_t d = 0; d < radix; ++d)
      for (int64_t c = 0; c < t; ++c) {
        const Count v = hist[c * radix + d];
        hist[c * radix + d] = run;
        run += v;
      }
    for_each_chunk(cb, [&, src, dst](int64_t c, int64_t b, int64_t e) {
      Count* const h = hist.data() + c * radix;
      for (int64_t i = b; i < e; ++i) {
        const uint64_t v = src[i];
        dst[h[(v >> sh) & mk]++] = v;
      }
    });
    std::swap(src, dst);
  }
  return src;
}

}  // namespace cpu
}  // namespace volt
