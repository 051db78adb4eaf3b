#include "udp_socket.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/udp.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "args.h"

namespace weft {

namespace {

// sendmmsg takes at most UIO_MAXIOV (1024) messages per call; a larger
// capacity still gets one header per slot.
constexpr uint32_t kMinSendChunk = 1024;

// Control buffers: UDP_GRO delivers an int, UDP_SEGMENT takes a uint16_t.
constexpr size_t kRxCtlBytes = CMSG_SPACE(sizeof(int));
constexpr size_t kTxCtlBytes = CMSG_SPACE(sizeof(uint16_t));
constexpr size_t kRxCtlWords = (kRxCtlBytes + 7) / 8;
constexpr size_t kTxCtlWords = (kTxCtlBytes + 7) / 8;
// iovecs one message may carry (UIO_MAXIOV), and the pool pieced run
// entries share per chunk (a chunk ends early when it is used up).
constexpr uint32_t kMaxIov = 1024;
constexpr uint32_t kPieceIovPool = 4096;

std::string FormatAddress(uint32_t addr, uint32_t port) {
  return std::to_string(addr >> 24) + "." + std::to_string((addr >> 16) & 255) +
         "." + std::to_string((addr >> 8) & 255) + "." +
         std::to_string(addr & 255) + ":" + std::to_string(port);
}

// Raises a socket buffer, past net.core.[rw]mem_max when allowed
// (CAP_NET_ADMIN), else up to that limit.
int SetBuffer(int fd, int force_opt, int opt, int bytes) {
  if (setsockopt(fd, SOL_SOCKET, force_opt, &bytes, sizeof bytes) == 0) return 0;
  if (setsockopt(fd, SOL_SOCKET, opt, &bytes, sizeof bytes) == 0) return 0;
  return errno;
}

int GetBuffer(int fd, int opt) {
  int value = 0;
  socklen_t len = sizeof value;
  getsockopt(fd, SOL_SOCKET, opt, &value, &len);
  return value;
}

}  // namespace

Napi::Function UdpSocket::Init(Napi::Env env) {
  auto members = SourceMembers();
  members.push_back(InstanceMethod("bindSend", &UdpSocket::BindSend));
  members.push_back(InstanceMethod("send", &UdpSocket::Send));
  members.push_back(
      InstanceAccessor("sendErrors", &UdpSocket::SendErrors, nullptr));
  members.push_back(
      InstanceAccessor("sendRetries", &UdpSocket::SendRetries, nullptr));
  members.push_back(InstanceAccessor("gsoFallbacks",
                                     &UdpSocket::GsoFallbacksGetter, nullptr));
  members.push_back(
      InstanceMethod("injectSendErrors", &UdpSocket::InjectSendErrors));
  members.push_back(
      InstanceAccessor("localPort", &UdpSocket::LocalPort, nullptr));
  members.push_back(
      InstanceAccessor("recvBufferSize", &UdpSocket::RecvBufferSize, nullptr));
  members.push_back(
      InstanceAccessor("sendBufferSize", &UdpSocket::SendBufferSize, nullptr));
  members.push_back(InstanceAccessor("gro", &UdpSocket::Gro, nullptr));
  return DefineClass(env, "UdpSocket", members);
}

UdpSocket::UdpSocket(const Napi::CallbackInfo& info) : PollSource(info) {
  Napi::Env env = info.Env();
  uint32_t addr = 0;
  uint32_t port = 0;
  uint32_t buffer_bytes = 0;
  if (!GetUint(env, info[0], "bindAddr", UINT32_MAX, &addr) ||
      !GetUint(env, info[1], "port", 65535, &port) ||
      !ReadArena(env, info[2]) ||
      !GetUint(env, info[3], "bufferBytes", INT32_MAX / 2, &buffer_bytes)) {
    return;
  }
  bool offload = false;
  if (info[4].IsObject()) {
    Napi::Object opts = info[4].As<Napi::Object>();
    offload = opts.Get("offload").ToBoolean();
    Napi::Value retry = opts.Get("gsoRetryMs");
    uint32_t retry_ms = 0;
    if (!retry.IsUndefined()) {
      if (!GetUint(env, retry, "gsoRetryMs", kMaxGsoRetryMs, &retry_ms)) return;
      fallbacks_.set_retry_ns(uint64_t{retry_ms} * 1'000'000);
    }
  }
  if (offload && seg_size_ == nullptr) {
    ThrowTypeError(env, "offload needs arena.segSize");
    return;
  }

  rx_msgs_.resize(capacity_);
  rx_iov_.resize(capacity_);
  rx_from_.resize(capacity_);
  for (uint32_t i = 0; i < capacity_; i++) {
    rx_iov_[i] = {bytes_ + size_t{i} * slot_size_, slot_size_};
    msghdr& h = rx_msgs_[i].msg_hdr;
    h = {};
    h.msg_name = &rx_from_[i];
    h.msg_iov = &rx_iov_[i];
    h.msg_iovlen = 1;
  }
  uint32_t chunk = std::max(capacity_, kMinSendChunk);
  tx_msgs_.resize(chunk);
  tx_iov_.resize(chunk);
  tx_to_.resize(chunk);
  tx_ctl_.assign(size_t{chunk} * kTxCtlWords, 0);
  for (uint32_t i = 0; i < chunk; i++) {
    msghdr& h = tx_msgs_[i].msg_hdr;
    h = {};
    h.msg_name = &tx_to_[i];
    h.msg_namelen = sizeof(sockaddr_in);
    h.msg_iov = &tx_iov_[i];
    h.msg_iovlen = 1;
    tx_to_[i] = {};
    tx_to_[i].sin_family = AF_INET;
  }

  tx_piece_iov_.resize(kPieceIovPool);
  seg_msgs_.resize(kMaxGsoSegments);
  seg_iov_.resize(kMaxGsoSegments);
  for (uint32_t i = 0; i < kMaxGsoSegments; i++) {
    seg_msgs_[i].msg_hdr = {};
    seg_msgs_[i].msg_hdr.msg_iov = &seg_iov_[i];
    seg_msgs_[i].msg_hdr.msg_iovlen = 1;
    seg_msgs_[i].msg_hdr.msg_namelen = sizeof(sockaddr_in);
  }

  int fd = -1;
  if (!SetupSocket(env, addr, port, buffer_bytes, offload, &fd)) return;
  if (gro_) {
    rx_ctl_.assign(size_t{capacity_} * kRxCtlWords, 0);
    for (uint32_t i = 0; i < capacity_; i++) {
      rx_msgs_[i].msg_hdr.msg_control = &rx_ctl_[size_t{i} * kRxCtlWords];
    }
  }
  Adopt(env, fd, "weft.UdpSocket");
}

bool UdpSocket::ReadArena(Napi::Env env, Napi::Value value) {
  if (!value.IsObject()) {
    ThrowTypeError(env, "arena must be an object");
    return false;
  }
  Napi::Object arena = value.As<Napi::Object>();
  Napi::Value bytes_v = arena.Get("bytes");
  Napi::Value lengths_v = arena.Get("lengths");
  Napi::Value src_addr_v = arena.Get("srcAddr");
  Napi::Value src_port_v = arena.Get("srcPort");
  Napi::Value truncated_v = arena.Get("truncated");
  Napi::Value seg_size_v = arena.Get("segSize");
  Napi::Value state_v = arena.Get("state");
  ArrayView<uint8_t> bytes;
  ArrayView<uint32_t> lengths;
  ArrayView<uint32_t> src_addr;
  ArrayView<uint16_t> src_port;
  ArrayView<uint8_t> truncated;
  ArrayView<uint32_t> state;
  if (!GetArray(env, bytes_v, "arena.bytes", &bytes) ||
      !GetArray(env, lengths_v, "arena.lengths", &lengths) ||
      !GetArray(env, src_addr_v, "arena.srcAddr", &src_addr) ||
      !GetArray(env, src_port_v, "arena.srcPort", &src_port) ||
      !GetArray(env, truncated_v, "arena.truncated", &truncated) ||
      !GetArray(env, state_v, "arena.state", &state) ||
      !GetUint(env, arena.Get("slotSize"), "arena.slotSize", 1 << 20,
               &slot_size_) ||
      !GetUint(env, arena.Get("capacity"), "arena.capacity", 1 << 16,
               &capacity_)) {
    return false;
  }
  if (slot_size_ == 0 || capacity_ == 0) {
    ThrowRangeError(env, "slotSize and capacity must be at least 1");
    return false;
  }
  if (bytes.length < uint64_t{slot_size_} * capacity_ ||
      std::min({lengths.length, src_addr.length, src_port.length,
                truncated.length}) < capacity_) {
    ThrowRangeError(env, "arena too small for capacity x slotSize");
    return false;
  }
  if (state.length < kStateWords) {
    ThrowRangeError(env, "arena.state needs " + std::to_string(kStateWords) +
                             " entries");
    return false;
  }
  if (!seg_size_v.IsUndefined()) {
    ArrayView<uint16_t> seg_size;
    if (!GetArray(env, seg_size_v, "arena.segSize", &seg_size)) return false;
    if (seg_size.length < capacity_) {
      ThrowRangeError(env, "arena.segSize shorter than capacity");
      return false;
    }
    seg_size_ = seg_size.data;
    arena_watch_.Add(env, seg_size_v);
  }
  for (Napi::Value v :
       {bytes_v, lengths_v, src_addr_v, src_port_v, truncated_v}) {
    arena_watch_.Add(env, v);
  }
  state_watch_.Add(env, state_v);
  bytes_ = bytes.data;
  lengths_ = lengths.data;
  src_addr_ = src_addr.data;
  src_port_ = src_port.data;
  truncated_ = truncated.data;
  state_ = state.data;
  state_[kStateGsoSegments] = 0;
  state_[kStateRetryLater] = 0;
  return true;
}

bool UdpSocket::SetupSocket(Napi::Env env, uint32_t addr, uint32_t port,
                            uint32_t buffer_bytes, bool offload, int* out_fd) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    ThrowSysError(env, errno, "socket", "");
    return false;
  }
  int err = 0;
  const char* failed = nullptr;
  if (buffer_bytes > 0) {
    int bytes = static_cast<int>(buffer_bytes);
    if ((err = SetBuffer(fd, SO_RCVBUFFORCE, SO_RCVBUF, bytes)) != 0) {
      failed = "SO_RCVBUF";
    } else if ((err = SetBuffer(fd, SO_SNDBUFFORCE, SO_SNDBUF, bytes)) != 0) {
      failed = "SO_SNDBUF";
    }
  }
  if (offload) {
    // Kernels before 4.18 (UDP_SEGMENT) / 5.0 (UDP_GRO) say ENOPROTOOPT:
    // then this socket simply sends and receives one datagram at a time.
    // GRO only into slots that hold the largest run (64 KiB).
    int one = 1;
    int zero = 0;
    gro_ = slot_size_ >= 65535 &&
           setsockopt(fd, SOL_UDP, UDP_GRO, &one, sizeof one) == 0;
    SetGso(setsockopt(fd, SOL_UDP, UDP_SEGMENT, &zero, sizeof zero) == 0);
  }
  if (failed != nullptr) {
    ::close(fd);
    ThrowSysError(env, err, "setsockopt", failed);
    return false;
  }
  sockaddr_in sa = {};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(static_cast<uint16_t>(port));
  sa.sin_addr.s_addr = htonl(addr);
  if (bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) != 0) {
    err = errno;
    ::close(fd);
    ThrowSysError(env, err, "bind", FormatAddress(addr, port));
    return false;
  }
  socklen_t len = sizeof sa;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len) != 0) {
    err = errno;
    ::close(fd);
    ThrowSysError(env, err, "getsockname", "");
    return false;
  }
  local_port_ = ntohs(sa.sin_port);
  recv_buffer_ = GetBuffer(fd, SO_RCVBUF);
  send_buffer_ = GetBuffer(fd, SO_SNDBUF);
  *out_fd = fd;
  return true;
}

Drained UdpSocket::Drain() {
  uint32_t count = 0;
  while (count < capacity_) {
    uint32_t want = capacity_ - count;
    for (uint32_t i = count; i < capacity_; i++) {
      rx_msgs_[i].msg_hdr.msg_namelen = sizeof(sockaddr_in);
      if (gro_) rx_msgs_[i].msg_hdr.msg_controllen = kRxCtlBytes;
    }
    // MSG_TRUNC: msg_len is the datagram's real length even when it was cut.
    int n = recvmmsg(fd(), &rx_msgs_[count], want, MSG_DONTWAIT | MSG_TRUNC,
                     nullptr);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      return {count, errno, "recvmmsg"};
    }
    for (uint32_t i = count; i < count + static_cast<uint32_t>(n); i++) {
      const msghdr& h = rx_msgs_[i].msg_hdr;
      lengths_[i] = rx_msgs_[i].msg_len;
      truncated_[i] = (h.msg_flags & MSG_TRUNC) != 0 ? 1 : 0;
      if (h.msg_namelen >= sizeof(sockaddr_in)) {
        src_addr_[i] = ntohl(rx_from_[i].sin_addr.s_addr);
        src_port_[i] = ntohs(rx_from_[i].sin_port);
      } else {
        src_addr_[i] = 0;
        src_port_[i] = 0;
      }
      if (seg_size_ != nullptr) {
        uint32_t seg = 0;
        if (gro_) {
          for (cmsghdr* c = CMSG_FIRSTHDR(&h); c != nullptr;
               c = CMSG_NXTHDR(const_cast<msghdr*>(&h), c)) {
            if (c->cmsg_level == SOL_UDP && c->cmsg_type == UDP_GRO) {
              int v = 0;
              memcpy(&v, CMSG_DATA(c), sizeof v);
              if (v > 0 && static_cast<uint32_t>(v) < lengths_[i]) seg = v;
            }
          }
        }
        seg_size_[i] = static_cast<uint16_t>(seg);
      }
    }
    count += static_cast<uint32_t>(n);
    // Fewer than asked: the queue ran dry, another call would say EAGAIN.
    if (static_cast<uint32_t>(n) < want) break;
  }
  return {count, 0, "recvmmsg"};
}

Napi::Value UdpSocket::BindSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  BoundArrays a;
  if (!GetArray(env, info[0], "bytes", &a.bytes) ||
      !GetArray(env, info[1], "offsets", &a.offsets) ||
      !GetArray(env, info[2], "lengths", &a.lengths) ||
      !GetArray(env, info[3], "dstAddr", &a.addrs) ||
      !GetArray(env, info[4], "dstPort", &a.ports)) {
    return Napi::Value();
  }
  a.shortest = std::min({a.offsets.length, a.lengths.length, a.addrs.length,
                         a.ports.length});
  if (!info[5].IsUndefined()) {
    if (!GetArray(env, info[5], "segSize", &a.gso)) return Napi::Value();
    a.shortest = std::min(a.shortest, a.gso.length);
  }
  napi_value pieces[4] = {nullptr, nullptr, nullptr, nullptr};
  if (info.Length() > 6 && !info[6].IsUndefined()) {
    if (!info[6].IsObject() || a.gso.data == nullptr) {
      Napi::TypeError::New(env, "bindSend: pieces must be an object, with segSize")
          .ThrowAsJavaScriptException();
      return Napi::Value();
    }
    Napi::Object o = info[6].As<Napi::Object>();
    Napi::Value first = o.Get("first");
    Napi::Value count = o.Get("count");
    Napi::Value offs = o.Get("offsets");
    Napi::Value lens = o.Get("lengths");
    if (!GetArray(env, first, "pieces.first", &a.piece_first) ||
        !GetArray(env, count, "pieces.count", &a.piece_count) ||
        !GetArray(env, offs, "pieces.offsets", &a.piece_offsets) ||
        !GetArray(env, lens, "pieces.lengths", &a.piece_lengths)) {
      return Napi::Value();
    }
    a.shortest = std::min({a.shortest, a.piece_first.length,
                           a.piece_count.length});
    pieces[0] = first;
    pieces[1] = count;
    pieces[2] = offs;
    pieces[3] = lens;
  }
  a.Keep({info[0], info[1], info[2], info[3], info[4], info[5]}, env);
  for (napi_value v : pieces) {
    if (v != nullptr) a.watch.Add(env, v);
  }
  tx_bound_ = std::move(a);
  return env.Undefined();
}

Napi::Value UdpSocket::Send(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!CheckOpen(env, "sendmmsg")) return Napi::Value();
  uint32_t start = 0;
  uint32_t count = 0;
  if (!tx_bound_.Batch(info, "send", &start, &count)) return Napi::Value();
  if (!state_watch_.Intact(env)) {
    ThrowDetached(env, "send", "arena.state");
    return Napi::Value();
  }
  const BoundArrays& a = tx_bound_;
  const auto& bytes = a.bytes;
  const auto& offsets = a.offsets;
  const auto& lengths = a.lengths;
  const auto& dst_addr = a.addrs;
  const auto& dst_port = a.ports;
  const auto& seg_size = a.gso;
  const bool has_seg = seg_size.data != nullptr;
  const bool has_pieces = a.piece_count.data != nullptr;
  const size_t piece_room =
      std::min(a.piece_offsets.length, a.piece_lengths.length);
  // Entry i is a run of datagrams when segSize[i] > 0 and it is longer than
  // one segment: one message with a UDP_SEGMENT control message.
  auto run_segment = [&](uint32_t i) -> uint32_t {
    uint32_t seg = has_seg ? seg_size.data[i] : 0;
    return seg != 0 && lengths.data[i] > seg ? seg : 0;
  };
  // Pieces of entry i (0: one span). Out-of-range pieces are a caller bug.
  auto piece_count = [&](uint32_t i) -> uint32_t {
    if (!has_pieces || run_segment(i) == 0) return 0;
    return a.piece_count.data[i];
  };
  auto destination = [&](uint32_t i) {
    sockaddr_in to = {};
    to.sin_family = AF_INET;
    to.sin_addr.s_addr = htonl(dst_addr.data[i]);
    to.sin_port = htons(dst_port.data[i]);
    return to;
  };
  if (has_pieces) {
    for (uint32_t i = start; i < start + count; i++) {
      uint32_t k = piece_count(i);
      if (k != 0 && (k > kMaxIov || size_t{a.piece_first.data[i]} + k > piece_room)) {
        Napi::RangeError::New(env, "send: pieces of entry " + std::to_string(i) +
                                       " lie outside pieces.offsets")
            .ThrowAsJavaScriptException();
        return Napi::Value();
      }
    }
  }
  // Sends entry i datagram by datagram (GSO off or refused for its peer).
  auto send_apart = [&](uint32_t i, const sockaddr_in& to) {
    return piece_count(i) != 0
               ? SendPieces(i, to)
               : SendSegments(bytes.data + offsets.data[i], lengths.data[i],
                              run_segment(i), to);
  };
  const uint32_t chunk = static_cast<uint32_t>(tx_msgs_.size());
  uint32_t done = 0;
  SetRetryLater(false);
  while (done < count) {
    // Fill up to `chunk` messages; a run entry stops the chunk when the
    // socket has no GSO or its peer fell back, and goes out datagram by
    // datagram below.
    uint32_t n = 0;
    uint32_t pool = 0;
    while (n < chunk && done + n < count) {
      uint32_t i = start + done + n;
      uint32_t seg = run_segment(i);
      tx_to_[n] = destination(i);
      if (seg != 0 && (!gso_ || fallbacks_.Active(tx_to_[n].sin_addr.s_addr,
                                                  tx_to_[n].sin_port))) {
        break;
      }
      msghdr& h = tx_msgs_[n].msg_hdr;
      uint32_t k = piece_count(i);
      if (k == 0) {
        tx_iov_[n].iov_base = bytes.data + offsets.data[i];
        tx_iov_[n].iov_len = lengths.data[i];
        h.msg_iov = &tx_iov_[n];
        h.msg_iovlen = 1;
      } else {
        if (pool + k > kPieceIovPool) break;
        uint32_t first = a.piece_first.data[i];
        for (uint32_t p = 0; p < k; p++) {
          tx_piece_iov_[pool + p].iov_base =
              bytes.data + a.piece_offsets.data[first + p];
          tx_piece_iov_[pool + p].iov_len = a.piece_lengths.data[first + p];
        }
        h.msg_iov = &tx_piece_iov_[pool];
        h.msg_iovlen = k;
        pool += k;
      }
      if (seg != 0) {
        h.msg_control = &tx_ctl_[size_t{n} * kTxCtlWords];
        h.msg_controllen = kTxCtlBytes;
        cmsghdr* c = CMSG_FIRSTHDR(&h);
        c->cmsg_level = SOL_UDP;
        c->cmsg_type = UDP_SEGMENT;
        c->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t v = static_cast<uint16_t>(seg);
        memcpy(CMSG_DATA(c), &v, sizeof v);
      } else {
        h.msg_control = nullptr;
        h.msg_controllen = 0;
      }
      n++;
    }
    if (n == 0) {
      uint32_t i = start + done;
      if (!send_apart(i, destination(i))) {
        return Napi::Number::New(env, done);
      }
      done++;
      continue;
    }
    uint32_t sent = 0;
    bool refill = false;
    while (sent < n && !refill) {
      int r = SendMmsg(&tx_msgs_[sent], n - sent);
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
          return Napi::Number::New(env, done + sent);
        }
        // No memory for the datagram right now: stop short like EAGAIN; the
        // caller retries the rest after a pause (see kStateRetryLater).
        if (errno == ENOBUFS || errno == ENOMEM) {
          SetRetryLater(true);
          send_retries_++;
          return Napi::Number::New(env, done + sent);
        }
        // sendmmsg failed on its first message. A run the kernel will not
        // segment (EIO: no checksum offload on the route; EINVAL: segment
        // too large for the path) goes out datagram by datagram, and so do
        // that peer's runs for a while (GsoFallbacks); any other failure
        // drops that message.
        if (tx_msgs_[sent].msg_hdr.msg_controllen != 0 &&
            (errno == EIO || errno == EINVAL)) {
          fallbacks_.Record(tx_to_[sent].sin_addr.s_addr,
                            tx_to_[sent].sin_port);
          uint32_t i = start + done + sent;
          if (!send_apart(i, tx_to_[sent])) {
            return Napi::Number::New(env, done + sent);
          }
          refill = true;
        } else {
          send_errors_++;
        }
        sent++;
      } else if (r == 0) {
        return Napi::Number::New(env, done + sent);
      } else {
        sent += static_cast<uint32_t>(r);
      }
    }
    done += sent;
  }
  return Napi::Number::New(env, done);
}

bool UdpSocket::SendSegments(const uint8_t* data, uint32_t len, uint32_t seg,
                             const sockaddr_in& to) {
  uint32_t n = (len + seg - 1) / seg;
  return SendEach(
      n,
      [&](uint32_t k) {
        uint32_t o = k * seg;
        return iovec{const_cast<uint8_t*>(data + o), std::min(seg, len - o)};
      },
      to);
}

bool UdpSocket::SendPieces(uint32_t i, const sockaddr_in& to) {
  const BoundArrays& a = tx_bound_;
  uint32_t first = a.piece_first.data[i];
  return SendEach(
      a.piece_count.data[i],
      [&](uint32_t k) {
        return iovec{a.bytes.data + a.piece_offsets.data[first + k],
                     a.piece_lengths.data[first + k]};
      },
      to);
}

template <class Datagram>
bool UdpSocket::SendEach(uint32_t total, Datagram datagram,
                         const sockaddr_in& to) {
  sockaddr_in dst = to;
  uint32_t at = 0;
  bool any = false;
  while (at < total) {
    uint32_t n = 0;
    for (; n < kMaxGsoSegments && at + n < total; n++) {
      seg_iov_[n] = datagram(at + n);
      seg_msgs_[n].msg_hdr.msg_name = &dst;
    }
    uint32_t sent = 0;
    while (sent < n) {
      int r = SendMmsg(&seg_msgs_[sent], n - sent);
      if (r < 0) {
        if (errno == EINTR) continue;
        const bool no_memory = errno == ENOBUFS || errno == ENOMEM;
        if (errno == EAGAIN || errno == EWOULDBLOCK || no_memory) {
          if (!any) {
            // Nothing out yet: the whole entry is retried, after a pause
            // when the kernel was out of memory (as Send does).
            if (no_memory) {
              SetRetryLater(true);
              send_retries_++;
            }
            return false;
          }
          // Part of the run is out: the rest is lost, like a full queue
          // would lose it; TCP repairs it.
          send_errors_ += total - (at + sent);
          return true;
        }
        send_errors_++;
        sent++;
        any = true;
      } else {
        sent += static_cast<uint32_t>(r);
        any = true;
      }
    }
    at += n;
  }
  return true;
}

Napi::Value UdpSocket::SendErrors(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), send_errors_);
}

Napi::Value UdpSocket::GsoFallbacksGetter(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), fallbacks_.count());
}

Napi::Value UdpSocket::SendRetries(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), send_retries_);
}

Napi::Value UdpSocket::InjectSendErrors(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  uint32_t err = 0;
  uint32_t count = 0;
  if (!GetUint(env, info[0], "errno", 4095, &err) ||
      !GetUint(env, info[1], "count", UINT32_MAX, &count)) {
    return Napi::Value();
  }
  inject_errno_ = static_cast<int>(err);
  inject_count_ = count;
  return env.Undefined();
}

void UdpSocket::SetGso(bool on) {
  gso_ = on;
  state_[kStateGsoSegments] = on ? kMaxGsoSegments : 0;
}

void UdpSocket::SetRetryLater(bool on) { state_[kStateRetryLater] = on ? 1 : 0; }

int UdpSocket::SendMmsg(mmsghdr* msgs, uint32_t n) {
  if (inject_count_ > 0) {
    inject_count_--;
    errno = inject_errno_;
    return -1;
  }
  return sendmmsg(fd(), msgs, n, MSG_DONTWAIT);
}

Napi::Value UdpSocket::LocalPort(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), local_port_);
}

Napi::Value UdpSocket::RecvBufferSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), recv_buffer_);
}

Napi::Value UdpSocket::SendBufferSize(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), send_buffer_);
}

Napi::Value UdpSocket::Gro(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), gro_);
}

}  // namespace weft
