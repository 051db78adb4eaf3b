#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <vector>

#include "addon.h"
#include "args.h"
#include "errors.h"

namespace weft {
namespace {

// The whole pages inside bytes: [*lo, *hi), empty when none fits. Never a
// byte outside the view, so a page shared with another allocation (the
// buffer's head or tail, when malloc did not give it pages of its own) is
// left alone.
// False with an exception pending when the argument is not a Uint8Array.
bool InnerPages(const Napi::CallbackInfo& info, uintptr_t* lo, uintptr_t* hi) {
  ArrayView<uint8_t> v;
  *lo = *hi = 0;
  if (!GetArray(info.Env(), info[0], "bytes", &v)) return false;
  if (v.data == nullptr) return true;
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  const uintptr_t start = reinterpret_cast<uintptr_t>(v.data);
  *lo = (start + page - 1) & ~(page - 1);
  *hi = (start + v.length) & ~(page - 1);
  if (*hi < *lo) *hi = *lo;
  return true;
}

}  // namespace

// releasePages(bytes): MADV_DONTNEED on the whole pages inside a receive
// arena, so that memory a flood made resident goes back to the kernel. The
// arena is private anonymous memory (calloc'd by V8's allocator); its pages
// read back as zeros and fault in again when the kernel next writes a packet
// there, which it does before anything reads that slot. The caller makes sure
// no pending write points into the arena. Returns the bytes advised.
Napi::Value ReleasePages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uintptr_t lo = 0, hi = 0;
  if (!InnerPages(info, &lo, &hi)) return Napi::Value();
  if (hi == lo) return Napi::Number::New(env, 0);
  if (madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED) != 0) {
    ThrowSysError(env, errno, "madvise", "");
    return Napi::Value();
  }
  return Napi::Number::New(env, double(hi - lo));
}

// residentBytes(bytes): how many bytes of the whole pages inside bytes are
// resident (mincore); for tests and for reporting.
Napi::Value ResidentBytes(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uintptr_t lo = 0, hi = 0;
  if (!InnerPages(info, &lo, &hi)) return Napi::Value();
  if (hi == lo) return Napi::Number::New(env, 0);
  const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((hi - lo) / page);
  if (mincore(reinterpret_cast<void*>(lo), hi - lo, vec.data()) != 0) {
    ThrowSysError(env, errno, "mincore", "");
    return Napi::Value();
  }
  double resident = 0;
  for (unsigned char c : vec) {
    if (c & 1) resident += double(page);
  }
  return Napi::Number::New(env, resident);
}

}  // namespace weft
