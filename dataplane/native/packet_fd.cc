#include "packet_fd.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "args.h"
#include "offload.h"

namespace weft {

Napi::Function PacketFd::Init(Napi::Env env) {
  auto members = SourceMembers();
  members.push_back(InstanceMethod("bindWrite", &PacketFd::BindWrite));
  members.push_back(InstanceMethod("write", &PacketFd::Write));
  members.push_back(
      InstanceAccessor("writeErrors", &PacketFd::WriteErrors, nullptr));
  members.push_back(
      InstanceAccessor("truncatedDrops", &PacketFd::TruncatedDrops, nullptr));
  return DefineClass(env, "PacketFd", members);
}

PacketFd::PacketFd(const Napi::CallbackInfo& info) : PollSource(info) {
  Napi::Env env = info.Env();
  uint32_t fd = 0;
  if (!GetUint(env, info[0], "fd", INT32_MAX, &fd)) return;
  ArrayView<uint8_t> bytes;
  ArrayView<uint32_t> lengths;
  ArrayView<uint16_t> gso_size;
  ArrayView<uint8_t> gso_type;
  bool ok = GetArray(env, info[1], "bytes", &bytes) &&
            GetArray(env, info[2], "lengths", &lengths) &&
            GetUint(env, info[3], "slotSize", 1 << 20, &slot_size_) &&
            GetUint(env, info[4], "capacity", 1 << 16, &capacity_);
  if (ok && (slot_size_ == 0 || capacity_ == 0)) {
    ThrowRangeError(env, "slotSize and capacity must be at least 1");
    ok = false;
  }
  if (ok && (bytes.length < uint64_t{slot_size_} * capacity_ ||
             lengths.length < capacity_)) {
    ThrowRangeError(env, "arena too small for capacity x slotSize");
    ok = false;
  }
  if (ok && info[5].IsObject()) {
    Napi::Object vnet = info[5].As<Napi::Object>();
    ok = GetArray(env, vnet.Get("gsoSize"), "vnet.gsoSize", &gso_size) &&
         GetArray(env, vnet.Get("gsoType"), "vnet.gsoType", &gso_type);
    if (ok && std::min(gso_size.length, gso_type.length) < capacity_) {
      ThrowRangeError(env, "vnet arrays shorter than capacity");
      ok = false;
    }
    vnet_ = ok;
  }
  if (!ok) {
    ::close(static_cast<int>(fd));
    return;
  }
  struct stat st;
  is_socket_ = fstat(static_cast<int>(fd), &st) == 0 && S_ISSOCK(st.st_mode);
  if (!Adopt(env, static_cast<int>(fd), "weft.PacketFd")) return;
  arena_watch_.Add(env, info[1]);
  arena_watch_.Add(env, info[2]);
  bytes_ = bytes.data;
  lengths_ = lengths.data;
  if (vnet_) {
    Napi::Object vnet = info[5].As<Napi::Object>();
    arena_watch_.Add(env, vnet.Get("gsoSize"));
    arena_watch_.Add(env, vnet.Get("gsoType"));
    gso_size_ = gso_size.data;
    gso_type_ = gso_type.data;
  }
}

// One packet into slot (and its virtio-net header into vnet_hdr when on).
// Returns what read()/recv() returns, the header's bytes included.
ssize_t PacketFd::ReadOne(uint8_t* slot, void* vnet_hdr) {
  if (!vnet_) {
    // recv(MSG_TRUNC) makes a socket report the real length like a TUN read
    // does, so an oversized packet is recognised on both.
    return is_socket_ ? recv(fd(), slot, slot_size_, MSG_TRUNC | MSG_DONTWAIT)
                      : read(fd(), slot, slot_size_);
  }
  iovec iov[2] = {{vnet_hdr, kVnetHdrLen}, {slot, slot_size_}};
  if (!is_socket_) return readv(fd(), iov, 2);
  msghdr h = {};
  h.msg_iov = iov;
  h.msg_iovlen = 2;
  return recvmsg(fd(), &h, MSG_TRUNC | MSG_DONTWAIT);
}

Drained PacketFd::Drain() {
  Drained d = DrainQueue();
  if (following_up_) {
    following_up_ = false;
    follow_up_hits_ = static_cast<uint8_t>(follow_up_hits_ << 1 | (d.count > 0 ? 1 : 0));
    Spinner::Get().CountFollowUp(d.count > 0);
  }
  // A read that found nothing (a follow-up's miss) says nothing of the pace.
  if (d.count > 0) {
    last_drain_count_ = d.count;
    last_drain_end_ = Spinner::Now();
  }
  return d;
}

Drained PacketFd::DrainQueue() {
  const char* syscall = is_socket_ ? "recv" : "read";
  const uint32_t hdr_len = vnet_ ? kVnetHdrLen : 0;
  // See kSmallPacket: one packet per wake-up lately, and a quiet spell since.
  const bool one_at_a_time =
      last_drain_count_ == 1 && Spinner::Now() - last_drain_end_ >= kQuietNs;
  // See kSingleDrains: every recent drain found one packet, so stop after
  // one unless this drain is the probe that keeps that record honest.
  const bool stop_at_one =
      single_drains_ == kSingleDrains && (++drain_probe_ & kProbeMask) != 0;
  uint32_t count = 0;
  for (uint32_t attempt = 0; attempt < capacity_ && count < capacity_;
       attempt++) {
    uint8_t* slot = bytes_ + size_t{count} * slot_size_;
    VnetHdr hdr = {};
    ssize_t n = ReadOne(slot, &hdr);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        // A drain read to the end: was it one packet?
        if (count > 0) {
          single_drains_ =
              static_cast<uint8_t>(single_drains_ << 1 | (count == 1 ? 1 : 0));
        }
        break;
      }
      return {count, errno, syscall};
    }
    // TUN never yields an empty packet; on a socket 0 is the peer's close.
    if (n == 0) return {count, kEndOfStream, syscall};
    if (static_cast<size_t>(n) < hdr_len ||
        static_cast<size_t>(n) - hdr_len > slot_size_) {
      truncated_drops_++;
      continue;
    }
    const uint32_t len = static_cast<uint32_t>(n) - hdr_len;
    if (vnet_) {
      const uint8_t type = hdr.gso_type & static_cast<uint8_t>(~kGsoEcn);
      if (type != kGsoNone && hdr.gso_size != 0) {
        gso_size_[count] = hdr.gso_size;
        gso_type_[count] = type;
      } else {
        gso_size_[count] = 0;
        gso_type_[count] = 0;
        if ((hdr.flags & kVnetNeedsCsum) != 0) {
          CompleteChecksum(slot, len, hdr.csum_start, hdr.csum_offset);
        }
      }
    }
    lengths_[count++] = len;
    if (stop_at_one) break;
    if (one_at_a_time && count == 1 && len <= kSmallPacket &&
        (!vnet_ || gso_size_[0] == 0)) {
      break;
    }
  }
  if (count == capacity_) single_drains_ = 0;
  return {count, 0, syscall};
}

// One packet (behind a virtio-net header when on). A super-packet's header
// says where its L4 checksum lies; the kernel completes it per segment.
// `tail` (tail_count iovecs) follow the packet's first `len` bytes in the
// same write: a run gathered from where its payloads lie.
ssize_t PacketFd::WriteOne(const uint8_t* packet, uint32_t len,
                           uint32_t gso_size, const iovec* tail,
                           uint32_t tail_count) {
  if (!vnet_) {
    // MSG_NOSIGNAL: a socket whose peer closed says EPIPE instead of SIGPIPE.
    return is_socket_ ? send(fd(), packet, len, MSG_NOSIGNAL | MSG_DONTWAIT)
                      : write(fd(), packet, len);
  }
  VnetHdr hdr = {};
  if (gso_size != 0 && len >= 20) {
    const uint32_t ihl = (packet[0] & 15u) * 4;
    if (packet[9] == 6 && len >= ihl + 20) {
      hdr.gso_type = kGsoTcpV4;
      hdr.hdr_len = static_cast<uint16_t>(ihl + (packet[ihl + 12] >> 4) * 4u);
      hdr.csum_offset = 16;
    } else if (packet[9] == 17 && len >= ihl + 8) {
      hdr.gso_type = kGsoUdpL4;
      hdr.hdr_len = static_cast<uint16_t>(ihl + 8);
      hdr.csum_offset = 6;
    }
    if (hdr.gso_type != kGsoNone) {
      hdr.flags = kVnetNeedsCsum;
      hdr.gso_size = static_cast<uint16_t>(gso_size);
      hdr.csum_start = static_cast<uint16_t>(ihl);
    }
  }
  iovec iov[2 + kMaxRun] = {{&hdr, kVnetHdrLen},
                            {const_cast<uint8_t*>(packet), len}};
  for (uint32_t k = 0; k < tail_count; k++) iov[2 + k] = tail[k];
  const int n = static_cast<int>(2 + tail_count);
  if (!is_socket_) return writev(fd(), iov, n);
  msghdr h = {};
  h.msg_iov = iov;
  h.msg_iovlen = static_cast<size_t>(n);
  return sendmsg(fd(), &h, MSG_NOSIGNAL | MSG_DONTWAIT);
}

// The header bytes (IP + TCP/UDP) every member of a gathered run drops: 0
// when the head is neither.
static uint32_t RunHeaderLength(const uint8_t* p, uint32_t len) {
  if (len < 20) return 0;
  const uint32_t ihl = (p[0] & 15u) * 4;
  if (p[9] == 6 && len >= ihl + 20) return ihl + (p[ihl + 12] >> 4) * 4u;
  if (p[9] == 17 && len >= ihl + 8) return ihl + 8;
  return 0;
}

Napi::Value PacketFd::BindWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  BoundArrays a;
  if (!GetArray(env, info[0], "bytes", &a.bytes) ||
      !GetArray(env, info[1], "offsets", &a.offsets) ||
      !GetArray(env, info[2], "lengths", &a.lengths)) {
    return Napi::Value();
  }
  a.shortest = std::min(a.offsets.length, a.lengths.length);
  if (!info[3].IsUndefined()) {
    if (!GetArray(env, info[3], "gsoSize", &a.gso)) return Napi::Value();
    if (!vnet_) {
      ThrowRangeError(env, "gsoSize needs a device with virtio-net headers");
      return Napi::Value();
    }
    a.shortest = std::min(a.shortest, a.gso.length);
  }
  if (!info[4].IsUndefined()) {
    if (a.gso.data == nullptr) {
      ThrowRangeError(env, "runs needs gsoSize");
      return Napi::Value();
    }
    if (!GetArray(env, info[4], "runs", &a.runs)) return Napi::Value();
    a.shortest = std::min(a.shortest, a.runs.length);
  }
  a.Keep({info[0], info[1], info[2], info[3], info[4]}, env);
  bound_ = std::move(a);
  return env.Undefined();
}

Napi::Value PacketFd::Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckOpen(env, "write")) return Napi::Value();
  uint32_t start = 0;
  uint32_t count = 0;
  if (!bound_.Batch(info, "write", &start, &count)) return Napi::Value();
  const auto& bytes = bound_.bytes;
  const auto& offsets = bound_.offsets;
  const auto& lengths = bound_.lengths;
  const auto& gso = bound_.gso;
  const bool has_gso = gso.data != nullptr;
  const uint16_t* runs = bound_.runs.data;
  // A run is checked whole before anything is written: it lies inside the
  // batch, and every member holds the header it drops.
  auto run_of = [&](uint32_t i) -> uint32_t {
    return runs != nullptr && gso.data[i] != 0 && runs[i] >= 2 ? runs[i] : 1;
  };
  if (runs != nullptr) {
    for (uint32_t i = start; i < start + count; i += run_of(i)) {
      const uint32_t k = run_of(i);
      if (k == 1) continue;
      const uint32_t hdr = RunHeaderLength(bytes.data + offsets.data[i],
                                           lengths.data[i]);
      bool ok = k <= kMaxRun + 1 && uint64_t{i} + k <= uint64_t{start} + count &&
                hdr != 0;
      for (uint32_t j = i + 1; ok && j < i + k; j++) {
        ok = lengths.data[j] >= hdr;
      }
      if (!ok) {
        ThrowRangeError(env, "write: the run of entry " + std::to_string(i) +
                                 " (" + std::to_string(k) +
                                 " packets) is not a run of this batch");
        return Napi::Value();
      }
    }
  }
  // One write() per packet: a TUN fd takes a writev as ONE packet, which is
  // how a run goes out gathered.
  iovec tail[kMaxRun];
  uint32_t done = 0;
  while (done < count) {
    uint32_t i = start + done;
    const uint32_t k = run_of(i);
    if (k > 1) {
      const uint32_t hdr = RunHeaderLength(bytes.data + offsets.data[i],
                                           lengths.data[i]);
      for (uint32_t j = 1; j < k; j++) {
        tail[j - 1] = {bytes.data + offsets.data[i + j] + hdr,
                       lengths.data[i + j] - hdr};
      }
    }
    ssize_t n = WriteOne(bytes.data + offsets.data[i], lengths.data[i],
                         has_gso ? gso.data[i] : 0, tail, k - 1);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      write_errors_++;
    }
    done += k;
  }
  if (done > 0) ArmFollowUp();
  return Napi::Number::New(env, done);
}

Napi::Value PacketFd::WriteErrors(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), write_errors_);
}

Napi::Value PacketFd::TruncatedDrops(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), truncated_drops_);
}

Napi::Value Socketpair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0,
                 fds) != 0) {
    ThrowSysError(env, errno, "socketpair", "");
    return Napi::Value();
  }
  Napi::Array pair = Napi::Array::New(env, 2);
  pair.Set(uint32_t{0}, Napi::Number::New(env, fds[0]));
  pair.Set(uint32_t{1}, Napi::Number::New(env, fds[1]));
  return pair;
}

}  // namespace weft
