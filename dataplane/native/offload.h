// The per-byte work of TUN offloads: Internet checksums, splitting a TSO/USO
// super-packet into ordinary IPv4 packets, and gluing TCP segments back into
// one super-packet. Which packets to split or glue is decided in TypeScript
// (dataplane/engine.ts, dataplane/gro.ts); these functions only move bytes and
// fix headers, and refuse (return false / 0) what they cannot do exactly.
#pragma once

#include <napi.h>

#include <cstddef>
#include <cstdint>

namespace weft {

// struct virtio_net_hdr (TUNSETVNETHDRSZ 10), fields in native byte order
// (legacy virtio on a little-endian host, which is what TUN uses by default).
constexpr uint32_t kVnetHdrLen = 10;
constexpr uint8_t kVnetNeedsCsum = 1;
constexpr uint8_t kGsoNone = 0;
constexpr uint8_t kGsoTcpV4 = 1;
constexpr uint8_t kGsoTcpV6 = 4;
constexpr uint8_t kGsoUdpL4 = 5;
constexpr uint8_t kGsoEcn = 0x80;

struct VnetHdr {
  uint8_t flags;
  uint8_t gso_type;
  uint16_t hdr_len;
  uint16_t gso_size;
  uint16_t csum_start;
  uint16_t csum_offset;
};
static_assert(sizeof(VnetHdr) == kVnetHdrLen, "virtio_net_hdr is 10 bytes");

// Ones'-complement sum of p[0, n) as big-endian 16-bit words, plus `initial`,
// folded to 16 bits (not complemented).
uint16_t OnesSum(const uint8_t* p, size_t n, uint32_t initial);

// Sum of the IPv4 pseudo-header (src, dst, protocol, l4_length) of the IPv4
// packet at p, folded to 16 bits.
uint16_t PseudoHeaderSum(const uint8_t* ip, uint8_t protocol,
                         uint32_t l4_length);

// Completes a CHECKSUM_PARTIAL packet (VIRTIO_NET_HDR_F_NEEDS_CSUM): the
// field at csum_start + csum_offset holds the pseudo-header sum; fold the sum
// of [csum_start, len) into it. False when the offsets lie outside the packet.
bool CompleteChecksum(uint8_t* p, uint32_t len, uint32_t csum_start,
                      uint32_t csum_offset);

struct SplitResult {
  uint32_t segments;
  // Bytes from one segment's start to the next (all segments but the last
  // are exactly this long).
  uint32_t stride;
  // Bytes of all segments together.
  uint32_t total;
};

// Splits the IPv4 TCP (gso_type TCPV4) or UDP (UDP_L4) super-packet at p,
// `len` bytes by its IP total length, into segments carrying `mss` payload
// bytes each (the last one fewer), laid end to end from p on, in place. Every
// segment gets the full IP header (options too) with total length, id + k and
// header checksum fixed; TCP: sequence number advanced, FIN/PSH only on the
// last, CWR only on the first, urgent pointer rebased (URG dropped once the
// urgent point lies behind the segment), full checksum; UDP: length and full
// checksum. False (bytes untouched) for anything else or when the segments
// would not fit in `room` bytes.
bool SplitGso(uint8_t* p, uint32_t len, uint8_t gso_type, uint32_t mss,
              uint32_t room, SplitResult* out);

// Whether the TCP checksum of the IPv4 packet at p (IP total length `len`)
// verifies.
bool TcpChecksumOk(const uint8_t* p, uint32_t len);

// Whether the IPv4 UDP datagram at p has a right length field and a present,
// right checksum.
bool UdpChecksumOk(const uint8_t* p, uint32_t len);

// Napi: gsoSplit(bytes, off, len, gsoType, gsoSize, room, out: Uint32Array(3))
// -> boolean; out = [segments, stride, total].
Napi::Value GsoSplit(const Napi::CallbackInfo& info);

// Napi: groMerge(bytes, offsets, lengths, first, count, room, gather?)
// -> merged.
// Appends the TCP payloads of packets first+1 .. first+count-1 to packet
// `first` in place (which may grow up to `room` bytes from its offset),
// stopping before the first packet whose TCP checksum fails. The result has
// its IP total length and header checksum fixed, PSH from the last packet,
// and the TCP checksum field seeded with the pseudo-header sum, ready for a
// VIRTIO_NET_HDR_F_NEEDS_CSUM write. lengths[first] gets the new length.
// Returns how many packets went in (0 or 1: nothing changed). With gather
// nothing moves: only the head's headers are fixed (its IP total length then
// counts the whole run), lengths[first] stays, and the run must be written
// from pieces (the head whole, then each member's payload).
Napi::Value GroMerge(const Napi::CallbackInfo& info);

}  // namespace weft
