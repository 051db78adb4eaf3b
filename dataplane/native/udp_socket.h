// The underlay UDP socket: recvmmsg into a datagram arena, sendmmsg with one
// destination per datagram. Every header array is allocated at construction.
#pragma once

#include <napi.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <vector>

#include "poll_source.h"

namespace weft {

class UdpSocket : public PollSource<UdpSocket> {
 public:
  static Napi::Function Init(Napi::Env env);

  // new UdpSocket(bindAddr (host order), port, arena {bytes, lengths,
  // srcAddr, srcPort, truncated, slotSize, capacity}, bufferBytes).
  explicit UdpSocket(const Napi::CallbackInfo& info);

  // recvmmsg until capacity datagrams or EAGAIN. Datagram i: bytes in slot i,
  // lengths[i] its real length (> slotSize when truncated[i] is 1),
  // srcAddr[i]/srcPort[i] the sender in host order.
  Drained Drain();

 private:
  // send(bytes, offsets, lengths, dstAddr, dstPort, start, count) -> consumed.
  Napi::Value Send(const Napi::CallbackInfo& info);
  Napi::Value SendErrors(const Napi::CallbackInfo& info);
  Napi::Value LocalPort(const Napi::CallbackInfo& info);
  Napi::Value RecvBufferSize(const Napi::CallbackInfo& info);
  Napi::Value SendBufferSize(const Napi::CallbackInfo& info);

  bool ReadArena(Napi::Env env, Napi::Value arena);
  bool SetupSocket(Napi::Env env, uint32_t addr, uint32_t port,
                   uint32_t buffer_bytes, int* out_fd);

  std::vector<Napi::Reference<Napi::Value>> arena_refs_;
  uint8_t* bytes_ = nullptr;
  uint32_t* lengths_ = nullptr;
  uint32_t* src_addr_ = nullptr;
  uint16_t* src_port_ = nullptr;
  uint8_t* truncated_ = nullptr;
  uint32_t slot_size_ = 0;
  uint32_t capacity_ = 0;

  std::vector<mmsghdr> rx_msgs_;
  std::vector<iovec> rx_iov_;
  std::vector<sockaddr_in> rx_from_;
  std::vector<mmsghdr> tx_msgs_;
  std::vector<iovec> tx_iov_;
  std::vector<sockaddr_in> tx_to_;

  uint32_t local_port_ = 0;
  int recv_buffer_ = 0;
  int send_buffer_ = 0;
  double send_errors_ = 0;
};

}  // namespace weft
