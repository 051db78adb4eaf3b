#include <limits.h>
#include <malloc.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <string>

#include <v8.h>

#include "addon.h"

namespace weft {

// releaseFilePages(): unmaps from this process the pages of read-only file
// mappings that it has touched. Node's start-up reads ~40 MB of its own
// executable, most of it never again; the pages stay in the page cache,
// shared, and fault back in one by one when code runs again, so resident
// memory follows what the daemon still executes.
//
// MADV_DONTNEED on a private mapping also throws away the private copies of
// its pages (and their swap), which would revert them to the file's bytes: the
// RELRO pages after relocation are such copies. So a mapping is released only
// if it is private and not writable, and its smaps entry shows no private copy
// anywhere: Anonymous, Swap and Private_Dirty all 0. The decision is taken at
// the entry's last line (VmFlags), once all three have been read.
//
// Other threads run while this does (V8's workers, libuv's pool), and a
// dlopen in one of them (glibc's NSS modules on a first getaddrinfo) maps a
// library read-only over its whole length first and then maps and relocates
// its segments in that range: a range read from smaps before that must not be
// released after it. Such a placeholder is neither executable nor node's own
// executable, and only those two kinds are released: code (position-
// independent, never written) and node's executable, which nothing maps again.
Napi::Value ReleaseFilePages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  char exe[PATH_MAX + 1];
  ssize_t exe_len = readlink("/proc/self/exe", exe, PATH_MAX);
  exe[exe_len > 0 ? exe_len : 0] = '\0';
  FILE* f = fopen("/proc/self/smaps", "re");
  if (f == nullptr) return Napi::Number::New(env, 0);
  char line[4096];
  unsigned long lo = 0, hi = 0;
  bool candidate = false;
  long rss_kb = 0, copies_kb = 0;
  double released = 0;
  while (fgets(line, sizeof line, f) != nullptr) {
    unsigned long a, b, offset;
    char perms[8];
    int path_at = 0;
    if (sscanf(line, "%lx-%lx %7s %lx %*s %*s %n", &a, &b, perms, &offset,
               &path_at) == 4) {
      lo = a;
      hi = b;
      rss_kb = 0;
      copies_kb = 0;
      candidate = false;
      // Private, not writable, and backed by a file (a path, not [vdso] etc.).
      if (perms[1] != 'w' && perms[3] == 'p' && path_at > 0 &&
          line[path_at] == '/') {
        std::string path(line + path_at);
        if (!path.empty() && path.back() == '\n') path.pop_back();
        candidate = perms[2] == 'x' || (exe[0] != '\0' && path == exe);
      }
      continue;
    }
    long kb = 0;
    if (sscanf(line, "Rss: %ld kB", &kb) == 1) rss_kb = kb;
    if (sscanf(line, "Anonymous: %ld kB", &kb) == 1 ||
        sscanf(line, "Swap: %ld kB", &kb) == 1 ||
        sscanf(line, "Private_Dirty: %ld kB", &kb) == 1) {
      copies_kb += kb;
    }
    if (strncmp(line, "VmFlags:", 8) == 0) {
      if (candidate && copies_kb == 0 && rss_kb > 0 &&
          madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED) == 0) {
        released += double(rss_kb) * 1024;
      }
      candidate = false;
    }
  }
  fclose(f);
  return Napi::Number::New(env, released);
}

// reduceMemory(): what a daemon does once its start-up burst is over (the
// list of thousands of peers: socket reads, TLS records, file reads, parsed
// pages, compiler zones), instead of waiting for V8's memory reducer (first
// run ~8 s after the heap stops growing) and for glibc's arenas, which never
// shrink on their own below their top:
//   1. V8's low-memory notification: full collections that compact the old
//      generation and give its emptied pages back;
//   2. glibc's malloc_trim(0): the free top of each arena, and MADV_DONTNEED
//      on whole free pages inside them.
// Nothing live is touched. Returns whether malloc_trim released anything
// (false where the C library has none).
Napi::Value ReduceMemory(const Napi::CallbackInfo& info) {
  v8::Isolate* isolate = v8::Isolate::GetCurrent();
  if (isolate != nullptr) isolate->LowMemoryNotification();
#ifdef __GLIBC__
  return Napi::Boolean::New(info.Env(), malloc_trim(0) == 1);
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}

}  // namespace weft
