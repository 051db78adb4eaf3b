#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include <string>

#include "addon.h"

namespace weft {

// releaseFilePages(): unmaps from this process the pages of read-only file
// mappings (the node executable, shared libraries, this addon) that it has
// touched. Node's start-up reads ~40 MB of its own executable, most of it
// never again; the pages stay in the page cache, shared, and fault back in
// one by one when code runs again, so resident memory follows what the
// daemon still executes. A mapping is skipped if it is writable or holds
// private copies (Anonymous > 0, e.g. the RELRO page after relocation): those
// pages would revert to the file's bytes. Returns the bytes that were resident.
Napi::Value ReleaseFilePages(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  FILE* f = fopen("/proc/self/smaps", "re");
  if (f == nullptr) return Napi::Number::New(env, 0);
  char line[4096];
  unsigned long lo = 0, hi = 0;
  bool candidate = false;
  long rss_kb = 0;
  double released = 0;
  auto finish = [&](long anon_kb) {
    if (candidate && anon_kb == 0 && rss_kb > 0 &&
        madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED) == 0) {
      released += double(rss_kb) * 1024;
    }
    candidate = false;
  };
  while (fgets(line, sizeof line, f) != nullptr) {
    unsigned long a, b, offset;
    char perms[8];
    int path_at = 0;
    if (sscanf(line, "%lx-%lx %7s %lx %*s %*s %n", &a, &b, perms, &offset, &path_at) == 4) {
      lo = a;
      hi = b;
      rss_kb = 0;
      // Private, not writable, and backed by a file (a path, not [vdso] etc.).
      candidate = perms[1] != 'w' && perms[3] == 'p' && path_at > 0 && line[path_at] == '/';
      continue;
    }
    long kb = 0;
    if (sscanf(line, "Rss: %ld kB", &kb) == 1) rss_kb = kb;
    if (sscanf(line, "Anonymous: %ld kB", &kb) == 1) finish(kb);
  }
  fclose(f);
  return Napi::Number::New(env, released);
}

}  // namespace weft
