// The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
// One place for both, so every view and builder agrees on the arithmetic.

/**
 * Ones'-complement sum of bytes[off, off+len) folded to 16 bits, added to
 * `initial` (a previous partial sum, e.g. a pseudo-header). Not complemented.
 */
export function onesSum(bytes: Uint8Array, off: number, len: number, initial = 0): number {
  let sum = initial;
  const end = off + len - 1;
  let i = off;
  for (; i < end; i += 2) sum += (bytes[i] << 8) | bytes[i + 1];
  if (i === end) sum += bytes[i] << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return sum;
}

/** The checksum field value for bytes[off, off+len): ~sum, 16 bits. */
export function internetChecksum(bytes: Uint8Array, off: number, len: number, initial = 0): number {
  return ~onesSum(bytes, off, len, initial) & 0xffff;
}

/**
 * RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m') for one 16-bit word changing from
 * `oldWord` to `newWord`. Unlike eqn. 2 it never yields 0x0000 from a nonzero
 * sum, the corner RFC 1624 section 3 warns about.
 */
export function updateChecksum16(checksum: number, oldWord: number, newWord: number): number {
  let sum = (~checksum & 0xffff) + (~oldWord & 0xffff) + newWord;
  sum = (sum & 0xffff) + (sum >>> 16);
  sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}
