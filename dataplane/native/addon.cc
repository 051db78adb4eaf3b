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

// setBusyPoll(us, adaptive, dutyPercent): us > 0 polls the sources of this
// thread for a fixed window after each batch (the old --busy-poll-us; a window
// longer than the spin's cap could never be used whole, so it is refused);
// us = 0 leaves the window to the adaptive policy when `adaptive`, else off.
Napi::Value SetBusyPoll(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t us = 0;
  uint32_t duty = 0;
  bool adaptive = false;
  if (!GetUint(env, info[0], "busyPollUs", Spinner::kSpinCapNs / 1000, &us) ||
      !GetBool(env, info[1], "adaptive", &adaptive) ||
      !GetUint(env, info[2], "dutyPercent", 100, &duty)) {
    return Napi::Value();
  }
  Spinner::Get().policy().Configure(adaptive, uint64_t{us} * 1000, duty);
  return env.Undefined();
}

// setLoopWait(on): whether this thread may sleep on libuv's epoll set itself
// after a conversation's batch (busy_poll.h, Spinner::Wait).
Napi::Value SetLoopWait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool on = false;
  if (!GetBool(env, info[0], "loopWait", &on)) return Napi::Value();
  Spinner::Get().SetLoopWait(on);
  return env.Undefined();
}

// setBusyPollRing(on): whether spins watch readiness through io_uring
// (poll_ring.h); returns 0, or the errno io_uring refused with.
Napi::Value SetBusyPollRing(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bool on = false;
  if (!GetBool(env, info[0], "busyPollRing", &on)) return Napi::Value();
  return Napi::Number::New(env, Spinner::Get().SetRing(on));
}

// busyPollStats(): {spins, caught, waitedNs, windowNs, waits, waitsCaught,
// followUps, followUpHits, ring, ringArms} of this thread.
Napi::Value BusyPollStats(const Napi::CallbackInfo& info) {
  Spinner& s = Spinner::Get();
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("spins", double(s.spins()));
  o.Set("caught", double(s.caught()));
  o.Set("waitedNs", double(s.waited_ns()));
  o.Set("windowNs", double(s.policy().window_ns()));
  o.Set("waits", double(s.waits()));
  o.Set("waitsCaught", double(s.waits_caught()));
  o.Set("followUps", double(s.follow_ups()));
  o.Set("followUpHits", double(s.follow_up_hits()));
  o.Set("ring", s.ring_on());
  o.Set("ringArms", double(s.ring_arms()));
  return o;
}

// busyPollTrace(adaptive, fixedUs, dutyPercent, steps): runs a fresh policy
// over `steps`, a flat array of [kind, nowNs, waitedNs] triples (kind 0: a
// wake, 1: the spin ran out, 2: the spin hit its cap), and returns the window
// chosen at each wake. For tests: the policy over a fake clock.
Napi::Value BusyPollTrace(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t fixed_us = 0;
  uint32_t duty = 0;
  if (!info[0].IsBoolean() ||
      !GetUint(env, info[1], "fixedUs", Spinner::kSpinCapNs / 1000, &fixed_us) ||
      !GetUint(env, info[2], "dutyPercent", 100, &duty) || !info[3].IsArray()) {
    if (!env.IsExceptionPending()) ThrowTypeError(env, "busyPollTrace(adaptive, fixedUs, dutyPercent, steps)");
    return Napi::Value();
  }
  AdaptiveWindow policy;
  policy.Configure(info[0].As<Napi::Boolean>().Value(), uint64_t{fixed_us} * 1000, duty);
  Napi::Array steps = info[3].As<Napi::Array>();
  Napi::Array windows = Napi::Array::New(env);
  uint32_t out = 0;
  for (uint32_t i = 0; i + 2 < steps.Length(); i += 3) {
    const uint32_t kind = steps.Get(i).As<Napi::Number>().Uint32Value();
    const uint64_t now = uint64_t(steps.Get(i + 1).As<Napi::Number>().DoubleValue());
    const uint64_t waited = uint64_t(steps.Get(i + 2).As<Napi::Number>().DoubleValue());
    if (kind == 0) {
      windows.Set(out++, double(policy.OnWake(now)));
    } else if (kind == 1) {
      policy.OnRanOut(now, waited);
    } else {
      policy.OnCapped(now, waited);
    }
  }
  return windows;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("PacketFd", PacketFd::Init(env));
  exports.Set("UdpSocket", UdpSocket::Init(env));
  static constexpr struct {
    const char* name;
    Napi::Function::Callback fn;
  } kFunctions[] = {
      {"openTun", OpenTun},
      {"socketpair", Socketpair},
      {"notify", Notify},
      {"nftGeneration", NftGeneration},
      {"releaseFilePages", ReleaseFilePages},
      {"reduceMemory", ReduceMemory},
      {"releasePages", ReleasePages},
      {"residentBytes", ResidentBytes},
      {"gsoSplit", GsoSplit},
      {"groMerge", GroMerge},
      {"setBusyPoll", SetBusyPoll},
      {"setLoopWait", SetLoopWait},
      {"setBusyPollRing", SetBusyPollRing},
      {"busyPollStats", BusyPollStats},
      {"busyPollTrace", BusyPollTrace},
  };
  for (const auto& f : kFunctions) {
    exports.Set(f.name, Napi::Function::New(env, f.fn, f.name));
  }
  return exports;
}

}  // namespace
}  // namespace weft

static Napi::Object InitWeft(Napi::Env env, Napi::Object exports) {
  return weft::Init(env, exports);
}

NODE_API_MODULE(weft, InitWeft)
