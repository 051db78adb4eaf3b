// A packet fd: an fd whose every read() is one packet and every write() sends
// one packet — a TUN queue, or one end of a SOCK_SEQPACKET socketpair (tests).
// With a virtio-net header (IFF_VNET_HDR) each packet travels behind a
// struct virtio_net_hdr; this class reads and writes that header itself, so
// the arena only ever holds IP packets.
#pragma once

#include <napi.h>

#include <sys/uio.h>

#include <cstdint>

#include "args.h"
#include "poll_source.h"

namespace weft {

class PacketFd : public PollSource<PacketFd> {
 public:
  static Napi::Function Init(Napi::Env env);

  // new PacketFd(fd, bytes: Uint8Array, lengths: Uint32Array, slotSize,
  // capacity, vnet?: {gsoSize: Uint16Array, gsoType: Uint8Array}). Owns fd
  // from here on, also when the constructor throws. With `vnet` the fd
  // carries virtio-net headers.
  explicit PacketFd(const Napi::CallbackInfo& info);

  // Reads up to capacity packets: packet i into bytes[i * slotSize, ...),
  // its length into lengths[i]. A packet longer than slotSize is dropped and
  // counted in truncatedDrops (the kernel tells its real length). With vnet:
  // a packet whose checksum the kernel left partial (NEEDS_CSUM) has it
  // completed; a GSO super-packet gets gsoSize[i] (payload bytes per
  // segment) and gsoType[i] (VIRTIO_NET_HDR_GSO_*), others 0.
  Drained Drain();
  // The first packet of the last batch (its length in the arena).
  uint32_t FirstLength() const { return lengths_[0]; }

  bool TakeFollowUp() override {
    if (!follow_up_armed_) return false;
    follow_up_armed_ = false;
    following_up_ = true;
    return true;
  }

 private:
  // A drain whose first packet is this small, after a drain of one packet
  // that ended this long ago, stops without the read that would only say
  // EAGAIN: request-response traffic (one packet per wake-up) saves a system
  // call per hop, while floods (several packets per drain) keep draining to
  // EAGAIN. Nothing is lost by stopping early: the poll is level-triggered,
  // so a packet left queued wakes the next loop turn.
  static constexpr uint32_t kSmallPacket = kConversationPacket;
  static constexpr uint64_t kQuietNs = 20'000;
  // Under load too: while each of the last 8 drains read to EAGAIN found
  // exactly one packet (a TCP sender's super-packets, one per wake-up, or a
  // request-response), a drain stops after its first packet, without the
  // read that would most likely say EAGAIN. Every 8th drain still reads to
  // the end, so a second packet queued behind the first shows up in the
  // record within 8 drains and the rule stops applying. Stopping early loses
  // and reorders nothing: the poll is level-triggered, so a packet left
  // queued is read on the next loop turn, in order.
  static constexpr uint8_t kSingleDrains = 0xff;
  static constexpr uint8_t kProbeMask = 7;

  // After a write, whether to read back at once (busy_poll.h, TakeFollowUp):
  // while one of the last 8 follow-ups found a packet, and as a probe every
  // 16th write otherwise, so a device whose peer never answers at once costs
  // one EAGAIN read per 16 writes.
  void ArmFollowUp() {
    follow_up_armed_ = follow_up_hits_ != 0 || (++follow_up_probe_ & 15) == 0;
  }

  // bindWrite(bytes, offsets, lengths, gsoSize?, runs?): the arrays the
  // following writes read, until the next bindWrite. With vnet, gsoSize[i] >
  // 0 marks a TCP/UDP super-packet (its L4 checksum seeded with the
  // pseudo-header sum) that the kernel segments. runs[i] >= 2 (with
  // gsoSize[i] > 0) makes entries i .. i + runs[i] - 1 one super-packet
  // written from pieces: entry i whole (its headers already fixed for the
  // run, groMerge's gather), then each member's payload; the run's entries
  // count as consumed together.
  Napi::Value BindWrite(const Napi::CallbackInfo& info);
  // write(start, count) -> packets consumed.
  Napi::Value Write(const Napi::CallbackInfo& info);
  Napi::Value WriteErrors(const Napi::CallbackInfo& info);
  Napi::Value TruncatedDrops(const Napi::CallbackInfo& info);

  Drained DrainQueue();
  ssize_t ReadOne(uint8_t* slot, void* vnet_hdr);
  // The most members a gathered run adds to its head (GRO_MAX_SEGMENTS - 1).
  static constexpr uint32_t kMaxRun = 63;
  ssize_t WriteOne(const uint8_t* packet, uint32_t len, uint32_t gso_size,
                   const iovec* tail = nullptr, uint32_t tail_count = 0);

  // Into the receive arena (watched by arena_watch_).
  uint8_t* bytes_ = nullptr;
  uint32_t* lengths_ = nullptr;
  uint16_t* gso_size_ = nullptr;
  uint8_t* gso_type_ = nullptr;
  BoundArrays bound_;
  uint32_t slot_size_ = 0;
  uint32_t capacity_ = 0;
  bool is_socket_ = false;
  bool vnet_ = false;
  bool follow_up_armed_ = false;
  bool following_up_ = false;
  uint8_t follow_up_hits_ = 1;  // the last 8 follow-ups, newest in bit 0
  uint8_t follow_up_probe_ = 0;
  uint8_t single_drains_ = 0;  // the last 8 drains read to EAGAIN, newest in bit 0: one packet?
  uint8_t drain_probe_ = 0;
  uint32_t last_drain_count_ = 0;
  uint64_t last_drain_end_ = 0;
  double write_errors_ = 0;
  double truncated_drops_ = 0;
};

// socketpair() -> [fdA, fdB]: AF_UNIX SOCK_SEQPACKET, non-blocking, cloexec.
Napi::Value Socketpair(const Napi::CallbackInfo& info);

}  // namespace weft
