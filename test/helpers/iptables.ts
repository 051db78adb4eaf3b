// iptables arguments the tests use to damage weft's chains the way an admin would.

/** Deletes the first rule of FLANNEL-POSTRTG (the kube-proxy mark RETURN), as `iptables -D` would be typed. */
export const DELETE_MASQ_MARK_RULE: readonly string[] = [
  "-t",
  "nat",
  "-D",
  "FLANNEL-POSTRTG",
  "-m",
  "mark",
  "--mark",
  "0x4000/0x4000",
  "-m",
  "comment",
  "--comment",
  "flanneld masq",
  "-j",
  "RETURN",
];
