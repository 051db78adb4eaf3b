// Readiness through io_uring, for the spinner (busy_poll.h): a one-shot
// POLL_ADD per source whose completion the kernel writes into memory shared
// with this process, so a spin step is a load, not a system call.
//
//   Arm(fd, tag) ... Submit()        one io_uring_enter for all queued polls
//   packet arrives ─► the kernel completes the poll (task work, run as this
//                     thread next returns to user mode: an interrupt if it
//                     is spinning there) ─► a CQE {tag, revents} in the ring
//   Reap(f)                          plain loads and one release store
//
// A poll fires once; the spinner arms it again before it next waits. Open()
// fails where io_uring does not run (an old kernel, a seccomp profile that
// refuses it, kernel.io_uring_disabled): the spinner keeps its epoll set.
#pragma once

#if defined(__has_include)
#if __has_include(<linux/io_uring.h>)
#include <linux/io_uring.h>
#define WEFT_HAVE_IO_URING 1
#endif
#endif

#include <poll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>

namespace weft {

#if defined(WEFT_HAVE_IO_URING) && defined(__NR_io_uring_setup)

class PollRing {
 public:
  static constexpr unsigned kEntries = 16;

  PollRing() = default;
  PollRing(const PollRing&) = delete;
  PollRing& operator=(const PollRing&) = delete;

  bool is_open() const { return fd_ >= 0; }
  // Why Open() failed (an errno), 0 if it did not.
  int open_error() const { return open_error_; }

  bool Open() {
    if (fd_ >= 0) return true;
    io_uring_params p;
    std::memset(&p, 0, sizeof p);
    const int fd = int(syscall(__NR_io_uring_setup, kEntries, &p));
    if (fd < 0) {
      open_error_ = errno;
      return false;
    }
    if ((p.features & IORING_FEAT_SINGLE_MMAP) == 0) {
      // Kernels before 5.4: not worth a second mapping path.
      close(fd);
      open_error_ = ENOSYS;
      return false;
    }
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(uint32_t);
    const size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
    if (cq_len > sq_len) sq_len = cq_len;
    void* rings = mmap(nullptr, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                       fd, IORING_OFF_SQ_RING);
    if (rings == MAP_FAILED) {
      open_error_ = errno;
      close(fd);
      return false;
    }
    const size_t sqes_len = p.sq_entries * sizeof(io_uring_sqe);
    void* sqes = mmap(nullptr, sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                      fd, IORING_OFF_SQES);
    if (sqes == MAP_FAILED) {
      open_error_ = errno;
      munmap(rings, sq_len);
      close(fd);
      return false;
    }
    auto* base = static_cast<uint8_t*>(rings);
    sq_tail_ = reinterpret_cast<uint32_t*>(base + p.sq_off.tail);
    sq_mask_ = *reinterpret_cast<uint32_t*>(base + p.sq_off.ring_mask);
    sq_array_ = reinterpret_cast<uint32_t*>(base + p.sq_off.array);
    cq_head_ = reinterpret_cast<uint32_t*>(base + p.cq_off.head);
    cq_tail_ = reinterpret_cast<uint32_t*>(base + p.cq_off.tail);
    cq_mask_ = *reinterpret_cast<uint32_t*>(base + p.cq_off.ring_mask);
    cqes_ = reinterpret_cast<io_uring_cqe*>(base + p.cq_off.cqes);
    sqes_ = static_cast<io_uring_sqe*>(sqes);
    sq_entries_ = p.sq_entries;
    fd_ = fd;
    open_error_ = 0;
    return true;
  }

  // Queues a one-shot poll for POLLIN on `fd`; its completion carries `tag`.
  // False when the submission queue is full (Submit first).
  bool Arm(int fd, uint64_t tag) {
    io_uring_sqe* sqe = Next();
    if (sqe == nullptr) return false;
    sqe->opcode = IORING_OP_POLL_ADD;
    sqe->fd = fd;
    sqe->poll32_events = POLLIN;
    sqe->user_data = tag;
    return true;
  }

  // Queues the removal of the poll tagged `tag` (its completion says
  // -ECANCELED, the removal's own carries tag 0).
  bool Cancel(uint64_t tag) {
    io_uring_sqe* sqe = Next();
    if (sqe == nullptr) return false;
    sqe->opcode = IORING_OP_POLL_REMOVE;
    sqe->fd = -1;
    sqe->addr = tag;
    sqe->user_data = 0;
    return true;
  }

  // Hands the queued entries to the kernel: one system call, none if nothing
  // is queued. Returns how many it took, or -errno.
  int Submit() {
    if (queued_ == 0) return 0;
    // The kernel reads the tail after this store: entries first.
    __atomic_store_n(sq_tail_, local_tail_, __ATOMIC_RELEASE);
    const unsigned n = queued_;
    int r;
    do {
      r = int(syscall(__NR_io_uring_enter, fd_, n, 0, 0, nullptr, 0));
    } while (r < 0 && errno == EINTR);
    if (r < 0) return -errno;
    queued_ -= unsigned(r) < n ? unsigned(r) : n;
    return r;
  }

  // A completion waiting? One load.
  bool Ready() const {
    return __atomic_load_n(cq_tail_, __ATOMIC_ACQUIRE) != *cq_head_;
  }

  // f(tag, res) for each completion, oldest first; returns how many.
  template <class F>
  unsigned Reap(F&& f) {
    uint32_t head = *cq_head_;
    const uint32_t tail = __atomic_load_n(cq_tail_, __ATOMIC_ACQUIRE);
    unsigned n = 0;
    while (head != tail) {
      const io_uring_cqe& c = cqes_[head & cq_mask_];
      const uint64_t tag = c.user_data;
      const int32_t res = c.res;
      head++;
      n++;
      f(tag, res);
    }
    // The kernel may reuse the entries once it sees the new head.
    __atomic_store_n(cq_head_, head, __ATOMIC_RELEASE);
    return n;
  }

 private:
  io_uring_sqe* Next() {
    if (fd_ < 0 || queued_ >= sq_entries_) return nullptr;
    const uint32_t index = local_tail_ & sq_mask_;
    io_uring_sqe* sqe = &sqes_[index];
    std::memset(sqe, 0, sizeof *sqe);
    sq_array_[index] = index;
    local_tail_++;
    queued_++;
    return sqe;
  }

  int fd_ = -1;
  int open_error_ = 0;
  uint32_t* sq_tail_ = nullptr;
  uint32_t sq_mask_ = 0;
  uint32_t* sq_array_ = nullptr;
  uint32_t* cq_head_ = nullptr;
  uint32_t* cq_tail_ = nullptr;
  uint32_t cq_mask_ = 0;
  io_uring_cqe* cqes_ = nullptr;
  io_uring_sqe* sqes_ = nullptr;
  unsigned sq_entries_ = 0;
  uint32_t local_tail_ = 0;
  unsigned queued_ = 0;
};

#else

// No io_uring headers at build time: never opens, the spinner keeps epoll.
class PollRing {
 public:
  bool is_open() const { return false; }
  int open_error() const { return ENOSYS; }
  bool Open() { return false; }
  bool Arm(int, uint64_t) { return false; }
  bool Cancel(uint64_t) { return false; }
  int Submit() { return 0; }
  bool Ready() const { return false; }
  template <class F>
  unsigned Reap(F&&) { return 0; }
};

#endif

}  // namespace weft
