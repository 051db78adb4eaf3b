// The cost of entering the kernel on this machine, for the bench's header:
// N trivial system calls (getppid, through syscall(2) so no libc cache can
// answer instead of the kernel), timed by the wall clock and by this
// process's CPU clock. On a paravirtualised guest a kernel entry can cost
// ten times what it costs on bare metal, and every per-hop figure of a TUN
// dataplane moves with it.
//
// usage: syscall-cost [N]      prints "<wall ns per call> <cpu ns per call>"

#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_ns(clockid_t clock) {
  struct timespec ts;
  clock_gettime(clock, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 1000000;
  if (n <= 0) {
    fprintf(stderr, "syscall-cost: N must be a positive count, got %s\n", argv[1]);
    return 2;
  }
  double wall0 = now_ns(CLOCK_MONOTONIC);
  double cpu0 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
  for (long i = 0; i < n; i++) syscall(SYS_getppid);
  double cpu1 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
  double wall1 = now_ns(CLOCK_MONOTONIC);
  printf("%.1f %.1f\n", (wall1 - wall0) / (double)n, (cpu1 - cpu0) / (double)n);
  return 0;
}
