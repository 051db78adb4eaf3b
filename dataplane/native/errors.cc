#include "errors.h"

#include <string.h>

namespace weft {

Napi::Error SysError(Napi::Env env, int err, const char* syscall,
                     const std::string& detail) {
  const char* name = strerrorname_np(err);
  std::string code = name != nullptr ? name : "E" + std::to_string(err);
  std::string message = syscall;
  if (!detail.empty()) message += " " + detail;
  message += ": " + code + " (" + strerror(err) + ")";
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, code));
  error.Set("syscall", Napi::String::New(env, syscall));
  error.Set("errno", Napi::Number::New(env, -err));
  return error;
}

void ThrowSysError(Napi::Env env, int err, const char* syscall,
                   const std::string& detail) {
  SysError(env, err, syscall, detail).ThrowAsJavaScriptException();
}

Napi::Error DetachedError(Napi::Env env, const char* call, const char* what) {
  Napi::Error error = Napi::Error::New(
      env, std::string(call) + ": " + what +
               "'s buffer was detached or shrunk; the addon no longer uses it");
  error.Set("code", Napi::String::New(env, "ERR_WEFT_DETACHED"));
  return error;
}

void ThrowDetached(Napi::Env env, const char* call, const char* what) {
  DetachedError(env, call, what).ThrowAsJavaScriptException();
}

void ThrowTypeError(Napi::Env env, const std::string& message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
}

void ThrowRangeError(Napi::Env env, const std::string& message) {
  Napi::RangeError::New(env, message).ThrowAsJavaScriptException();
}

}  // namespace weft
