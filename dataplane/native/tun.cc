#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "addon.h"
#include "errors.h"
#include "offload.h"

// Older uapi headers lack the UDP segmentation offloads (Linux 6.2).
#ifndef TUN_F_USO4
#define TUN_F_USO4 0x20
#endif
#ifndef TUN_F_USO6
#define TUN_F_USO6 0x40
#endif

namespace weft {

namespace {

// Asks for the offloads in `wanted` one group at a time and keeps those the
// kernel accepts: an old kernel answers EINVAL for a flag it does not know
// (tun_set_offload), and USO4/USO6 are only accepted together. Returns the
// accepted set, or -errno for any other failure.
int64_t NegotiateOffloads(int fd, uint32_t wanted) {
  uint32_t groups[32 + 4] = {TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN,
                             TUN_F_USO4 | TUN_F_USO6};
  uint32_t n = 5;
  uint32_t known = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN |
                   TUN_F_USO4 | TUN_F_USO6;
  for (uint32_t bit = 0; bit < 32; bit++) {
    uint32_t flag = 1u << bit;
    if ((known & flag) == 0) groups[n++] = flag;
  }
  uint32_t accepted = 0;
  for (uint32_t g = 0; g < n; g++) {
    uint32_t group = groups[g] & wanted;
    if (group == 0) continue;
    unsigned long ask = accepted | group;
    if (ioctl(fd, TUNSETOFFLOAD, ask) == 0) {
      accepted |= group;
    } else if (errno != EINVAL) {
      return -errno;
    }
  }
  // A refused attempt leaves the previous setting; make the final state
  // explicit anyway (also when nothing was accepted).
  if (ioctl(fd, TUNSETOFFLOAD, static_cast<unsigned long>(accepted)) != 0) {
    return -errno;
  }
  return accepted;
}

}  // namespace

// openTun(template, {vnetHdr, multiQueue, offloads}) -> {fd, name, offloads}.
// The fd is a TUN queue in the calling process's network namespace,
// non-blocking, cloexec, IFF_NO_PI (packets start at the IP header; with
// vnetHdr behind a 10-byte struct virtio_net_hdr). `offloads` (TUN_F_* bits,
// needs vnetHdr) is what to ask for; the result's `offloads` is what the
// kernel accepted. `name` is the kernel's choice for a template such as
// "flannel%d".
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
  uint32_t wanted = 0;
  if (info[1].IsObject()) {
    Napi::Object opts = info[1].As<Napi::Object>();
    if (opts.Get("vnetHdr").ToBoolean()) flags |= IFF_VNET_HDR;
    if (opts.Get("multiQueue").ToBoolean()) flags |= IFF_MULTI_QUEUE;
    Napi::Value w = opts.Get("offloads");
    if (w.IsNumber()) wanted = w.As<Napi::Number>().Uint32Value();
  }
  if (wanted != 0 && (flags & IFF_VNET_HDR) == 0) {
    ThrowRangeError(env, "offloads need vnetHdr");
    return Napi::Value();
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
  int64_t accepted = 0;
  if ((flags & IFF_VNET_HDR) != 0) {
    int hdr_len = kVnetHdrLen;
    if (ioctl(fd, TUNSETVNETHDRSZ, &hdr_len) != 0) {
      int err = errno;
      close(fd);
      ThrowSysError(env, err, "ioctl", "TUNSETVNETHDRSZ");
      return Napi::Value();
    }
    accepted = NegotiateOffloads(fd, wanted);
    if (accepted < 0) {
      close(fd);
      ThrowSysError(env, static_cast<int>(-accepted), "ioctl", "TUNSETOFFLOAD");
      return Napi::Value();
    }
  }
  ifr.ifr_name[IFNAMSIZ - 1] = '\0';
  Napi::Object result = Napi::Object::New(env);
  result.Set("fd", Napi::Number::New(env, fd));
  result.Set("name", Napi::String::New(env, ifr.ifr_name));
  result.Set("offloads", Napi::Number::New(env, static_cast<double>(accepted)));
  return result;
}

}  // namespace weft
