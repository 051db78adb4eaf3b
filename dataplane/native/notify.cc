#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "addon.h"
#include "errors.h"

namespace weft {

// notify(socketPath, message): systemd's sd_notify protocol, one datagram on
// an AF_UNIX SOCK_DGRAM socket. "@name" is the abstract namespace. The socket
// is non-blocking: a full receiver is an EAGAIN error, never a stalled loop.
Napi::Value Notify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString() || !info[1].IsString()) {
    ThrowTypeError(env, "notify(socketPath, message) takes two strings");
    return Napi::Value();
  }
  std::string path = info[0].As<Napi::String>().Utf8Value();
  std::string message = info[1].As<Napi::String>().Utf8Value();

  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  bool abstract = !path.empty() && path[0] == '@';
  // A pathname needs room for its terminating NUL; an abstract name does not.
  size_t room = sizeof addr.sun_path - (abstract ? 0 : 1);
  if (path.empty() || path.size() > room) {
    ThrowSysError(env, path.empty() ? EINVAL : ENAMETOOLONG, "sendto", path);
    return Napi::Value();
  }
  memcpy(addr.sun_path, path.data(), path.size());
  socklen_t len = offsetof(sockaddr_un, sun_path) + path.size();
  if (abstract) {
    addr.sun_path[0] = '\0';
  } else {
    len += 1;
  }

  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ThrowSysError(env, errno, "socket", "");
    return Napi::Value();
  }
  ssize_t n = sendto(fd, message.data(), message.size(), MSG_NOSIGNAL,
                     reinterpret_cast<sockaddr*>(&addr), len);
  int err = errno;
  close(fd);
  if (n < 0) {
    ThrowSysError(env, err, "sendto", path);
    return Napi::Value();
  }
  return env.Undefined();
}

}  // namespace weft
