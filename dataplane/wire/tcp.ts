// TCP header layout (RFC 9293 3.1): field offsets from the TCP header start
// and the flag bits of byte 13. Readers over a Uint8Array, no objects.

export const TCP_MIN_HEADER = 20;
/** Source port, then the destination port at 2. */
export const TCP_SRC_PORT = 0;
export const TCP_SEQ = 4;
export const TCP_ACK = 8;
export const TCP_DATA_OFFSET = 12;
export const TCP_FLAGS = 13;
export const TCP_WINDOW = 14;
export const TCP_CHECKSUM = 16;
export const TCP_URGENT = 18;

export const TCP_FIN = 0x01;
export const TCP_SYN = 0x02;
export const TCP_RST = 0x04;
export const TCP_PSH = 0x08;
export const TCP_ACK_FLAG = 0x10;
export const TCP_URG = 0x20;
export const TCP_ECE = 0x40;
export const TCP_CWR = 0x80;

/** Header length in bytes of the TCP header at bytes[t]. */
export function tcpHeaderLength(bytes: Uint8Array, t: number): number {
  return (bytes[t + TCP_DATA_OFFSET] >>> 4) << 2;
}

/** Big-endian u32 at bytes[o] as an unsigned number. */
export function readU32(bytes: Uint8Array, o: number): number {
  return ((bytes[o] << 24) | (bytes[o + 1] << 16) | (bytes[o + 2] << 8) | bytes[o + 3]) >>> 0;
}

export function readU16(bytes: Uint8Array, o: number): number {
  return (bytes[o] << 8) | bytes[o + 1];
}

/** Writes a big-endian u16 at bytes[o] (a checksum, a port). */
export function writeU16(bytes: Uint8Array, o: number, value: number): void {
  bytes[o] = (value >>> 8) & 0xff;
  bytes[o + 1] = value & 0xff;
}
