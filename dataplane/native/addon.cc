// weft.node: the syscalls of the packet path. Policy lives in TypeScript
// (dataplane/io.ts); this module only moves packets and reports readiness.
#include <napi.h>

#include "addon.h"
#include "offload.h"
#include "packet_fd.h"
#include "udp_socket.h"

namespace weft {
namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("PacketFd", PacketFd::Init(env));
  exports.Set("UdpSocket", UdpSocket::Init(env));
  exports.Set("openTun", Napi::Function::New(env, OpenTun, "openTun"));
  exports.Set("socketpair", Napi::Function::New(env, Socketpair, "socketpair"));
  exports.Set("notify", Napi::Function::New(env, Notify, "notify"));
  exports.Set("gsoSplit", Napi::Function::New(env, GsoSplit, "gsoSplit"));
  exports.Set("groMerge", Napi::Function::New(env, GroMerge, "groMerge"));
  return exports;
}

}  // namespace
}  // namespace weft

static Napi::Object InitWeft(Napi::Env env, Napi::Object exports) {
  return weft::Init(env, exports);
}

NODE_API_MODULE(weft, InitWeft)
