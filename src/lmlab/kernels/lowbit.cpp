// lmlab's CPU kernels for the low-bit products of decoding (the idea and the formulas: lmlab/kernels/__init__.py).
//
// Activations are quantized per block of 32 to int8 with a scale (llama.cpp's Q8_0) and multiplied by the
// weights' integer codes with AVX-512 VNNI's vpdpbusd (four u8 x s8 products summed into each int32 lane);
// the integer block sums are scaled in fp32. Output rows are shared among threads (at::parallel_for).

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <cstring>
#include <vector>

namespace {

constexpr int64_t kBlock = 32;  // inputs per activation block (one int8 scale each)
constexpr int64_t kRows4 = 16;  // int4 rows interleaved in one 64-byte load (one int32 lane each)

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

// Q8_0 activations of M rows of K inputs: codes q = round(x / d) with d = max|x| / 127 per block of 32,
// and the sum of the codes of each block.
struct Q8Rows {
  std::vector<int8_t> q;     // [M, K]
  std::vector<float> d;      // [M, K / 32]
  std::vector<int32_t> sum;  // [M, K / 32]
};

template <typename T>
Q8Rows quantize_rows(const T* x, int64_t M, int64_t K) {
  const int64_t blocks = M * K / kBlock;
  Q8Rows out{std::vector<int8_t>(M * K), std::vector<float>(blocks), std::vector<int32_t>(blocks)};
  for (int64_t i = 0; i < blocks; ++i) {
    __m512 a = load16(x + i * kBlock), b = load16(x + i * kBlock + 16);
    float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
    __m512 inverse = _mm512_set1_ps(amax > 0.f ? 127.f / amax : 0.f);
    __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, inverse));  // round to nearest even
    __m512i qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, inverse));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out.q.data() + i * kBlock), _mm512_cvtsepi32_epi8(qa));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out.q.data() + i * kBlock + 16), _mm512_cvtsepi32_epi8(qb));
    out.d[i] = amax / 127.f;
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
  Q8Rows xq = quantize_rows(x, M, K);
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

// R int8 rows (row-major, signed codes, one scale each) times one activation row. vpdpbusd needs its first
// operand unsigned, so each weight byte is read as w + 128 (xor 0x80): sum (w + 128) x = sum w x + 128 sum x,
// and y_j = s_j (sum_b d_b (P_jb + 128 S_b) - 128 sum_b d_b S_b). Lane l of a 64-input chunk c belongs to
// block 2c + l / 8, so `lane_scales` holds d of those blocks per lane (zero past the end).
template <int R>
inline void int8_rows(const int8_t* w, int64_t K, const float* row_scale, const int8_t* xq,
                      const float* lane_scales, float offset_weight, float* out) {
  const __m512i sign = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t c = 0; c * 64 < K; ++c) {
    const __mmask64 valid = K - c * 64 >= 64 ? ~__mmask64(0) : (__mmask64(1) << (K - c * 64)) - 1;
    __m512i x = _mm512_maskz_loadu_epi8(valid, xq + c * 64);
    __m512 lanes = _mm512_loadu_ps(lane_scales + c * 16);
    for (int r = 0; r < R; ++r) {
      __m512i v = _mm512_xor_si512(_mm512_maskz_loadu_epi8(valid, w + r * K + c * 64), sign);
      __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v, x);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), lanes, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) out[r] = row_scale[r] * (_mm512_reduce_add_ps(acc[r]) - 128.f * offset_weight);
}

template <typename T>
void int8_mm_impl(const T* x, const int8_t* w, const float* scale, T* y, int64_t M, int64_t K, int64_t N) {
  Q8Rows xq = quantize_rows(x, M, K);
  const int64_t blocks = K / kBlock, chunks = (K + 63) / 64;
  std::vector<float> lane_scales(M * chunks * 16, 0.f), offset_weight(M, 0.f);
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t b = 0; b < blocks; ++b) {
      float d = xq.d[m * blocks + b];
      for (int l = 0; l < 8; ++l) lane_scales[(m * chunks + b / 2) * 16 + (b % 2) * 8 + l] = d;
      offset_weight[m] += d * static_cast<float>(xq.sum[m * blocks + b]);
    }
  }
  constexpr int64_t tile = 4;
  at::parallel_for(0, (N + tile - 1) / tile, 16, [&](int64_t begin, int64_t end) {
    float out[tile];
    for (int64_t t = begin; t < end; ++t) {
      const int64_t row = t * tile, rows = std::min(tile, N - row);
      for (int64_t m = 0; m < M; ++m) {
        const int8_t* xm = xq.q.data() + m * K;
        const float* lanes = lane_scales.data() + m * chunks * 16;
        if (rows == tile) {
          int8_rows<tile>(w + row * K, K, scale + row, xm, lanes, offset_weight[m], out);
        } else {
          for (int64_t r = 0; r < rows; ++r)
            int8_rows<1>(w + (row + r) * K, K, scale + row + r, xm, lanes, offset_weight[m], out + r);
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
  m.def("int8_mm", &int8_mm, "x times a per-row int8 matrix (Q8_0 activations, VNNI)");
}
