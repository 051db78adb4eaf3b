// Which destinations get their UDP GSO runs sent datagram by datagram, and
// until when. The kernel refuses a run (EINVAL: a segment longer than the
// path MTU to that peer; EIO: no checksum offload on the route) for reasons
// that belong to one path, and that a single ICMP "fragmentation needed",
// spoofed or not, can cause: so one refusal must cost that peer its runs for
// a while, not every peer for good.
//
//   run to P ──► Active(P)? ──yes──► datagram by datagram
//                   │no
//                   ▼
//              UDP_SEGMENT ──EINVAL/EIO──► Record(P): P falls back for retry_ns,
//                                          then its next run tries GSO again
//
// Lookups cost nothing while no peer has fallen back (the common case); the
// table is bounded, and forgets everyone at once when full of live entries
// (they then retry GSO, which is only a wasted syscall each).
#pragma once

#include <time.h>

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <unordered_map>

namespace weft {

class GsoFallbacks {
 public:
  static constexpr size_t kMaxEntries = 4096;

  void set_retry_ns(uint64_t ns) { retry_ns_ = ns; }

  // Whether runs to addr:port (network order) go datagram by datagram now.
  bool Active(uint32_t addr, uint16_t port) {
    if (until_.empty()) return false;
    auto it = until_.find(Key(addr, port));
    if (it == until_.end()) return false;
    if (Now() < it->second) return true;
    until_.erase(it);
    return false;
  }

  // The kernel refused a run to addr:port.
  void Record(uint32_t addr, uint16_t port) {
    count_++;
    const uint64_t now = Now();
    if (until_.size() >= kMaxEntries) {
      for (auto it = until_.begin(); it != until_.end();) {
        it = now >= it->second ? until_.erase(it) : std::next(it);
      }
      if (until_.size() >= kMaxEntries) until_.clear();
    }
    until_[Key(addr, port)] = now + retry_ns_;
  }

  // Runs refused so far (each one made its peer fall back).
  double count() const { return count_; }

 private:
  static uint64_t Key(uint32_t addr, uint16_t port) {
    return (uint64_t{addr} << 16) | port;
  }
  static uint64_t Now() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1'000'000'000u + uint64_t(ts.tv_nsec);
  }

  uint64_t retry_ns_ = 30'000'000'000u;
  double count_ = 0;
  std::unordered_map<uint64_t, uint64_t> until_;
};

}  // namespace weft
