#pragma once
// Codebooks shared by the CPU references and the CUDA kernels (STYLE item 5): one definition, never copied.
// Usable from host and device code: functions are __host__ __device__ under nvcc; the tables exist as host
// `constexpr` arrays and, under nvcc, as per-translation-unit __constant__ copies initialised from the same
// macro lists (no relocatable device code needed).
#include <cstdint>

#ifdef __CUDACC__
#define EVALSVC_HOST_DEVICE __host__ __device__
#else
#define EVALSVC_HOST_DEVICE
#endif

// The 16 NF4 levels of bitsandbytes (SPEC section 2), code 0 = -1.0 ... code 7 = 0.0 ... code 15 = 1.0.
#define EVALSVC_NF4_LEVELS                                                                                 \
  -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f, -0.28444138169288635f,        \
      -0.18477343022823334f, -0.09105003625154495f, 0.0f, 0.07958029955625534f, 0.16093020141124725f,     \
      0.24611230194568634f, 0.33791524171829224f, 0.44070982933044434f, 0.5626170039176941f,              \
      0.7229568362236023f, 1.0f

// bitsandbytes' signed 8-bit dynamic map, create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8),
// the code used for the nested (double) quantization of NF4 absmax values. The algorithm: for i in 0..6,
// boundaries = torch.linspace(0.1, 1, 2^i + 1) (float32), means = (b[:-1] + b[1:]) / 2, append
// +-10^(i-6) * means; append 0 and 1.0; sort (254 + 2 = 256 values, ascending, index 127 = 0.0, 255 = 1.0).
// The table holds the float32 values bitsandbytes actually returns (as printed from bitsandbytes.functional
// and quoted in public code that re-implements it); torch's vectorised linspace makes the last bit of ~40
// entries depend on the CPU's vector width, so recomputing the algorithm with scalar float arithmetic
// (dynamic_map_recompute() in the tests) agrees within 2 ulp, not bit-exactly. Checkpoints carry their own
// `nested_quant_map`, and load_linear() uses that one, so files written elsewhere decode exactly.
#define EVALSVC_DYNAMIC_MAP_SIGNED \
    -0.992968738079071f, -0.9789062738418579f, -0.96484375f, -0.9507812261581421f, \
    -0.936718761920929f, -0.922656238079071f, -0.9085937738418579f, -0.89453125f, \
    -0.8804687261581421f, -0.866406261920929f, -0.852343738079071f, -0.8382812738418579f, \
    -0.82421875f, -0.8101562261581421f, -0.796093761920929f, -0.782031238079071f, \
    -0.7679687738418579f, -0.75390625f, -0.7398437261581421f, -0.725781261920929f, \
    -0.7117187976837158f, -0.6976562738418579f, -0.68359375f, -0.6695312261581421f, \
    -0.655468761920929f, -0.6414062976837158f, -0.6273437738418579f, -0.61328125f, \
    -0.5992187261581421f, -0.585156261920929f, -0.5710937976837158f, -0.5570312738418579f, \
    -0.54296875f, -0.5289062261581421f, -0.5148437023162842f, -0.500781238079071f, \
    -0.48671871423721313f, -0.47265625f, -0.4585937261581421f, -0.44453126192092896f, \
    -0.43046873807907104f, -0.4164062440395355f, -0.40234375f, -0.3882812261581421f, \
    -0.37421876192092896f, -0.36015623807907104f, -0.3460937440395355f, -0.33203125f, \
    -0.3179687261581421f, -0.30390626192092896f, -0.28984373807907104f, -0.2757812738418579f, \
    -0.26171875f, -0.24765624105930328f, -0.23359374701976776f, -0.21953125298023224f, \
    -0.20546874403953552f, -0.19140625f, -0.17734375596046448f, -0.16328124701976776f, \
    -0.14921875298023224f, -0.13515624403953552f, -0.12109375f, -0.10703125596046448f, \
    -0.09859374910593033f, -0.09578125923871994f, -0.09296875447034836f, -0.09015624970197678f, \
    -0.08734375238418579f, -0.08453124761581421f, -0.08171875774860382f, -0.07890625298023224f, \
    -0.07609374821186066f, -0.07328125089406967f, -0.07046874612569809f, -0.0676562562584877f, \
    -0.06484375149011612f, -0.062031250447034836f, -0.05921875312924385f, -0.05640624836087227f, \
    -0.053593751043081284f, -0.05078125f, -0.047968748956918716f, -0.04515625163912773f, \
    -0.04234374687075615f, -0.039531249552965164f, -0.03671875223517418f, -0.033906251192092896f, \
    -0.031093750149011612f, -0.028281250968575478f, -0.025468749925494194f, -0.02265625074505806f, \
    -0.019843751564621925f, -0.017031250521540642f, -0.014218750409781933f, -0.011406250298023224f, \
    -0.009718749672174454f, -0.009156249463558197f, -0.008593750186264515f, -0.008031249977648258f, \
    -0.0074687497690320015f, -0.006906250026077032f, -0.006343749817460775f, -0.005781250074505806f, \
    -0.0052187503315508366f, -0.0046562496572732925f, -0.004093749914318323f, -0.0035312497057020664f, \
    -0.002968749962747097f, -0.002406249986961484f, -0.001843750011175871f, -0.001281249918974936f, \
    -0.0009437500848434865f, -0.0008312499849125743f, -0.0007187500596046448f, -0.0006062500760890543f, \
    -0.000493750034365803f, -0.0003812500217463821f, -0.0002687500382307917f, -0.00015625001105945557f, \
    -8.874999912222847e-05f, -6.625000241911039e-05f, -4.374999844003469e-05f, -2.1249998098937795e-05f, \
    -7.749999895168003e-06f, -3.250000190746505e-06f, -5.500000384017767e-07f, 0.0f, \
    5.500000384017767e-07f, 3.250000190746505e-06f, 7.749999895168003e-06f, 2.1249998098937795e-05f, \
    4.374999844003469e-05f, 6.625000241911039e-05f, 8.874999912222847e-05f, 0.00015625001105945557f, \
    0.0002687500382307917f, 0.0003812500217463821f, 0.000493750034365803f, 0.0006062500760890543f, \
    0.0007187500596046448f, 0.0008312499849125743f, 0.0009437500848434865f, 0.001281249918974936f, \
    0.001843750011175871f, 0.002406249986961484f, 0.002968749962747097f, 0.0035312497057020664f, \
    0.004093749914318323f, 0.0046562496572732925f, 0.0052187503315508366f, 0.005781250074505806f, \
    0.006343749817460775f, 0.006906250026077032f, 0.0074687497690320015f, 0.008031249977648258f, \
    0.008593750186264515f, 0.009156249463558197f, 0.009718749672174454f, 0.011406250298023224f, \
    0.014218750409781933f, 0.017031250521540642f, 0.019843751564621925f, 0.02265625074505806f, \
    0.025468749925494194f, 0.028281250968575478f, 0.031093750149011612f, 0.033906251192092896f, \
    0.03671875223517418f, 0.039531249552965164f, 0.04234374687075615f, 0.04515625163912773f, \
    0.047968748956918716f, 0.05078125f, 0.053593751043081284f, 0.05640624836087227f, \
    0.05921875312924385f, 0.062031250447034836f, 0.06484375149011612f, 0.0676562562584877f, \
    0.07046874612569809f, 0.07328125089406967f, 0.07609374821186066f, 0.07890625298023224f, \
    0.08171875774860382f, 0.08453124761581421f, 0.08734375238418579f, 0.09015624970197678f, \
    0.09296875447034836f, 0.09578125923871994f, 0.09859374910593033f, 0.10703125596046448f, \
    0.12109375f, 0.13515624403953552f, 0.14921875298023224f, 0.16328124701976776f, \
    0.17734375596046448f, 0.19140625f, 0.20546874403953552f, 0.21953125298023224f, \
    0.23359374701976776f, 0.24765624105930328f, 0.26171875f, 0.2757812738418579f, \
    0.28984373807907104f, 0.30390626192092896f, 0.3179687261581421f, 0.33203125f, \
    0.3460937440395355f, 0.36015623807907104f, 0.37421876192092896f, 0.3882812261581421f, \
    0.40234375f, 0.4164062440395355f, 0.43046873807907104f, 0.44453126192092896f, \
    0.4585937261581421f, 0.47265625f, 0.48671871423721313f, 0.500781238079071f, \
    0.5148437023162842f, 0.5289062261581421f, 0.54296875f, 0.5570312738418579f, \
    0.5710937976837158f, 0.585156261920929f, 0.5992187261581421f, 0.61328125f, \
    0.6273437738418579f, 0.6414062976837158f, 0.655468761920929f, 0.6695312261581421f, \
    0.68359375f, 0.6976562738418579f, 0.7117187976837158f, 0.725781261920929f, \
    0.7398437261581421f, 0.75390625f, 0.7679687738418579f, 0.782031238079071f, \
    0.796093761920929f, 0.8101562261581421f, 0.82421875f, 0.8382812738418579f, \
    0.852343738079071f, 0.866406261920929f, 0.8804687261581421f, 0.89453125f, \
    0.9085937738418579f, 0.922656238079071f, 0.936718761920929f, 0.9507812261581421f, \
    0.96484375f, 0.9789062738418579f, 0.992968738079071f, 1.0f

namespace evalsvc::kernels {

/// NF4 levels, indexed by the 4-bit code.
inline constexpr float kNf4Levels[16] = {EVALSVC_NF4_LEVELS};
/// bitsandbytes' signed dynamic 8-bit map (ascending), indexed by the 8-bit code.
inline constexpr float kDynamicMapSigned[256] = {EVALSVC_DYNAMIC_MAP_SIGNED};
/// Elements per nested-quantization block of NF4 absmax values (bitsandbytes' fixed 256).
inline constexpr int64_t kNestedBlockSize = 256;
/// Index of 0.0 in kDynamicMapSigned and the NF4 code of 0.0.
inline constexpr int kDynamicMapZeroCode = 127;
inline constexpr int kNf4ZeroCode = 7;

#ifdef __CUDACC__
/// Device copies of the same tables (static: one per translation unit, so no -rdc is needed).
static __constant__ float kNf4LevelsDevice[16] = {EVALSVC_NF4_LEVELS};
static __constant__ float kDynamicMapSignedDevice[256] = {EVALSVC_DYNAMIC_MAP_SIGNED};
#endif

/// NF4 code of a value already divided by its block absmax (so in [-1, 1]): the nearest level, decided by
/// the 15 midpoints between neighbouring levels exactly as bitsandbytes' dQuantizeNF4 does (x > threshold goes
/// up; the thresholds are bitsandbytes' decimal midpoints as float literals, within one ulp of the exact
/// midpoint, which is often a float rounding tie). NaN maps to code 0 like bitsandbytes;
/// callers avoid it by using 0 as the inverse absmax of an all-zero block.
EVALSVC_HOST_DEVICE inline constexpr uint8_t nf4_encode(float x) {
  // Midpoints (L[k] + L[k+1]) / 2 computed in double, as in bitsandbytes' csrc/kernels.cu.
  if (x > 0.03979014977812767f) {
    if (x > 0.3893125355243683f) {
      if (x > 0.6427869200706482f) return x > 0.8614784181118011f ? 15 : 14;
      return x > 0.5016634166240692f ? 13 : 12;
    }
    if (x > 0.2035212516784668f) return x > 0.2920137718319893f ? 11 : 10;
    return x > 0.1202552504837513f ? 9 : 8;
  }
  if (x > -0.33967943489551544f) {
    if (x > -0.13791173323988914f) return x > -0.045525018125772476f ? 7 : 6;
    return x > -0.23460740596055984f ? 5 : 4;
  }
  if (x > -0.6106329262256622f) return x > -0.4599952697753906f ? 3 : 2;
  return x > -0.8480964004993439f ? 1 : 0;
}

/// NF4 level of a 4-bit code (only the low 4 bits are used), without a table lookup so that device code
/// can call it without touching memory.
EVALSVC_HOST_DEVICE inline constexpr float nf4_decode(uint8_t code) {
  switch (code & 0xF) {
    case 0: return -1.0f;
    case 1: return -0.6961928009986877f;
    case 2: return -0.5250730514526367f;
    case 3: return -0.39491748809814453f;
    case 4: return -0.28444138169288635f;
    case 5: return -0.18477343022823334f;
    case 6: return -0.09105003625154495f;
    case 7: return 0.0f;
    case 8: return 0.07958029955625534f;
    case 9: return 0.16093020141124725f;
    case 10: return 0.24611230194568634f;
    case 11: return 0.33791524171829224f;
    case 12: return 0.44070982933044434f;
    case 13: return 0.5626170039176941f;
    case 14: return 0.7229568362236023f;
    default: return 1.0f;
  }
}

/// Code of the nearest entry of a sorted 256-entry map (binary search, then the closer neighbour; a tie
/// takes the lower code). Used with kDynamicMapSigned for the nested absmax quantization; x is the value
/// divided by its block absmax, so in [-1, 1].
EVALSVC_HOST_DEVICE inline constexpr uint8_t nearest_code_256(const float* map, float x) {
  int lo = 0, hi = 255;
  if (!(x > map[0])) return 0;  // also catches NaN
  if (x >= map[255]) return 255;
  while (hi - lo > 1) {  // invariant: map[lo] < x <= map[hi]
    const int mid = (lo + hi) / 2;
    if (map[mid] < x) lo = mid; else hi = mid;
  }
  return static_cast<uint8_t>((x - map[lo]) <= (map[hi] - x) ? lo : hi);
}

}  // namespace evalsvc::kernels
