// weft.node: the syscalls of the packet path. Policy lives in TypeScript
// (dataplane/io.ts); this module only moves packets and reports readiness.
#include <napi.h>

#include "addon.h"
#include "offload.h"
#include "args.h"
#include "packet_fd.h"
#include "poll_source.h"
#include "udp_socket.h"

namespace weft {
namespace {

// setBusyPoll(us): how long sources of this thread are polled without
// sleeping after each batch (0: never, the default). A window longer than
// the spin's cap could never be used whole, so it is refused.
Napi::Value SetBusyPoll(const Napi::CallbackInfo& info) {
  uint32_t us = 0;
  if (!GetUint(info.Env(), info[0], "busyPollUs", Spinner::kSpinCapNs / 1000,
               &us)) {
    return Napi::Value();
  }
  Spinner::Get().set_budget_ns(uint64_t{us} * 1000);
  return info.Env().Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("PacketFd", PacketFd::Init(env));
  exports.Set("UdpSocket", UdpSocket::Init(env));
  exports.Set("openTun", Napi::Function::New(env, OpenTun, "openTun"));
  exports.Set("socketpair", Napi::Function::New(env, Socketpair, "socketpair"));
  exports.Set("notify", Napi::Function::New(env, Notify, "notify"));
  exports.Set("gsoSplit", Napi::Function::New(env, GsoSplit, "gsoSplit"));
  exports.Set("groMerge", Napi::Function::New(env, GroMerge, "groMerge"));
  exports.Set("setBusyPoll",
              Napi::Function::New(env, SetBusyPoll, "setBusyPoll"));
  return exports;
}

}  // namespace
}  // namespace weft

static Napi::Object InitWeft(Napi::Env env, Napi::Object exports) {
  return weft::Init(env, exports);
}

NODE_API_MODULE(weft, InitWeft)
