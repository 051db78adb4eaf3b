# The bench lab's live replay: sends the packets of a file made by
# live-replay.ts ([u16 length][IPv4 packet]...) from a pod, as they are, with
# a raw socket. Node has no raw sockets; python3's socket module does
# (IPPROTO_RAW implies IP_HDRINCL: the kernel sends our IP header unchanged).
#
# usage: python3 injector.py FILE DESTINATION_IP
# Prints {"sent": N, "errors": M} when done.
import json, socket, struct, sys
data = open(sys.argv[1], "rb").read()
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
dst = (sys.argv[2], 0)
off = sent = errors = 0
while off + 2 <= len(data):
    n = struct.unpack_from(">H", data, off)[0]
    off += 2
    try:
        s.sendto(data[off:off + n], dst)
        sent += 1
    except OSError:
        errors += 1
    off += n
print(json.dumps({"sent": sent, "errors": errors}))
