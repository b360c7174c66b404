// lmlab's CPU kernels for the low-bit products of decoding (the idea and the formulas: lmlab/kernels/__init__.py).
//
// Activations are quantized per block of 32 with a scale (int4 weights: to int8, llama.cpp's Q8_0; int8
// weights: to int16) and multiplied by the weights' integer codes with AVX-512 VNNI (vpdpbusd: four u8 x s8
// products summed into each int32 lane; vpdpwssd: two int16 x int16); the integer block sums are scaled in
// fp32. Output rows are shared among threads (at::parallel_for).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cstring>
#include <vector>

namespace {

constexpr int64_t kBlock = 32;  // inputs per activation block (one scale each)
constexpr int64_t kRows4 = 16;  // int4 rows interleaved in one 64-byte load (one int32 lane each)
// How far ahead of the weights read now the next ones are asked of the cache (bytes; of 1 and 4 KB tried, the
// better for each). The products read each weight once, from memory; with these prefetches their speed against
// PyTorch's kernels, in one process, went from 1.4x to 1.55x (int4 layers), 1.3-1.5x to 1.6x (int8), 1.3x to
// 1.8x (the int8 LM head).
constexpr int64_t kPrefetchInt4 = 1024, kPrefetchInt8 = 4096;

// Sixteen fp32 values from fp32 or bf16 memory.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const at::BFloat16* p) {
  __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// Four int8 activations as one int32, broadcast to all lanes (the s8 operand of vpdpbusd).
inline __m512i broadcast4(const int8_t* p) {
  int32_t word;
  std::memcpy(&word, p, 4);
  return _mm512_set1_epi32(word);
}

// Activations of M rows of K inputs quantized per block of 32: codes q = round(x / d) with d = max|x| / qmax,
// qmax = 127 for int8 codes (llama.cpp's Q8_0) or 32767 for int16 ones, and the sum of each block's codes.
template <typename Code>
struct QuantizedRows {
  std::vector<Code> q;       // [M, K]
  std::vector<float> d;      // [M, K / 32]
  std::vector<int32_t> sum;  // [M, K / 32]
};

template <typename Code, typename T>
QuantizedRows<Code> quantize_rows(const T* x, int64_t M, int64_t K) {
  constexpr float qmax = sizeof(Code) == 1 ? 127.f : 32767.f;
  const int64_t blocks = M * K / kBlock;
  QuantizedRows<Code> out{std::vector<Code>(M * K), std::vector<float>(blocks), std::vector<int32_t>(blocks)};
  for (int64_t i = 0; i < blocks; ++i) {
    __m512 a = load16(x + i * kBlock), b = load16(x + i * kBlock + 16);
    float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    __m512 inverse = _mm512_set1_ps(amax > 0.f ? qmax / amax : 0.f);
    __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, inverse));  // round to nearest even
    __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, inverse));
    Code* q = out.q.data() + i * kBlock;
    if constexpr (sizeof(Code) == 1) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtsepi32_epi8(qa));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), _mm512_cvtsepi32_epi8(qb));
    } else {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), _mm512_cvtsepi32_epi16(qa));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 16), _mm512_cvtsepi32_epi16(qb));
    }
    out.d[i] = amax / qmax;
    out.sum[i] = _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb));
  }
  return out;
}

// One activation row times 16 interleaved int4 rows: for each group g of G inputs and block b of 32 in it,
//   y += s_g * sum_b d_b * (P_b - 8 S_b) + z_g * sum_b d_b S_b,   P_b = sum_k q_k x_k (vpdpbusd).
// `codes`: the 16 rows' K / 8 chunks of 64 bytes; byte 4r + i of chunk c holds row r's code of input
// 8c + i (low nibble) and 8c + 4 + i (high nibble). `scales`: per group, 16 bf16 scales then 16 offsets.
inline __m512 int4_rows16(const uint8_t* codes, const at::BFloat16* scales, int64_t K, int64_t G,
                          const int8_t* xq, const float* d, const int32_t* sum) {
  const __m512i nibble = _mm512_set1_epi8(0x0F);
  const int64_t blocks_per_group = G / kBlock;
  __m512 y = _mm512_setzero_ps();
  for (int64_t g = 0; g < K / G; ++g) {
    __m512 acc = _mm512_setzero_ps();
    float offset_weight = 0.f;  // sum_b d_b S_b over the group
    for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
      const uint8_t* w = codes + b * 4 * 64;
      const int8_t* x = xq + b * kBlock;
      __m512i low = _mm512_setzero_si512(), high = _mm512_setzero_si512();
      for (int c = 0; c < 4; ++c) {
        _mm_prefetch(reinterpret_cast<const char*>(w + c * 64 + kPrefetchInt4), _MM_HINT_T0);
        __m512i v = _mm512_loadu_si512(w + c * 64);
        low = _mm512_dpbusd_epi32(low, _mm512_and_si512(v, nibble), broadcast4(x + c * 8));
        high = _mm512_dpbusd_epi32(high, _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble), broadcast4(x + c * 8 + 4));
      }
      __m512i p = _mm512_sub_epi32(_mm512_add_epi32(low, high), _mm512_set1_epi32(8 * sum[b]));
      acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_set1_ps(d[b]), acc);
      offset_weight += d[b] * static_cast<float>(sum[b]);
    }
    y = _mm512_fmadd_ps(acc, load16(scales + g * 2 * kRows4), y);
    y = _mm512_fmadd_ps(load16(scales + g * 2 * kRows4 + kRows4), _mm512_set1_ps(offset_weight), y);
  }
  return y;
}

template <typename T>
void int4_mm_impl(const T* x, const uint8_t* codes, const at::BFloat16* scales, T* y, int64_t M, int64_t K,
                  int64_t N, int64_t G) {
  QuantizedRows<int8_t> xq = quantize_rows<int8_t>(x, M, K);
  const int64_t blocks = K / kBlock, code_bytes = K / 2 * kRows4, scale_count = K / G * 2 * kRows4;
  at::parallel_for(0, N / kRows4, 4, [&](int64_t begin, int64_t end) {
    float out[kRows4];
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t m = 0; m < M; ++m) {
        _mm512_storeu_ps(out, int4_rows16(codes + r * code_bytes, scales + r * scale_count, K, G,
                                          xq.q.data() + m * K, xq.d.data() + m * blocks, xq.sum.data() + m * blocks));
        for (int64_t j = 0; j < kRows4; ++j) y[m * N + r * kRows4 + j] = static_cast<T>(out[j]);
      }
    }
  });
}

// R int8 rows (row-major, signed codes, one scale each) times one row of int16 activations:
//   y_j = s_j * sum_b d_b * sum_{k in b} w_jk x_k,
// 32 inputs at a time with vpdpwssd (pairs of int16 products summed into 16 int32 lanes; the weights are
// widened from int8). int16 activations rather than int8: their rounding (2^-16 of a block's max) is
// negligible, where int8's (2^-8) added 0.4% to int8 SmolLM2's perplexity on top of its weights'.
template <int R>
inline void int8_rows(const int8_t* w, int64_t K, const float* row_scale, const int16_t* xq, const float* d,
                      float* out) {
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t b = 0; b < K / kBlock; ++b) {
    __m512i x = _mm512_loadu_si512(xq + b * kBlock);
    __m512 scale = _mm512_set1_ps(d[b]);
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w + r * K + b * kBlock + kPrefetchInt8), _MM_HINT_T0);
      __m512i v = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + r * K + b * kBlock)));
      __m512i p = _mm512_dpwssd_epi32(_mm512_setzero_si512(), v, x);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), scale, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = row_scale[r] * _mm512_reduce_add_ps(acc[r]);
}

template <typename T>
void int8_mm_impl(const T* x, const int8_t* w, const float* scale, T* y, int64_t M, int64_t K, int64_t N) {
  QuantizedRows<int16_t> xq = quantize_rows<int16_t>(x, M, K);
  const int64_t blocks = K / kBlock;
  constexpr int64_t tile = 4;
  at::parallel_for(0, (N + tile - 1) / tile, 16, [&](int64_t begin, int64_t end) {
    float out[tile];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = t * tile, rows = std::min(tile, N - row);
      for (int64_t m = 0; m < M; ++m) {
        const int16_t* xm = xq.q.data() + m * K;
        const float* dm = xq.d.data() + m * blocks;
        if (rows == tile) {
          int8_rows<tile>(w + row * K, K, scale + row, xm, dm, out);
        } else {
          for (int64_t r = 0; r < rows; ++r) int8_rows<1>(w + (row + r) * K, K, scale + row + r, xm, dm, out + r);
        }
        for (int64_t r = 0; r < rows; ++r) y[m * N + row + r] = static_cast<T>(out[r]);
      }
    }
  });
}

void check_rows(const torch::Tensor& x, int64_t K) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.size(1) == K, "activations must be contiguous rows [M, ", K, "]");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "activations must be fp32 or bf16");
  TORCH_CHECK(K % kBlock == 0, "the input size must be a multiple of 32");
}

// y [M, N] = x [M, K] times the int4 matrix (codes [N / 16, K / 8, 64] uint8, scales [N / 16, K / G, 2, 16] bf16).
torch::Tensor int4_mm(const torch::Tensor& x, const torch::Tensor& codes, const torch::Tensor& scales,
                      int64_t group_size) {
  const int64_t K = codes.size(1) * 8, N = codes.size(0) * kRows4, M = x.size(0);
  check_rows(x, K);
  TORCH_CHECK(codes.is_contiguous() && codes.scalar_type() == at::kByte && scales.is_contiguous() &&
              scales.scalar_type() == at::kBFloat16 && group_size % kBlock == 0 && K % group_size == 0,
              "int4 operands are not in lmlab's layout");
  torch::Tensor y = torch::empty({M, N}, x.options());
  if (x.scalar_type() == at::kFloat) {
    int4_mm_impl(x.data_ptr<float>(), codes.data_ptr<uint8_t>(), scales.data_ptr<at::BFloat16>(),
                 y.data_ptr<float>(), M, K, N, group_size);
  } else {
    int4_mm_impl(x.data_ptr<at::BFloat16>(), codes.data_ptr<uint8_t>(), scales.data_ptr<at::BFloat16>(),
                 y.data_ptr<at::BFloat16>(), M, K, N, group_size);
  }
  return y;
}

// y [M, N] = x [M, K] times the int8 matrix w [N, K] with one fp32 scale per row.
torch::Tensor int8_mm(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& scale) {
  const int64_t K = w.size(1), N = w.size(0), M = x.size(0);
  check_rows(x, K);
  TORCH_CHECK(w.is_contiguous() && w.scalar_type() == at::kChar && scale.is_contiguous() &&
              scale.scalar_type() == at::kFloat && scale.numel() == N, "int8 operands: int8 [N, K], fp32 scales [N]");
  torch::Tensor y = torch::empty({M, N}, x.options());
  if (x.scalar_type() == at::kFloat) {
    int8_mm_impl(x.data_ptr<float>(), w.data_ptr<int8_t>(), scale.data_ptr<float>(), y.data_ptr<float>(), M, K, N);
  } else {
    int8_mm_impl(x.data_ptr<at::BFloat16>(), w.data_ptr<int8_t>(), scale.data_ptr<float>(),
                 y.data_ptr<at::BFloat16>(), M, K, N);
  }
  return y;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int4_mm", &int4_mm, "x times lmlab's interleaved int4 matrix (Q8_0 activations, VNNI)");
  m.def("int8_mm", &int8_mm, "x times a per-row int8 matrix (int16 activations per block of 32, VNNI)");
}
