// A packet fd: an fd whose every read() is one packet and every write() sends
// one packet — a TUN queue, or one end of a SOCK_SEQPACKET socketpair (tests).
#pragma once

#include <napi.h>

#include <cstdint>

#include "poll_source.h"

namespace weft {

class PacketFd : public PollSource<PacketFd> {
 public:
  static Napi::Function Init(Napi::Env env);

  // new PacketFd(fd, bytes: Uint8Array, lengths: Uint32Array, slotSize,
  // capacity). Owns fd from here on, also when the constructor throws.
  explicit PacketFd(const Napi::CallbackInfo& info);

  // Reads up to capacity packets: packet i into bytes[i * slotSize, ...),
  // its length into lengths[i]. A packet longer than slotSize is dropped and
  // counted in truncatedDrops (the kernel tells its real length).
  Drained Drain();

 private:
  // write(bytes, offsets, lengths, start, count) -> packets consumed.
  Napi::Value Write(const Napi::CallbackInfo& info);
  Napi::Value WriteErrors(const Napi::CallbackInfo& info);
  Napi::Value TruncatedDrops(const Napi::CallbackInfo& info);

  Napi::Reference<Napi::Value> bytes_ref_;
  Napi::Reference<Napi::Value> lengths_ref_;
  uint8_t* bytes_ = nullptr;
  uint32_t* lengths_ = nullptr;
  uint32_t slot_size_ = 0;
  uint32_t capacity_ = 0;
  bool is_socket_ = false;
  double write_errors_ = 0;
  double truncated_drops_ = 0;
};

// socketpair() -> [fdA, fdB]: AF_UNIX SOCK_SEQPACKET, non-blocking, cloexec.
Napi::Value Socketpair(const Napi::CallbackInfo& info);

}  // namespace weft
