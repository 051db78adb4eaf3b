#include "packet_fd.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "args.h"

namespace weft {

Napi::Function PacketFd::Init(Napi::Env env) {
  auto members = SourceMembers();
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
  if (!ok) {
    ::close(static_cast<int>(fd));
    return;
  }
  struct stat st;
  is_socket_ = fstat(static_cast<int>(fd), &st) == 0 && S_ISSOCK(st.st_mode);
  if (!Adopt(env, static_cast<int>(fd), "weft.PacketFd")) return;
  bytes_ref_ = Napi::Persistent(info[1]);
  lengths_ref_ = Napi::Persistent(info[2]);
  bytes_ = bytes.data;
  lengths_ = lengths.data;
}

Drained PacketFd::Drain() {
  // recv(MSG_TRUNC) makes a socket report the real length like a TUN read
  // does, so an oversized packet is recognised on both.
  const char* syscall = is_socket_ ? "recv" : "read";
  uint32_t count = 0;
  for (uint32_t attempt = 0; attempt < capacity_ && count < capacity_;
       attempt++) {
    uint8_t* slot = bytes_ + size_t{count} * slot_size_;
    ssize_t n = is_socket_ ? recv(fd(), slot, slot_size_, MSG_TRUNC | MSG_DONTWAIT)
                           : read(fd(), slot, slot_size_);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return {count, errno, syscall};
    }
    // TUN never yields an empty packet; on a socket 0 is the peer's close.
    if (n == 0) return {count, kEndOfStream, syscall};
    if (static_cast<size_t>(n) > slot_size_) {
      truncated_drops_++;
      continue;
    }
    lengths_[count++] = static_cast<uint32_t>(n);
  }
  return {count, 0, syscall};
}

Napi::Value PacketFd::Write(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckOpen(env, "write")) return Napi::Value();
  ArrayView<uint8_t> bytes;
  ArrayView<uint32_t> offsets;
  ArrayView<uint32_t> lengths;
  uint32_t start = 0;
  uint32_t count = 0;
  if (!GetArray(env, info[0], "bytes", &bytes) ||
      !GetArray(env, info[1], "offsets", &offsets) ||
      !GetArray(env, info[2], "lengths", &lengths) ||
      !GetUint(env, info[3], "start", UINT32_MAX, &start) ||
      !GetUint(env, info[4], "count", UINT32_MAX, &count) ||
      !CheckBatchRange(env, start, count,
                       std::min(offsets.length, lengths.length)) ||
      !CheckPackets(env, offsets, lengths, start, count, bytes.length)) {
    return Napi::Value();
  }
  // One write() per packet: a TUN fd takes a writev as ONE packet.
  uint32_t done = 0;
  while (done < count) {
    uint32_t i = start + done;
    const uint8_t* packet = bytes.data + offsets.data[i];
    // MSG_NOSIGNAL: a socket whose peer closed says EPIPE instead of SIGPIPE.
    ssize_t n = is_socket_ ? send(fd(), packet, lengths.data[i],
                                  MSG_NOSIGNAL | MSG_DONTWAIT)
                           : write(fd(), packet, lengths.data[i]);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      write_errors_++;
    }
    done++;
  }
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
