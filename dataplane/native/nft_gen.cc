#include <errno.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "addon.h"

namespace weft {

namespace {

// One NFT_MSG_GETGEN round trip on NETLINK_NETFILTER in the caller's network
// namespace. Returns the ruleset generation, or -1 when the kernel has no
// nf_tables, refuses (EPERM without CAP_NET_ADMIN) or does not answer.
int64_t ReadGenId() {
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
  if (fd < 0) return -1;
  // The kernel answers from the same call; the timeout only guards a kernel
  // that never does, so the event loop is not held forever.
  timeval tv = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

  struct {
    nlmsghdr nlh;
    nfgenmsg nfg;
  } req = {};
  req.nlh.nlmsg_len = sizeof req;
  req.nlh.nlmsg_type = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN;
  req.nlh.nlmsg_flags = NLM_F_REQUEST;
  req.nlh.nlmsg_seq = 1;
  req.nfg.nfgen_family = AF_UNSPEC;
  req.nfg.version = NFNETLINK_V0;
  sockaddr_nl kernel = {};
  kernel.nl_family = AF_NETLINK;
  if (sendto(fd, &req, sizeof req, 0, reinterpret_cast<sockaddr*>(&kernel),
             sizeof kernel) < 0) {
    close(fd);
    return -1;
  }

  alignas(nlmsghdr) char buf[512];
  ssize_t n;
  do {
    n = recv(fd, buf, sizeof buf, 0);
  } while (n < 0 && errno == EINTR);
  close(fd);
  if (n < 0) return -1;

  size_t left = size_t(n);
  for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, left);
       h = NLMSG_NEXT(h, left)) {
    // NLMSG_ERROR carries the refusal (no nf_tables: EOPNOTSUPP/ENOENT, EPERM).
    if (h->nlmsg_type != ((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN))
      return -1;
    const size_t head = NLMSG_LENGTH(sizeof(nfgenmsg));
    if (h->nlmsg_len < head) return -1;
    char* p = reinterpret_cast<char*>(h) + NLMSG_ALIGN(head);
    size_t rest = h->nlmsg_len - NLMSG_ALIGN(head);
    while (rest >= sizeof(nlattr)) {
      auto* a = reinterpret_cast<nlattr*>(p);
      if (a->nla_len < sizeof(nlattr) || a->nla_len > rest) return -1;
      if ((a->nla_type & NLA_TYPE_MASK) == NFTA_GEN_ID &&
          a->nla_len >= NLA_HDRLEN + sizeof(uint32_t)) {
        uint32_t be;
        memcpy(&be, p + NLA_HDRLEN, sizeof be);
        return int64_t(ntohl(be));
      }
      size_t step = NLA_ALIGN(a->nla_len);
      if (step >= rest) break;
      p += step;
      rest -= step;
    }
    return -1;
  }
  return -1;
}

}  // namespace

// nftGeneration(): the nf_tables ruleset generation of this network namespace
// (bumped by every ruleset commit, iptables-nft's included), or null when it
// cannot be read.
Napi::Value NftGeneration(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t gen = ReadGenId();
  if (gen < 0) return env.Null();
  return Napi::Number::New(env, double(gen));
}

}  // namespace weft
