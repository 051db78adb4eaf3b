// The underlay UDP socket: recvmmsg into a datagram arena, sendmmsg with one
// destination per datagram. With offload on, UDP GRO on receive (one slot may
// hold a run of equal-size datagrams, its segment size reported) and UDP GSO
// on send (one entry may carry a run of datagrams, sent with UDP_SEGMENT).
// Every header array is allocated at construction.
#pragma once

#include <napi.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <vector>

#include "args.h"
#include "gso_fallback.h"
#include "poll_source.h"

namespace weft {

class UdpSocket : public PollSource<UdpSocket> {
 public:
  // Segments per UDP_SEGMENT send (UDP_MAX_SEGMENTS on older kernels).
  static constexpr uint32_t kMaxGsoSegments = 64;
  static constexpr uint32_t kStateGsoSegments = 0;
  static constexpr uint32_t kStateRetryLater = 1;
  static constexpr uint32_t kStateWords = 2;
  // The longest a peer's runs may go datagram by datagram (a day).
  static constexpr uint32_t kMaxGsoRetryMs = 86'400'000;

  static Napi::Function Init(Napi::Env env);

  // new UdpSocket(bindAddr (host order), port, arena {bytes, lengths,
  // srcAddr, srcPort, truncated, segSize?, state, slotSize, capacity},
  // bufferBytes, {offload, gsoRetryMs}?). Offload asks for UDP_GRO (needs
  // arena.segSize) and probes UDP_SEGMENT; either may be refused by an old
  // kernel. gsoRetryMs (default 30 s): how long a peer whose run the kernel
  // refused gets its runs sent datagram by datagram.
  // arena.state (Uint32Array, kStateWords) is kept current for JavaScript
  // to read without a call: [kStateGsoSegments] segments one send entry may
  // carry (0: no UDP GSO), [kStateRetryLater] 1 when ENOBUFS/ENOMEM stopped
  // the last send short.
  explicit UdpSocket(const Napi::CallbackInfo& info);

  // recvmmsg until capacity datagrams or EAGAIN. Datagram i: bytes in slot i,
  // lengths[i] its real length (> slotSize when truncated[i] is 1),
  // srcAddr[i]/srcPort[i] the sender in host order, segSize[i] the GRO
  // segment size when the slot holds several datagrams (else 0).
  Drained Drain();
  // The first packet of the last batch (its length in the arena).
  uint32_t FirstLength() const { return lengths_[0]; }

 private:
  // bindSend(bytes, offsets, lengths, dstAddr, dstPort, segSize?, pieces?):
  // the arrays the following sends read, until the next bindSend. pieces
  // {first, count, offsets, lengths}: a run entry whose datagrams do not lie
  // back to back (count[i] > 0) is sent as one message with one iovec per
  // datagram, no bytes moved; lengths[i] is still the run's total.
  Napi::Value BindSend(const Napi::CallbackInfo& info);
  // send(start, count) -> consumed.
  Napi::Value Send(const Napi::CallbackInfo& info);
  Napi::Value SendErrors(const Napi::CallbackInfo& info);
  Napi::Value SendRetries(const Napi::CallbackInfo& info);
  Napi::Value GsoFallbacksGetter(const Napi::CallbackInfo& info);
  // injectSendErrors(errno, count): the next `count` sendmmsg calls fail
  // with errno without reaching the kernel (tests of the error paths).
  Napi::Value InjectSendErrors(const Napi::CallbackInfo& info);
  void SetGso(bool on);
  void SetRetryLater(bool on);
  // sendmmsg, or the injected failure.
  int SendMmsg(mmsghdr* msgs, uint32_t n);
  Napi::Value LocalPort(const Napi::CallbackInfo& info);
  Napi::Value RecvBufferSize(const Napi::CallbackInfo& info);
  Napi::Value SendBufferSize(const Napi::CallbackInfo& info);
  Napi::Value Gro(const Napi::CallbackInfo& info);

  bool ReadArena(Napi::Env env, Napi::Value arena);
  bool SetupSocket(Napi::Env env, uint32_t addr, uint32_t port,
                   uint32_t buffer_bytes, bool offload, int* out_fd);
  // Sends one run entry as separate datagrams (after UDP GSO was refused).
  // Returns false when the socket was full (or the kernel out of memory:
  // then retry later) before the first one went out.
  bool SendSegments(const uint8_t* data, uint32_t len, uint32_t seg,
                    const sockaddr_in& to);
  // The same for a run entry made of pieces: each piece one datagram.
  bool SendPieces(uint32_t i, const sockaddr_in& to);
  // Datagrams datagram(k) for k < n, each its own message to `to`.
  template <class Datagram>
  bool SendEach(uint32_t n, Datagram datagram, const sockaddr_in& to);

  // Into the receive arena (watched by arena_watch_).
  uint8_t* bytes_ = nullptr;
  uint32_t* lengths_ = nullptr;
  uint32_t* src_addr_ = nullptr;
  uint16_t* src_port_ = nullptr;
  uint8_t* truncated_ = nullptr;
  uint16_t* seg_size_ = nullptr;
  uint32_t slot_size_ = 0;
  uint32_t capacity_ = 0;

  std::vector<mmsghdr> rx_msgs_;
  std::vector<iovec> rx_iov_;
  std::vector<sockaddr_in> rx_from_;
  std::vector<uint64_t> rx_ctl_;
  std::vector<mmsghdr> tx_msgs_;
  std::vector<iovec> tx_iov_;
  // The iovecs of run entries sent from pieces, filled per chunk.
  std::vector<iovec> tx_piece_iov_;
  std::vector<sockaddr_in> tx_to_;
  std::vector<uint64_t> tx_ctl_;
  std::vector<mmsghdr> seg_msgs_;
  std::vector<iovec> seg_iov_;

  // arena.state: whether UDP GSO is on, and whether ENOBUFS/ENOMEM stopped
  // the last send short (the kernel had no memory for the datagram, and
  // writability will not say when it has again).
  uint32_t* state_ = nullptr;
  BufferWatch state_watch_;
  BoundArrays tx_bound_;
  GsoFallbacks fallbacks_;
  double send_retries_ = 0;
  int inject_errno_ = 0;
  uint32_t inject_count_ = 0;

  uint32_t local_port_ = 0;
  int recv_buffer_ = 0;
  int send_buffer_ = 0;
  bool gro_ = false;
  bool gso_ = false;
  double send_errors_ = 0;
};

}  // namespace weft
