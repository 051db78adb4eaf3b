// Releasing the file pages start-up touched (docs/latency.md note 7), apart
// from native-io so that weftd can call it before it loads anything else.

import { loadAddon } from "./native/index.js";

/**
 * Unmaps this process's touched pages of read-only, unmodified file mappings
 * (node's executable, libraries): they stay in the page cache and fault back
 * in when used. Returns the bytes that were resident.
 */
export function releaseFilePages(): number {
  return loadAddon().releaseFilePages();
}

/**
 * Once start-up's burst is over: V8's compacting low-memory collections and
 * glibc's malloc_trim(0) give back what the burst left free but resident.
 * True when malloc_trim released memory.
 */
export function reduceMemory(): boolean {
  return loadAddon().reduceMemory();
}
