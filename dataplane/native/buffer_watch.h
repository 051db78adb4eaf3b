// The memory behind typed arrays the addon keeps raw pointers into (receive
// arenas, bound outgoing arrays). A reference keeps an ArrayBuffer alive but
// does not stop JavaScript from detaching it (structuredClone or postMessage
// with a transfer list, ArrayBuffer.prototype.transfer) or from shrinking a
// resizable one: the bytes then belong to someone else, or are gone, while
// the pointer still points at them. N-API cannot forbid either, so every
// call that is about to use the pointers first checks that each buffer still
// has the address and at least the length it had when it was taken.
//
//   take:  typed array ──► its ArrayBuffer (once per buffer) ──► (ref, data, length)
//   use:   Intact(): each ref's current (data, length) still matches ──► go on
//                                                         else ──► refuse the call
//
// One check is two N-API calls per distinct buffer (tens of ns), made once
// per batch, never per packet.
#pragma once

#include <napi.h>

#include <cstddef>
#include <vector>

namespace weft {

class BufferWatch {
 public:
  // Watches the buffer behind the typed array `value` (undefined: skipped).
  // A SharedArrayBuffer cannot be detached or shrunk: it is only kept alive.
  void Add(napi_env env, napi_value value) {
    napi_valuetype type;
    if (napi_typeof(env, value, &type) != napi_ok || type == napi_undefined) {
      return;
    }
    napi_value buffer = nullptr;
    if (napi_get_typedarray_info(env, value, nullptr, nullptr, nullptr,
                                 &buffer, nullptr) != napi_ok) {
      return;
    }
    for (const Watched& w : watched_) {
      bool same = false;
      napi_strict_equals(env, w.ref.Value(), buffer, &same);
      if (same) return;
    }
    Watched w;
    w.ref = Napi::Persistent(Napi::Value(env, buffer));
    bool is_array_buffer = false;
    napi_is_arraybuffer(env, buffer, &is_array_buffer);
    w.check = is_array_buffer &&
              napi_get_arraybuffer_info(env, buffer, &w.data, &w.length) ==
                  napi_ok;
    watched_.push_back(std::move(w));
  }

  void Clear() { watched_.clear(); }

  // Whether every watched buffer still lies where it lay, at least as long.
  // Needs a handle scope (any call from JavaScript, or a poll callback).
  bool Intact(napi_env env) const {
    for (const Watched& w : watched_) {
      if (!w.check) continue;
      void* data = nullptr;
      size_t length = 0;
      if (napi_get_arraybuffer_info(env, w.ref.Value(), &data, &length) !=
              napi_ok ||
          data != w.data || length < w.length) {
        return false;
      }
    }
    return true;
  }

 private:
  struct Watched {
    Napi::Reference<Napi::Value> ref;
    void* data = nullptr;
    size_t length = 0;
    bool check = false;
  };
  std::vector<Watched> watched_;
};

}  // namespace weft
