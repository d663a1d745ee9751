// Top-digit-first radix sort of packed key|index words for the CPU voxelize kernel (the sort behind
// csrc/cpu/voxelize.cpp in word mode). Input: n 64-bit words, to be sorted by their bits [lo_bit, hi_bit).
// Output: the words in stable sorted order, in one of the two given buffers. One parallel scatter over
// memory by the top digit, then each bucket is sorted by the remaining bits while it sits in a core's
// cache: fewer passes over memory than radix_sort_words (LSD), which keeps its other callers.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "common.h"
#include "cpu/radix_sort.h"
#include "cpu/run_tasks.h"

namespace volt {
namespace cpu {

// Digit layout of radix_sort_words_top: a top digit of at most 8 bits (one parallel pass over memory;
// 256 write streams scatter fast, wider digits measured slower) leaving about 2^11 or more words per
// bucket, then the remaining low bits in passes of at most 9 bits inside each bucket (a 1M-point room at
// 2 cm: 26 key bits = 8 + 2 x 9).
struct TopPlan {
  int top = 0, low_passes = 0, low_digit = 0;
  TopPlan(int bits, int64_t n) {
    top = std::min({bits, 8, std::max(1, bits_for(uint64_t(n >> 11) + 1))});  // bits of n >> 11
    const int rest = bits - top;
    low_passes = (rest + 8) / 9;
    low_digit = low_passes ? (rest + low_passes - 1) / low_passes : 0;  // <= kMaxLowDigit
  }
  static constexpr int kMaxLowDigit = 9;
};

// Stable LSD sort of the words src[0, m) by bits [lo_bit, lo_bit + passes * digit), by one thread, into
// dst when `passes` is odd, else back into src (the other buffer is scratch). `h` holds 2 << digit counts.
// Meant for cache-sized buckets: each scatter also counts the next pass's digit; tiny buckets get an
// insertion sort.
inline void sort_bucket(uint64_t* src, uint64_t* dst, int64_t m, int lo_bit, int digit, int passes, Count* h) {
  const int64_t radix = int64_t(1) << digit;
  const uint64_t mk = uint64_t(radix - 1);
  if (m <= 32) {
    const int kb = passes * digit;
    const uint64_t key_mask = kb >= 64 ? ~uint64_t(0) : (uint64_t(1) << kb) - 1;
    for (int64_t i = 1; i < m; ++i) {
      const uint64_t v = src[i], kv = (v >> lo_bit) & key_mask;
      int64_t j = i;
      for (; j > 0 && ((src[j - 1] >> lo_bit) & key_mask) > kv; --j) src[j] = src[j - 1];
      src[j] = v;
    }
    if (passes % 2) std::copy(src, src + m, dst);
    return;
  }
  Count* cur = h;
  Count* nxt = h + radix;
  std::fill(cur, cur + radix, 0);
  for (int64_t i = 0; i < m; ++i) ++cur[(src[i] >> lo_bit) & mk];
  for (int p = 0; p < passes; ++p) {
    Count run = 0;
    for (int64_t d = 0; d < radix; ++d) {
      const Count v = cur[d];
      cur[d] = run;
      run += v;
    }
    const int sh = lo_bit + p * digit;
    if (p + 1 < passes) {
      std::fill(nxt, nxt + radix, 0);
      for (int64_t i = 0; i < m; ++i) {
        const uint64_t v = src[i];
        dst[cur[(v >> sh) & mk]++] = v;
        ++nxt[(v >> (sh + digit)) & mk];
      }
    } else {
      for (int64_t i = 0; i < m; ++i) {
        const uint64_t v = src[i];
        dst[cur[(v >> sh) & mk]++] = v;
      }
    }
    std::swap(src, dst);
    std::swap(cur, nxt);
  }
}

// Same contract as radix_sort_words, but top digit first: one parallel stable scatter by the top digit
// (first_hist, when given, holds its per-chunk counts, layout [chunk][digit]), then every bucket is
// sorted by the remaining bits on its own while it sits in cache (buckets in parallel; a bucket too big
// for a cache is sorted by radix_sort_words over all threads). The result does not depend on the thread
// count: the scatter combines chunk counts in a fixed order and each bucket's sort is sequential.
inline uint64_t* radix_sort_words_top(uint64_t* w, uint64_t* tmp, int64_t n, int lo_bit, int hi_bit,
                                      const std::vector<Count>* first_hist = nullptr) {
  const TopPlan tp(hi_bit - lo_bit, n);
  if (tp.top == 0 || n <= 1) return w;
  const int64_t radix = int64_t(1) << tp.top;
  const int sh = hi_bit - tp.top;
  const uint64_t mk = uint64_t(radix - 1);
  const auto cb = chunk_bounds(n);
  const int64_t t = int64_t(cb.size()) - 1;
  std::vector<Count> hist = first_hist ? *first_hist : std::vector<Count>(t * radix);
  if (!first_hist)
    for_each_chunk(cb, [&](int64_t c, int64_t b, int64_t e) {
      Count* const h = hist.data() + c * radix;
      std::fill(h, h + radix, 0);
      for (int64_t i = b; i < e; ++i) ++h[(w[i] >> sh) & mk];
    });
  std::vector<int64_t> bucket(radix + 1);
  Count run = 0;  // exclusive scan in (digit, chunk) order: stable
  for (int64_t d = 0; d < radix; ++d) {
    bucket[d] = run;
    for (int64_t c = 0; c < t; ++c) {
      const Count v = hist[c * radix + d];
      hist[c * radix + d] = run;
      run += v;
    }
  }
  bucket[radix] = n;
  for_each_chunk(cb, [&](int64_t c, int64_t b, int64_t e) {
    Count* const h = hist.data() + c * radix;
    uint64_t* const dst = tmp;
    const uint64_t* const src = w;
    for (int64_t i = b; i < e; ++i) {
      const uint64_t v = src[i];
      dst[h[(v >> sh) & mk]++] = v;
    }
  });
  if (tp.low_passes == 0) return tmp;
  uint64_t* const out = tp.low_passes % 2 ? w : tmp;  // where every bucket's sorted words land
  // Buckets past a core's cache (2 MiB), or big enough to leave a thread idle, use all threads.
  const int64_t kBig = std::max(kChunk, std::min(int64_t(1) << 18, n / 4));
  for (int64_t d = 0; d < radix; ++d) {
    const int64_t b = bucket[d], m = bucket[d + 1] - b;
    if (m <= kBig) continue;
    const uint64_t* r = radix_sort_words(tmp + b, w + b, m, lo_bit, sh);
    if (r != out + b)
      at::parallel_for(b, b + m, kChunk, [&](int64_t i0, int64_t i1) { std::copy(r + i0 - b, r + i1 - b, out + i0); });
  }
  run_tasks(radix, [&](int64_t d) {  // one bucket per task, sorted by one thread: the same for any thread count
    const int64_t b = bucket[d], m = bucket[d + 1] - b;
    if (m > 1 && m <= kBig) {
      Count h[2 << TopPlan::kMaxLowDigit];  // two count arrays of the low digit (sort_bucket zeroes them)
      sort_bucket(tmp + b, w + b, m, lo_bit, tp.low_digit, tp.low_passes, h);
    } else if (m == 1 && out != tmp) {
      out[b] = tmp[b];
    }
  });
  return out;
}

}  // namespace cpu
}  // namespace volt
