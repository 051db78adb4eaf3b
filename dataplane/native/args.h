// Argument checks for the calls from TypeScript. The wrapper in io.ts always
// passes the right shapes; these checks turn a programming error into a
// TypeError/RangeError instead of a wild pointer.
#pragma once

#include <napi.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

#include "buffer_watch.h"
#include "errors.h"

namespace weft {

template <typename T>
struct ArrayView {
  T* data = nullptr;
  size_t length = 0;
};

template <typename T>
struct TypedArrayKind;
template <>
struct TypedArrayKind<uint8_t> {
  static constexpr napi_typedarray_type type = napi_uint8_array;
  static constexpr const char* name = "a Uint8Array";
};
template <>
struct TypedArrayKind<uint16_t> {
  static constexpr napi_typedarray_type type = napi_uint16_array;
  static constexpr const char* name = "a Uint16Array";
};
template <>
struct TypedArrayKind<uint32_t> {
  static constexpr napi_typedarray_type type = napi_uint32_array;
  static constexpr const char* name = "a Uint32Array";
};

// Reads a typed array of exactly element type T; throws a TypeError otherwise.
template <typename T>
bool GetArray(Napi::Env env, napi_value value, const char* what,
              ArrayView<T>* out) {
  napi_typedarray_type type;
  void* data = nullptr;
  size_t length = 0;
  napi_status status = napi_get_typedarray_info(env, value, &type, &length,
                                                &data, nullptr, nullptr);
  if (status != napi_ok || type != TypedArrayKind<T>::type) {
    ThrowTypeError(env, std::string(what) + " must be " +
                            TypedArrayKind<T>::name);
    return false;
  }
  out->data = static_cast<T*>(data);
  out->length = length;
  return true;
}

// Reads an integer in [0, max]; throws a TypeError/RangeError otherwise.
inline bool GetUint(Napi::Env env, napi_value value, const char* what,
                    double max, uint32_t* out) {
  double d = 0;
  if (napi_get_value_double(env, value, &d) != napi_ok) {
    ThrowTypeError(env, std::string(what) + " must be a number");
    return false;
  }
  if (!(d >= 0 && d <= max) || d != static_cast<double>(static_cast<uint64_t>(d))) {
    ThrowRangeError(env, std::string(what) + " must be an integer in 0.." +
                             std::to_string(static_cast<uint64_t>(max)));
    return false;
  }
  *out = static_cast<uint32_t>(d);
  return true;
}

// Reads a boolean; throws a TypeError naming `what` otherwise.
inline bool GetBool(Napi::Env env, napi_value value, const char* what, bool* out) {
  if (napi_get_value_bool(env, value, out) != napi_ok) {
    ThrowTypeError(env, std::string(what) + " must be a boolean");
    return false;
  }
  return true;
}

// Checks that [start, start + count) indexes every per-packet array of a batch.
inline bool CheckBatchRange(Napi::Env env, uint32_t start, uint32_t count,
                            size_t shortest) {
  if (static_cast<uint64_t>(start) + count > shortest) {
    ThrowRangeError(env, "batch [" + std::to_string(start) + ", " +
                             std::to_string(uint64_t{start} + count) +
                             ") exceeds the per-packet arrays (" +
                             std::to_string(shortest) + ")");
    return false;
  }
  return true;
}

// Checks that every packet of a batch lies inside `bytes`.
inline bool CheckPackets(Napi::Env env, const ArrayView<uint32_t>& offsets,
                         const ArrayView<uint32_t>& lengths, uint32_t start,
                         uint32_t count, size_t byte_length) {
  for (uint32_t i = start; i < start + count; i++) {
    if (uint64_t{offsets.data[i]} + lengths.data[i] > byte_length) {
      ThrowRangeError(env, "packet " + std::to_string(i) + " [" +
                               std::to_string(offsets.data[i]) + ", +" +
                               std::to_string(lengths.data[i]) +
                               ") lies outside bytes (" +
                               std::to_string(byte_length) + ")");
      return false;
    }
  }
  return true;
}

// The arrays an outgoing batch call reads, bound once by bindWrite/bindSend
// and reused until rebound, so that each write/send passes only (start,
// count): checking six typed arrays cost more than the rest of the call. The
// watch keeps their buffers alive, and a call refuses to run once one of
// them was detached or shrunk (bind again to go on).
struct BoundArrays {
  bool bound = false;
  ArrayView<uint8_t> bytes;
  ArrayView<uint32_t> offsets;
  ArrayView<uint32_t> lengths;
  ArrayView<uint32_t> addrs;
  ArrayView<uint16_t> ports;
  // Absent (data null) when not bound.
  ArrayView<uint16_t> gso;
  // Scatter-gather (absent when not bound): entry i with piece_count[i] > 0
  // is sent from the pieces [piece_first[i], +piece_count[i]) of
  // piece_offsets/piece_lengths, one iovec each, instead of one span.
  ArrayView<uint32_t> piece_first;
  ArrayView<uint16_t> piece_count;
  ArrayView<uint32_t> piece_offsets;
  ArrayView<uint32_t> piece_lengths;
  // Gathered runs toward a TUN (absent when not bound): entry i with
  // runs[i] >= 2 is one super-packet of entries i .. i + runs[i] - 1.
  ArrayView<uint16_t> runs;
  // The shortest per-packet array: every batch must lie below it.
  size_t shortest = 0;
  BufferWatch watch;

  // Watches the bound arrays (an absent optional one is undefined: skipped).
  void Keep(std::initializer_list<napi_value> values, Napi::Env env) {
    watch.Clear();
    for (napi_value v : values) watch.Add(env, v);
    bound = true;
  }

  // Reads (start, count) from info[0], info[1] and checks them against the
  // bound arrays; `call` names the method for "before bind" errors.
  bool Batch(const Napi::CallbackInfo& info, const char* call, uint32_t* start,
             uint32_t* count) const {
    Napi::Env env = info.Env();
    if (!bound) {
      Napi::Error::New(env, std::string(call) + " before its arrays were bound")
          .ThrowAsJavaScriptException();
      return false;
    }
    if (!watch.Intact(env)) {
      ThrowDetached(env, call, "a bound array");
      return false;
    }
    return GetUint(env, info[0], "start", UINT32_MAX, start) &&
           GetUint(env, info[1], "count", UINT32_MAX, count) &&
           CheckBatchRange(env, *start, *count, shortest) &&
           CheckPackets(env, offsets, lengths, *start, *count, bytes.length);
  }
};

}  // namespace weft
