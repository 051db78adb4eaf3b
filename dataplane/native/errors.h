// Errors that name the syscall and the errno, the way Node's own net errors do:
// message "bind 198.18.0.1:8285: EADDRINUSE (Address already in use)",
// err.code = "EADDRINUSE", err.syscall = "bind", err.errno = -98.
#pragma once

#include <napi.h>

#include <string>

namespace weft {

// Builds the error; `detail` (a path, an address, an ioctl name) may be empty.
Napi::Error SysError(Napi::Env env, int err, const char* syscall,
                     const std::string& detail);

// Throws SysError as a pending JS exception (exceptions are disabled in C++).
void ThrowSysError(Napi::Env env, int err, const char* syscall,
                   const std::string& detail);

// A call refused because memory it keeps pointers into was detached or
// shrunk by JavaScript: "send: a bound array's buffer was detached or
// shrunk", err.code = "ERR_WEFT_DETACHED".
Napi::Error DetachedError(Napi::Env env, const char* call, const char* what);
void ThrowDetached(Napi::Env env, const char* call, const char* what);

void ThrowTypeError(Napi::Env env, const std::string& message);
void ThrowRangeError(Napi::Env env, const std::string& message);

}  // namespace weft
