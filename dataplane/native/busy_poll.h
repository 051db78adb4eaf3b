// What a thread does after a batch, instead of going straight back to
// libuv: everything here saves wake-ups or system calls per hop, which is
// where a userspace hop's time goes on a VM (docs/latency.md).
//
//   batch handled ──► Spinner::AfterBatch(conversation: one small packet?)
//     1. follow-ups: a device written to is read at once (the pod's reply is
//        made inside the write); each read that finds one is a batch
//     2. spin (busy polling): window = policy.OnWake(...)
//          epoll_wait(private set, 0) + sched_yield per step, or with the
//          ring (--busy-poll-ring) a load of io_uring's completion queue
//          and a pause, no system call
//          ├─ readable: drain + onBatch, the wait restarts
//          └─ quiet for the window, or 2 ms in all
//     3. wait (conversations only): sleep on libuv's own epoll set, serve our
//        fds directly, back to libuv for anything else (Spinner::Wait)
//
// The window (AdaptiveWindow) adapts the way KVM's halt-poll governor does:
// it starts at kStartNs when a packet arrives soon after the previous one,
// doubles (up to max) when a packet came just after the window ran out, halves
// when the wait after it was long, and drops to zero when the thread is idle,
// so an idle daemon never spins. A duty cap keeps the time spent waiting in
// spins below a share of one core over every kDutyPeriodNs. setBusyPoll(us)
// replaces the policy with a fixed window (the old --busy-poll-us).
#pragma once

#include <sched.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "poll_ring.h"

namespace weft {

// The window policy, pure (tests drive it with a fake clock through the
// addon's busyPollTrace).
class AdaptiveWindow {
 public:
  static constexpr uint64_t kStartNs = 50'000;
  static constexpr uint64_t kMaxNs = 200'000;
  // Below this a halved window is not worth a syscall: zero.
  static constexpr uint64_t kFloorNs = 10'000;
  // A gap this long means idle: zero at once, whatever the window was.
  static constexpr uint64_t kIdleNs = 100'000'000;
  static constexpr uint64_t kDutyPeriodNs = 100'000'000;

  // fixed_ns > 0: always that window, no adaptation, no duty cap.
  // duty_percent: the share of each period spins may spend waiting.
  void Configure(bool adaptive, uint64_t fixed_ns, uint32_t duty_percent) {
    adaptive_ = adaptive;
    fixed_ns_ = fixed_ns;
    duty_percent_ = duty_percent;
    window_ns_ = 0;
    ran_out_at_ = 0;
  }

  bool enabled() const { return fixed_ns_ > 0 || adaptive_; }
  uint64_t window_ns() const { return window_ns_; }

  // A batch came through the event loop at `now` (not during a spin): the
  // window to poll for after it.
  uint64_t OnWake(uint64_t now) {
    if (fixed_ns_ > 0) return fixed_ns_;
    if (!adaptive_) return 0;
    if (ran_out_at_ != 0) {
      const uint64_t gap = now > ran_out_at_ ? now - ran_out_at_ : 0;
      if (gap <= kMaxNs) {
        // Just missed: a longer window would have caught it.
        window_ns_ = window_ns_ == 0 ? kStartNs : std::min(window_ns_ * 2, kMaxNs);
      } else if (gap >= kIdleNs) {
        window_ns_ = 0;
      } else {
        window_ns_ /= 2;
        if (window_ns_ < kFloorNs) window_ns_ = 0;
      }
    }
    return DutyAllows(now) ? window_ns_ : 0;
  }

  // The spin that followed OnWake ended at `now` with nothing more to read
  // (also called after a zero window), having waited `waited_ns` in all.
  void OnRanOut(uint64_t now, uint64_t waited_ns) {
    ran_out_at_ = now == 0 ? 1 : now;
    Charge(now, waited_ns);
  }

  // Time spent waiting in a spin that ended at the 2 ms cap (traffic kept
  // coming): not a run-out, the window stays.
  void OnCapped(uint64_t now, uint64_t waited_ns) {
    ran_out_at_ = 0;
    Charge(now, waited_ns);
  }

  // The waiting still allowed in the current duty period.
  uint64_t DutyLeft(uint64_t now) {
    // Unbounded, but added to a clock reading: a whole period is more than
    // any spin may last (kSpinCapNs), and cannot overflow.
    if (fixed_ns_ > 0) return kDutyPeriodNs;
    Roll(now);
    const uint64_t allowed = kDutyPeriodNs / 100 * duty_percent_;
    return allowed > spent_ns_ ? allowed - spent_ns_ : 0;
  }

 private:
  bool DutyAllows(uint64_t now) { return DutyLeft(now) > 0; }

  void Charge(uint64_t now, uint64_t waited_ns) {
    Roll(now);
    spent_ns_ += waited_ns;
  }

  void Roll(uint64_t now) {
    if (now - period_start_ >= kDutyPeriodNs || now < period_start_) {
      period_start_ = now;
      spent_ns_ = 0;
    }
  }

  bool adaptive_ = false;
  uint64_t fixed_ns_ = 0;
  uint32_t duty_percent_ = 50;
  uint64_t window_ns_ = 0;
  uint64_t ran_out_at_ = 0;
  uint64_t period_start_ = 0;
  uint64_t spent_ns_ = 0;
};

// A source as the spinner sees it.
class Spinnable {
 public:
  virtual int SpinFd() const = 0;
  virtual bool SpinWanted() const = 0;
  // Drains the fd and hands a batch to JavaScript, as a readable event would.
  virtual void SpinRead() = 0;
  // True once after a batch wrote to this fd in a way that makes a packet
  // coming back likely already queued (a TUN write: the pod's reply is made
  // inside it). The spinner then reads it at once instead of a loop turn.
  virtual bool TakeFollowUp() { return false; }

 protected:
  ~Spinnable() = default;
};

// The sources of one JS thread, their private epoll set and the policy.
class Spinner {
 public:
  // The longest one spin keeps the event loop waiting, batches included.
  static constexpr uint64_t kSpinCapNs = 2'000'000;

  static Spinner& Get() {
    // Never destroyed: a finalizer may still close a source at thread exit.
    static thread_local Spinner* spinner = new Spinner;
    return *spinner;
  }

  AdaptiveWindow& policy() { return policy_; }

  // Counters for /metrics and the bench: spins started, the ones that caught
  // a batch, and the time spent waiting in them.
  uint64_t spins() const { return spins_; }
  uint64_t caught() const { return caught_; }
  uint64_t waited_ns() const { return waited_ns_; }

  void Add(Spinnable* s) {
    if (std::find(members_.begin(), members_.end(), s) != members_.end()) return;
    if (epfd_ < 0) epfd_ = epoll_create1(EPOLL_CLOEXEC);
    if (epfd_ >= 0) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.ptr = s;
      epoll_ctl(epfd_, EPOLL_CTL_ADD, s->SpinFd(), &ev);
    }
    members_.push_back(s);
    armed_.push_back(0);
  }

  // Called before the source's fd is closed.
  void Remove(Spinnable* s) {
    auto it = std::find(members_.begin(), members_.end(), s);
    if (it == members_.end()) return;
    if (epfd_ >= 0) epoll_ctl(epfd_, EPOLL_CTL_DEL, s->SpinFd(), nullptr);
    const size_t i = size_t(it - members_.begin());
    // An armed poll holds the file open: the close would not release it.
    if (armed_[i] != 0 && ring_.Cancel(armed_[i])) ring_.Submit();
    members_.erase(it);
    armed_.erase(armed_.begin() + ptrdiff_t(i));
  }

  // Whether spins watch readiness through io_uring (poll_ring.h) instead of
  // the epoll set. Returns 0 when that is what they now do (or `on` is
  // false), else the errno io_uring failed with (they keep epoll).
  int SetRing(bool on) {
    if (!on) {
      ring_on_ = false;
      return 0;
    }
    if (!ring_.Open()) return ring_.open_error();
    ring_on_ = true;
    return 0;
  }
  bool ring_on() const { return ring_on_; }
  // Submissions that armed ring polls (each one io_uring_enter).
  uint64_t ring_arms() const { return ring_arms_; }

  // Follow-up reads tried and those that found a packet.
  uint64_t follow_ups() const { return follow_ups_; }
  uint64_t follow_up_hits() const { return follow_up_hits_; }
  void CountFollowUp(bool hit) {
    follow_ups_++;
    if (hit) follow_up_hits_++;
  }

  // Waits that the event loop would have made itself (each saves libuv's
  // empty epoll_pwait), and the batches they caught.
  uint64_t waits() const { return waits_; }
  uint64_t waits_caught() const { return waits_caught_; }

  void SetLoop(uv_loop_t* loop) { loop_ = loop; }
  // Off: every wait goes back through the event loop (setLoopWait).
  void SetLoopWait(bool on) { loop_wait_ = on; }

  // Called after a batch was handed over (from an event-loop wake-up, or
  // nested, from a follow-up, spin or wait). `conversation`: it was one small
  // packet, the pattern of request-response traffic.
  void AfterBatch(bool conversation) {
    conversation_ = conversation;
    if (spinning_) return;
    spinning_ = true;
    for (int round = 0;; round++) {
      FollowUps();
      Spin();
      // Writes by batches the spin caught asked for follow-ups too.
      FollowUps();
      // A batch caught by the wait is a wake-up like one through libuv.
      if (round == kMaxWaits || !conversation_ || !WaitOnce()) break;
    }
    spinning_ = false;
  }

  static uint64_t Now() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return uint64_t(ts.tv_sec) * 1'000'000'000u + uint64_t(ts.tv_nsec);
  }

 private:
  // The follow-up reads the batch (and the batches they produce) asked for,
  // each a plain drain: what one finds reaches JavaScript in fd order, as a
  // readable event's batch would. Bounded so the event loop keeps its turn.
  static constexpr int kMaxFollowUps = 64;
  void FollowUps() {
    for (int round = 0; round < kMaxFollowUps; round++) {
      Spinnable* next = nullptr;
      for (Spinnable* m : members_) {
        if (m->TakeFollowUp()) {
          next = m;
          break;
        }
      }
      if (next == nullptr) return;
      if (next->SpinWanted()) next->SpinRead();
    }
  }

  // Sleeping through libuv costs two system calls per wake-up: with the loop
  // metrics Node turns on, libuv first polls with timeout 0 (empty while
  // traffic is a conversation) and only then sleeps. Here the thread sleeps
  // once, on libuv's own epoll set with libuv's own timeout, and serves a
  // packet of its own sources without a loop turn:
  //
  //   epoll_wait(uv_backend_fd, uv_backend_timeout)
  //     ├─ only our fds, readable ─► drain + onBatch (+ follow-ups), again
  //     └─ anything else (a timer due, another fd, a writable wait, an
  //        interest change not yet given to epoll) ─► back to libuv, which
  //        finds the same events still there (level-triggered)
  //
  // Only while the traffic is a conversation (bulk keeps libuv's batching),
  // at most kMaxWaits rounds before the loop gets its turn. Each batch caught
  // gets its follow-ups and spin as one from libuv would.
  static constexpr int kMaxWaits = 64;
  static constexpr int kMaxWaitMs = 100;
  // One sleep; true when it caught batches of ours (and served them).
  bool WaitOnce() {
    if (!loop_wait_ || loop_ == nullptr || members_.empty()) return false;
    // libuv applies interest changes (uv_poll_start/stop, a stream's wait
    // for writability) to epoll only when it polls: not yet applied, the
    // set below would not wake for them.
    if (loop_->watcher_queue.next != &loop_->watcher_queue) return false;
    uv_update_time(loop_);
    int timeout = uv_backend_timeout(loop_);
    if (timeout == 0) return false;
    if (timeout < 0 || timeout > kMaxWaitMs) timeout = kMaxWaitMs;
    waits_++;
    epoll_event events[8];
    const int n = epoll_wait(uv_backend_fd(loop_), events, 8, timeout);
    if (n <= 0) return false;
    Spinnable* ours[8];
    for (int i = 0; i < n; i++) {
      ours[i] = nullptr;
      if ((events[i].events & ~uint32_t{EPOLLIN}) != 0) return false;
      for (Spinnable* m : members_) {
        if (m->SpinFd() == events[i].data.fd && m->SpinWanted()) ours[i] = m;
      }
      if (ours[i] == nullptr) return false;
    }
    waits_caught_++;
    conversation_ = false;
    for (int i = 0; i < n; i++) {
      // A callback may have closed or paused this source (or another).
      if (std::find(members_.begin(), members_.end(), ours[i]) == members_.end() ||
          !ours[i]->SpinWanted()) {
        continue;
      }
      ours[i]->SpinRead();
    }
    return true;
  }

  void Spin() {
    if (members_.empty() || epfd_ < 0 || !policy_.enabled()) return;
    const uint64_t start = Now();
    const uint64_t window = policy_.OnWake(start);
    if (window == 0) {
      policy_.OnRanOut(start, 0);
      return;
    }
    spins_++;
    const uint64_t cap_at = start + kSpinCapNs;
    uint64_t waited = 0;
    uint64_t wait_from = start;
    uint64_t deadline = std::min({start + window, cap_at, start + policy_.DutyLeft(start)});
    bool caught = false;
    // Completions of polls that fired since the last spin: the event loop
    // or a follow-up served those packets; arming again below tells if
    // anything is still queued.
    if (ring_on_) ReapRing(nullptr);
    for (;;) {
      Spinnable* ready[8];
      const int n = ring_on_ ? ReapRing(ready) : PollEpoll(ready);
      bool read = false;
      for (int i = 0; i < n; i++) {
        Spinnable* m = ready[i];
        // A callback may have closed or paused this source (or another).
        if (std::find(members_.begin(), members_.end(), m) == members_.end() ||
            !m->SpinWanted()) {
          continue;
        }
        if (!read) waited += Now() - wait_from;
        read = true;
        m->SpinRead();
      }
      // About to wait on the ring: every source needs its poll armed.
      if (!read && ring_on_ && !ArmRing()) ring_on_ = false;
      const uint64_t now = Now();
      if (read) {
        caught = true;
        wait_from = now;
        if (now >= cap_at) {
          policy_.OnCapped(now, waited);
          break;
        }
        // Each batch restarts the wait, but never past the cap.
        deadline = std::min({now + window, cap_at, now + policy_.DutyLeft(now)});
        continue;
      }
      if (members_.empty()) {
        policy_.OnRanOut(now, waited + (now - wait_from));
        break;
      }
      if (now >= deadline) {
        waited += now - wait_from;
        policy_.OnRanOut(now, waited);
        break;
      }
      // Whoever this packet woke (the pod, ping, the peer's weftd on the
      // same machine) may be queued behind us on this CPU: let it run. On
      // the ring a step makes no system call at all, a yield included: the
      // mode for a poller with a core to itself (docs/latency.md note 10).
      if (ring_on_) {
        Relax();
      } else {
        sched_yield();
      }
    }
    if (caught) caught_++;
    waited_ns_ += waited;
  }

  // The epoll set's readable members (at most 8), without waiting.
  int PollEpoll(Spinnable** ready) {
    epoll_event events[8];
    const int n = epoll_wait(epfd_, events, 8, 0);
    for (int i = 0; i < n; i++) ready[i] = static_cast<Spinnable*>(events[i].data.ptr);
    return n < 0 ? 0 : n;
  }

  // Takes the ring's completions, each clearing its member's armed poll;
  // returns the members whose poll saw them readable (at most 8) when
  // `ready` is given.
  int ReapRing(Spinnable** ready) {
    int n = 0;
    ring_.Reap([&](uint64_t tag, int32_t res) {
      if (tag == 0) return;
      for (size_t i = 0; i < members_.size(); i++) {
        if (armed_[i] != tag) continue;
        armed_[i] = 0;
        if (ready != nullptr && res > 0 && n < 8) ready[n++] = members_[i];
      }
    });
    return n;
  }

  // Arms a poll for every member that has none: one system call if any.
  bool ArmRing() {
    bool queued = false;
    for (size_t i = 0; i < members_.size(); i++) {
      if (armed_[i] != 0 || !members_[i]->SpinWanted()) continue;
      const uint64_t tag = ++next_tag_;
      if (!ring_.Arm(members_[i]->SpinFd(), tag)) return false;
      armed_[i] = tag;
      queued = true;
    }
    if (!queued) return true;
    ring_arms_++;
    return ring_.Submit() >= 0;
  }

  static void Relax() {
    for (int i = 0; i < 16; i++) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#elif defined(__aarch64__)
      __asm__ __volatile__("yield");
#endif
    }
  }

  AdaptiveWindow policy_;
  bool spinning_ = false;
  int epfd_ = -1;
  uint64_t spins_ = 0;
  uint64_t caught_ = 0;
  uint64_t waited_ns_ = 0;
  uv_loop_t* loop_ = nullptr;
  bool loop_wait_ = true;
  bool conversation_ = false;
  uint64_t waits_ = 0;
  uint64_t waits_caught_ = 0;
  uint64_t follow_ups_ = 0;
  uint64_t follow_up_hits_ = 0;
  std::vector<Spinnable*> members_;
  // The tag of each member's armed ring poll, 0 when none is.
  std::vector<uint64_t> armed_;
  PollRing ring_;
  bool ring_on_ = false;
  uint64_t next_tag_ = 0;
  uint64_t ring_arms_ = 0;
};

}  // namespace weft
