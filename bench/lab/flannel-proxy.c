// A dataplane built the way flannel's udp backend builds its own (the C proxy
// behind `--backend=udp`), for the bench lab's `flannel` mode, so that weft
// can be measured against that design in the same run. It is not part of
// weft and never runs outside the bench's namespaces.
//
//   flannel0 (TUN, IFF_NO_PI) ──read, one packet──► routes scanned in order
//        ──► TTL-1, checksum patched ──► sendto(peer:port), one datagram
//   UDP :port ──recvfrom, one datagram──► TTL-1 ──► write(flannel0)
//
// One thread, poll() on both fds, one packet per system call, no batching and
// no offloads: the structure of flannel's proxy. What the bench never
// exercises is left out: ICMP errors (a packet without a route or with TTL 1
// is dropped silently) and the control socket that takes route updates.
//
// usage: flannel-proxy TUN_NAME PORT SUBNET/LEN=PEER_IP ...
// Prints "up <tun name>" on stdout once the TUN and the socket exist.

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_ROUTES 256
#define MAX_PACKET 65536

struct route {
  uint32_t net;   // host order
  uint32_t mask;  // host order
  struct sockaddr_in peer;
};

static struct route routes[MAX_ROUTES];
static int route_count;

static void die(const char *what) {
  fprintf(stderr, "flannel-proxy: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void usage(const char *why) {
  fprintf(stderr, "flannel-proxy: %s\nusage: flannel-proxy TUN_NAME PORT SUBNET/LEN=PEER_IP ...\n", why);
  exit(2);
}

static void parse_route(const char *arg, uint16_t port) {
  char buf[64];
  if (route_count == MAX_ROUTES) usage("too many routes");
  if (strlen(arg) >= sizeof buf) usage("route too long");
  strcpy(buf, arg);
  char *eq = strchr(buf, '=');
  char *slash = strchr(buf, '/');
  if (eq == NULL || slash == NULL || slash > eq) usage("a route is SUBNET/LEN=PEER_IP");
  *eq = '\0';
  *slash = '\0';
  struct in_addr net, peer;
  int len = atoi(slash + 1);
  if (inet_pton(AF_INET, buf, &net) != 1 || inet_pton(AF_INET, eq + 1, &peer) != 1 || len < 1 || len > 32)
    usage("a route is SUBNET/LEN=PEER_IP");
  struct route *r = &routes[route_count++];
  r->mask = len == 32 ? 0xffffffffu : ~(0xffffffffu >> len);
  r->net = ntohl(net.s_addr) & r->mask;
  memset(&r->peer, 0, sizeof r->peer);
  r->peer.sin_family = AF_INET;
  r->peer.sin_addr = peer;
  r->peer.sin_port = htons(port);
}

// The linear scan flannel's proxy does for every packet.
static const struct route *find_route(uint32_t dst) {
  for (int i = 0; i < route_count; i++) {
    if ((dst & routes[i].mask) == routes[i].net) return &routes[i];
  }
  return NULL;
}

// Validates an IPv4 header and takes one off its TTL, patching the checksum
// (RFC 1624). Returns 0 when the packet must be dropped.
static int decrement_ttl(uint8_t *p, ssize_t len) {
  if (len < 20 || (p[0] >> 4) != 4 || p[8] <= 1) return 0;
  p[8]--;
  uint32_t sum = (uint32_t)((p[10] << 8) | p[11]) + 0x0100;
  sum = (sum & 0xffff) + (sum >> 16);
  p[10] = (uint8_t)(sum >> 8);
  p[11] = (uint8_t)sum;
  return 1;
}

static int open_tun(const char *name, char *actual) {
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) die("open /dev/net/tun");
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  ifr.ifr_flags = IFF_TUN | IFF_NO_PI;
  strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) die("ioctl TUNSETIFF");
  memcpy(actual, ifr.ifr_name, IFNAMSIZ);
  return fd;
}

int main(int argc, char **argv) {
  if (argc < 4) usage("missing arguments");
  int port = atoi(argv[2]);
  if (port < 1 || port > 65535) usage("PORT must be 1..65535");
  for (int i = 3; i < argc; i++) parse_route(argv[i], (uint16_t)port);

  char name[IFNAMSIZ];
  int tun = open_tun(argv[1], name);
  int sock = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (sock < 0) die("socket");
  struct sockaddr_in local;
  memset(&local, 0, sizeof local);
  local.sin_family = AF_INET;
  local.sin_port = htons((uint16_t)port);
  if (bind(sock, (struct sockaddr *)&local, sizeof local) < 0) die("bind");
  printf("up %s\n", name);
  fflush(stdout);

  static uint8_t buf[MAX_PACKET];
  struct pollfd fds[2] = {{tun, POLLIN, 0}, {sock, POLLIN, 0}};
  for (;;) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (fds[0].revents & POLLIN) {
      ssize_t n = read(tun, buf, sizeof buf);
      if (n > 0 && decrement_ttl(buf, n)) {
        uint32_t dst = ((uint32_t)buf[16] << 24) | ((uint32_t)buf[17] << 16) | ((uint32_t)buf[18] << 8) | buf[19];
        const struct route *r = find_route(dst);
        // A full socket buffer drops the packet, as in flannel's proxy.
        if (r != NULL) sendto(sock, buf, (size_t)n, 0, (const struct sockaddr *)&r->peer, sizeof r->peer);
      }
    }
    if (fds[1].revents & POLLIN) {
      ssize_t n = recv(sock, buf, sizeof buf, 0);
      if (n > 0 && decrement_ttl(buf, n)) {
        // A full flannel0 queue (EAGAIN) or a packet the kernel refuses is dropped.
        ssize_t written = write(tun, buf, (size_t)n);
        (void)written;
      }
    }
  }
}
