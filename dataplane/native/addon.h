// The addon's free functions; the classes have their own headers.
#pragma once

#include <napi.h>

namespace weft {

Napi::Value OpenTun(const Napi::CallbackInfo& info);
Napi::Value Notify(const Napi::CallbackInfo& info);
Napi::Value NftGeneration(const Napi::CallbackInfo& info);
Napi::Value ReleaseFilePages(const Napi::CallbackInfo& info);
Napi::Value ReduceMemory(const Napi::CallbackInfo& info);
Napi::Value ReleasePages(const Napi::CallbackInfo& info);
Napi::Value ResidentBytes(const Napi::CallbackInfo& info);

}  // namespace weft
