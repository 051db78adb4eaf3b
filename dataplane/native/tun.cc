#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "addon.h"
#include "errors.h"

namespace weft {

// openTun(template, {vnetHdr, multiQueue}) -> {fd, name}. The fd is a TUN
// queue in the calling process's network namespace, non-blocking, cloexec,
// IFF_NO_PI (packets start at the IP header). `name` is the kernel's choice
// for a template such as "flannel%d".
Napi::Value OpenTun(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!info[0].IsString()) {
    ThrowTypeError(env, "interface name template must be a string");
    return Napi::Value();
  }
  std::string name_template = info[0].As<Napi::String>().Utf8Value();
  if (name_template.empty() || name_template.size() >= IFNAMSIZ) {
    ThrowRangeError(env, "interface name template \"" + name_template +
                             "\" must be 1.." + std::to_string(IFNAMSIZ - 1) +
                             " bytes");
    return Napi::Value();
  }
  short flags = IFF_TUN | IFF_NO_PI;
  if (info[1].IsObject()) {
    Napi::Object opts = info[1].As<Napi::Object>();
    if (opts.Get("vnetHdr").ToBoolean()) flags |= IFF_VNET_HDR;
    if (opts.Get("multiQueue").ToBoolean()) flags |= IFF_MULTI_QUEUE;
  }

  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    ThrowSysError(env, errno, "open", "/dev/net/tun");
    return Napi::Value();
  }
  ifreq ifr = {};
  memcpy(ifr.ifr_name, name_template.data(), name_template.size());
  ifr.ifr_flags = flags;
  if (ioctl(fd, TUNSETIFF, &ifr) != 0) {
    int err = errno;
    close(fd);
    ThrowSysError(env, err, "ioctl", "TUNSETIFF");
    return Napi::Value();
  }
  ifr.ifr_name[IFNAMSIZ - 1] = '\0';
  Napi::Object result = Napi::Object::New(env);
  result.Set("fd", Napi::Number::New(env, fd));
  result.Set("name", Napi::String::New(env, ifr.ifr_name));
  return result;
}

}  // namespace weft
