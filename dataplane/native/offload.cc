#include "offload.h"

#include <arpa/inet.h>

#include <algorithm>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "args.h"

namespace weft {

namespace {

constexpr uint8_t kTcpFin = 0x01;
constexpr uint8_t kTcpPsh = 0x08;
constexpr uint8_t kTcpUrg = 0x20;
constexpr uint8_t kTcpCwr = 0x80;
constexpr uint32_t kIpMaxTotal = 65535;

inline uint16_t Read16(const uint8_t* p) {
  return static_cast<uint16_t>((p[0] << 8) | p[1]);
}
inline uint32_t Read32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) |
         (uint32_t{p[2]} << 8) | p[3];
}
inline void Write16(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 8);
  p[1] = static_cast<uint8_t>(v);
}
inline void Write32(uint8_t* p, uint32_t v) {
  p[0] = static_cast<uint8_t>(v >> 24);
  p[1] = static_cast<uint8_t>(v >> 16);
  p[2] = static_cast<uint8_t>(v >> 8);
  p[3] = static_cast<uint8_t>(v);
}

inline uint16_t Fold(uint64_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(sum);
}

#if defined(__x86_64__)
// 32-bit words of p into 64-bit lanes, 64 bytes a round: ~50 GB/s here
// against ~8 for the scalar loop. Advances p and n past what it summed.
__attribute__((target("avx2"))) uint64_t SumWordsAvx2(const uint8_t*& p,
                                                      size_t& n) {
  const __m256i zero = _mm256_setzero_si256();
  __m256i a = zero;
  __m256i b = zero;
  while (n >= 64) {
    __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32));
    a = _mm256_add_epi64(a, _mm256_unpacklo_epi32(v, zero));
    b = _mm256_add_epi64(b, _mm256_unpackhi_epi32(v, zero));
    a = _mm256_add_epi64(a, _mm256_unpacklo_epi32(w, zero));
    b = _mm256_add_epi64(b, _mm256_unpackhi_epi32(w, zero));
    p += 64;
    n -= 64;
  }
  uint64_t lanes[4];
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes),
                      _mm256_add_epi64(a, b));
  uint64_t sum = 0;
  for (uint64_t l : lanes) sum += (l & 0xffffffffu) + (l >> 32);
  return sum;
}

bool HaveAvx2() {
  static const bool have = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") != 0;
  }();
  return have;
}
#endif

// Sum of p[0, n) as native-order 32-bit words in 64 bits, the odd last byte
// padded: not folded. Ones'-complement sums are byte-order independent
// (RFC 1071 2.B), so this sums words as loaded and Finish swaps once.
uint64_t SumRaw(const uint8_t* p, size_t n) {
  uint64_t sum = 0;
#if defined(__x86_64__)
  if (n >= 128 && HaveAvx2()) sum = SumWordsAvx2(p, n);
#endif
  while (n >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    sum += (w & 0xffffffffu) + (w >> 32);
    p += 8;
    n -= 8;
  }
  if (n >= 4) {
    uint32_t w;
    memcpy(&w, p, 4);
    sum += w;
    p += 4;
    n -= 4;
  }
  if (n >= 2) {
    uint16_t w;
    memcpy(&w, p, 2);
    sum += w;
    p += 2;
    n -= 2;
  }
  if (n == 1) {
    const uint8_t pad[2] = {p[0], 0};
    uint16_t w;
    memcpy(&w, pad, 2);
    sum += w;
  }
  return sum;
}

// A SumRaw result plus `initial` (big-endian), folded to 16 bits.
inline uint16_t Finish(uint64_t raw, uint32_t initial) {
  return Fold(uint64_t{ntohs(Fold(raw))} + initial);
}

#if defined(__x86_64__)
// Copies src[0, n) up to dst (dst > src: the ranges may overlap) and returns
// SumRaw of the bytes, in one pass instead of a memmove and then a sum. The
// bytes past the last whole 64 go first (they lie highest); then 64-byte
// rounds from the top down, each loaded before it is stored, so a store never
// lands on source bytes not yet read.
__attribute__((target("avx2"))) uint64_t CopySumUpAvx2(uint8_t* dst,
                                                      const uint8_t* src,
                                                      size_t n) {
  const size_t body = n & ~size_t{63};
  memmove(dst + body, src + body, n - body);
  uint64_t sum = SumRaw(dst + body, n - body);
  const __m256i zero = _mm256_setzero_si256();
  __m256i a = zero;
  __m256i b = zero;
  for (size_t i = body; i > 0;) {
    i -= 64;
    __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
    __m256i w =
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i + 32));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i + 32), w);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), v);
    a = _mm256_add_epi64(a, _mm256_unpacklo_epi32(v, zero));
    b = _mm256_add_epi64(b, _mm256_unpackhi_epi32(v, zero));
    a = _mm256_add_epi64(a, _mm256_unpacklo_epi32(w, zero));
    b = _mm256_add_epi64(b, _mm256_unpackhi_epi32(w, zero));
  }
  uint64_t lanes[4];
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes),
                      _mm256_add_epi64(a, b));
  for (uint64_t l : lanes) sum += (l & 0xffffffffu) + (l >> 32);
  return sum;
}
#endif

// memmove(dst, src, n) for dst > src, returning SumRaw of the bytes moved.
uint64_t CopySumUp(uint8_t* dst, const uint8_t* src, size_t n) {
#if defined(__x86_64__)
  if (n >= 128 && HaveAvx2()) return CopySumUpAvx2(dst, src, n);
#endif
  memmove(dst, src, n);
  return SumRaw(dst, n);
}

// Recomputes the IPv4 header checksum of the header at p.
void FixIpChecksum(uint8_t* p, uint32_t ihl) {
  p[10] = 0;
  p[11] = 0;
  Write16(p + 10, static_cast<uint16_t>(~OnesSum(p, ihl, 0)));
}

}  // namespace

uint16_t OnesSum(const uint8_t* p, size_t n, uint32_t initial) {
  return Finish(SumRaw(p, n), initial);
}

uint16_t PseudoHeaderSum(const uint8_t* ip, uint8_t protocol,
                         uint32_t l4_length) {
  uint64_t sum = uint64_t{Read16(ip + 12)} + Read16(ip + 14) + Read16(ip + 16) +
                 Read16(ip + 18) + protocol + l4_length;
  return Fold(sum);
}

bool CompleteChecksum(uint8_t* p, uint32_t len, uint32_t csum_start,
                      uint32_t csum_offset) {
  if (uint64_t{csum_start} + csum_offset + 2 > len) return false;
  uint16_t c =
      static_cast<uint16_t>(~OnesSum(p + csum_start, len - csum_start, 0));
  // 0 and 0xffff are the same number in ones' complement; UDP reserves 0
  // for "no checksum", so always write the other one.
  Write16(p + csum_start + csum_offset, c == 0 ? 0xffff : c);
  return true;
}

bool TcpChecksumOk(const uint8_t* p, uint32_t len) {
  uint32_t ihl = (p[0] & 15u) * 4;
  if (ihl < 20 || len < ihl + 20) return false;
  uint32_t l4 = len - ihl;
  return OnesSum(p + ihl, l4, PseudoHeaderSum(p, 6, l4)) == 0xffff;
}

// A UDP datagram whose length field matches and whose checksum is present
// and right: only such datagrams may be merged, since the kernel computes a
// fresh checksum for every segment of a super-packet.
bool UdpChecksumOk(const uint8_t* p, uint32_t len) {
  uint32_t ihl = (p[0] & 15u) * 4;
  if (ihl < 20 || len < ihl + 8) return false;
  uint32_t l4 = len - ihl;
  if (Read16(p + ihl + 4) != l4 || Read16(p + ihl + 6) == 0) return false;
  return OnesSum(p + ihl, l4, PseudoHeaderSum(p, 17, l4)) == 0xffff;
}

bool SplitGso(uint8_t* p, uint32_t len, uint8_t gso_type, uint32_t mss,
              uint32_t room, SplitResult* out) {
  if (len < 20 || (p[0] >> 4) != 4 || mss == 0) return false;
  const uint32_t ihl = (p[0] & 15u) * 4;
  if (ihl < 20 || Read16(p + 2) != len) return false;
  if ((Read16(p + 6) & 0x3fff) != 0) return false;  // a fragment
  const uint8_t type = gso_type & static_cast<uint8_t>(~kGsoEcn);
  const bool tcp = type == kGsoTcpV4 && p[9] == 6;
  const bool udp = type == kGsoUdpL4 && p[9] == 17;
  if (!tcp && !udp) return false;
  uint32_t l4hl = 8;
  if (tcp) {
    if (len < ihl + 20) return false;
    l4hl = (p[ihl + 12] >> 4) * 4u;
    if (l4hl < 20) return false;
  }
  const uint32_t hdr = ihl + l4hl;
  if (hdr > len) return false;
  const uint32_t payload = len - hdr;
  const uint32_t n = payload == 0 ? 1 : (payload + mss - 1) / mss;
  const uint64_t total = uint64_t{len} + uint64_t{n - 1} * hdr;
  if (total > room) return false;
  const uint32_t stride = hdr + mss;

  const uint32_t id0 = Read16(p + 4);
  const uint32_t seq0 = tcp ? Read32(p + ihl + 4) : 0;
  const uint8_t flags0 = tcp ? p[ihl + 13] : 0;
  const uint32_t urg0 = tcp ? Read16(p + ihl + 18) : 0;
  const uint8_t proto = p[9];
  // Last segment first: segment k lands at k * stride, at or after where
  // its payload was, and clear of the payloads (and the original header)
  // that lower segments still need.
  for (uint32_t k = n; k-- > 0;) {
    const uint32_t seg_payload = k == n - 1 ? payload - k * mss : mss;
    uint8_t* s = p + size_t{k} * stride;
    // The payload's sum, taken as it moves: the checksums below add only
    // the headers (the payload starts at an even offset of the L4 header).
    uint64_t payload_sum;
    if (k > 0) {
      payload_sum = CopySumUp(s + hdr, p + hdr + size_t{k} * mss, seg_payload);
      memcpy(s, p, hdr);
    } else {
      payload_sum = SumRaw(s + hdr, seg_payload);
    }
    const uint32_t l4_len = l4hl + seg_payload;
    Write16(s + 2, hdr + seg_payload);
    Write16(s + 4, id0 + k);
    FixIpChecksum(s, ihl);
    uint8_t* l4 = s + ihl;
    if (tcp) {
      Write32(l4 + 4, seq0 + k * mss);
      uint8_t f = flags0;
      if (k != n - 1) f &= static_cast<uint8_t>(~(kTcpFin | kTcpPsh));
      if (k != 0) f &= static_cast<uint8_t>(~kTcpCwr);
      if ((flags0 & kTcpUrg) != 0) {
        // The urgent point is seq0 + urg0; rebase it on this segment's seq.
        const uint64_t skipped = uint64_t{k} * mss;
        if (urg0 > skipped) {
          Write16(l4 + 18, static_cast<uint32_t>(urg0 - skipped));
        } else {
          f &= static_cast<uint8_t>(~kTcpUrg);
          Write16(l4 + 18, 0);
        }
      }
      l4[13] = f;
      l4[16] = 0;
      l4[17] = 0;
      Write16(l4 + 16,
              static_cast<uint16_t>(~Finish(
                  SumRaw(l4, l4hl) + payload_sum,
                  PseudoHeaderSum(s, proto, l4_len))));
    } else {
      Write16(l4 + 4, l4_len);
      l4[6] = 0;
      l4[7] = 0;
      uint16_t c = static_cast<uint16_t>(
          ~Finish(SumRaw(l4, l4hl) + payload_sum,
                  PseudoHeaderSum(s, proto, l4_len)));
      Write16(l4 + 6, c == 0 ? 0xffff : c);
    }
  }
  out->segments = n;
  out->stride = stride;
  out->total = static_cast<uint32_t>(total);
  return true;
}

Napi::Value GsoSplit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ArrayView<uint8_t> bytes;
  ArrayView<uint32_t> out;
  uint32_t off = 0, len = 0, gso_type = 0, gso_size = 0, room = 0;
  if (!GetArray(env, info[0], "bytes", &bytes) ||
      !GetUint(env, info[1], "off", UINT32_MAX, &off) ||
      !GetUint(env, info[2], "len", UINT32_MAX, &len) ||
      !GetUint(env, info[3], "gsoType", 255, &gso_type) ||
      !GetUint(env, info[4], "gsoSize", 65535, &gso_size) ||
      !GetUint(env, info[5], "room", UINT32_MAX, &room) ||
      !GetArray(env, info[6], "out", &out)) {
    return Napi::Value();
  }
  if (out.length < 3) {
    ThrowRangeError(env, "out must hold 3 numbers");
    return Napi::Value();
  }
  if (len > room || uint64_t{off} + room > bytes.length) {
    ThrowRangeError(env, "packet room [" + std::to_string(off) + ", +" +
                             std::to_string(room) + ") lies outside bytes (" +
                             std::to_string(bytes.length) + ")");
    return Napi::Value();
  }
  SplitResult r = {};
  bool ok = SplitGso(bytes.data + off, len, static_cast<uint8_t>(gso_type),
                     gso_size, room, &r);
  if (ok) {
    out.data[0] = r.segments;
    out.data[1] = r.stride;
    out.data[2] = r.total;
  }
  return Napi::Boolean::New(env, ok);
}

Napi::Value GroMerge(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  ArrayView<uint8_t> bytes;
  ArrayView<uint32_t> offsets;
  ArrayView<uint32_t> lengths;
  uint32_t first = 0, count = 0, room = 0;
  // gather: leave the payloads where they lie (the device writes the run
  // from pieces); only the head's headers change, lengths[first] does not.
  const bool gather = info[6].ToBoolean();
  if (!GetArray(env, info[0], "bytes", &bytes) ||
      !GetArray(env, info[1], "offsets", &offsets) ||
      !GetArray(env, info[2], "lengths", &lengths) ||
      !GetUint(env, info[3], "first", UINT32_MAX, &first) ||
      !GetUint(env, info[4], "count", UINT32_MAX, &count) ||
      !GetUint(env, info[5], "room", UINT32_MAX, &room) ||
      !CheckBatchRange(env, first, count,
                       std::min(offsets.length, lengths.length)) ||
      !CheckPackets(env, offsets, lengths, first, count, bytes.length)) {
    return Napi::Value();
  }
  if (count == 0) return Napi::Number::New(env, 0);
  const uint32_t head_off = offsets.data[first];
  // Gathered, the run grows nothing in bytes: only the head's headers change.
  if (!gather && uint64_t{head_off} + room > bytes.length) {
    ThrowRangeError(env, "room reaches outside bytes");
    return Napi::Value();
  }
  uint8_t* head = bytes.data + head_off;
  uint32_t end = lengths.data[first];
  if (end < 28 || (head[0] >> 4) != 4 || Read16(head + 2) != end) {
    return Napi::Number::New(env, 0);
  }
  const uint8_t proto = head[9];
  const bool tcp = proto == 6;
  if (tcp ? !TcpChecksumOk(head, end)
          : proto != 17 || !UdpChecksumOk(head, end)) {
    return Napi::Number::New(env, 0);
  }
  const uint32_t ihl = (head[0] & 15u) * 4;
  // A TCP data offset below 5 is no TCP header: nothing to merge, and the
  // checks below read 20 header bytes of every packet they look at.
  const uint32_t l4hl = tcp ? (head[ihl + 12] >> 4) * 4u : 8u;
  if (tcp && l4hl < 20) return Napi::Number::New(env, 0);
  const uint32_t hdr = ihl + l4hl;
  if (hdr > end) return Napi::Number::New(env, 0);
  const uint32_t limit = std::min(room, kIpMaxTotal);
  uint32_t merged = 1;
  uint8_t last_flags = tcp ? head[ihl + 13] : 0;
  for (uint32_t j = first + 1; j < first + count; j++) {
    const uint8_t* q = bytes.data + offsets.data[j];
    const uint32_t qlen = lengths.data[j];
    // hdr >= ihl + 20 (TCP) or ihl + 8 (UDP): every byte read here lies
    // inside q.
    if (qlen < hdr || (q[0] >> 4) != 4 || Read16(q + 2) != qlen ||
        (q[0] & 15u) * 4 != ihl || q[9] != proto) {
      break;
    }
    if (tcp ? (q[ihl + 12] >> 4) * 4u != l4hl || !TcpChecksumOk(q, qlen)
            : !UdpChecksumOk(q, qlen)) {
      break;
    }
    const uint32_t pl = qlen - hdr;
    if (uint64_t{end} + pl > limit) break;
    if (tcp) last_flags = q[ihl + 13];
    // Same slot: the gap the dropped headers leave lies before q, so the
    // copy only ever moves bytes down over ones already consumed (q's own
    // header included: read nothing of q after this).
    if (!gather) memmove(head + end, q + hdr, pl);
    end += pl;
    merged++;
  }
  if (merged < 2) return Napi::Number::New(env, merged);
  Write16(head + 2, end);
  FixIpChecksum(head, ihl);
  if (tcp) {
    head[ihl + 13] |= last_flags & kTcpPsh;
    Write16(head + ihl + 16, PseudoHeaderSum(head, 6, end - ihl));
  } else {
    // The kernel cuts the super-packet's UDP length and pseudo-header sum
    // down to each segment's.
    Write16(head + ihl + 4, end - ihl);
    Write16(head + ihl + 6, PseudoHeaderSum(head, 17, end - ihl));
  }
  if (!gather) lengths.data[first] = end;
  return Napi::Number::New(env, merged);
}

}  // namespace weft
