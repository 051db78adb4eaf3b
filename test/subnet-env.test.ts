import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { leaseFromSubnetValue, readSubnetEnv, renderSubnetEnv, writeSubnetEnv } from "../control/subnet-env.js";
import { parsePrefix } from "../net/addr.js";

function prefix(text: string) {
  const p = parsePrefix(text, true);
  assert.ok(p, `bad prefix in test: ${text}`);
  return p;
}

const example = { network: prefix("10.244.0.0/16"), subnet: prefix("10.244.68.0/24"), mtu: 1472, ipMasq: false };
const exampleBytes =
  "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.68.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n";

describe("subnet.env", () => {
  let dir = "";
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "weft-subnet-env-"));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test("renders flannel's four lines byte for byte, bridge address = lease + 1", () => {
    assert.equal(renderSubnetEnv(example), exampleBytes);
    assert.equal(
      renderSubnetEnv({ network: prefix("10.9.9.16/28"), subnet: prefix("10.9.9.20/30"), mtu: 1400, ipMasq: true }),
      "FLANNEL_NETWORK=10.9.9.16/28\nFLANNEL_SUBNET=10.9.9.21/30\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=true\n",
    );
  });

  test("writes atomically into a new directory with mode 0644 and no temp files left", async () => {
    const path = join(dir, "run", "flannel", "subnet.env");
    await writeSubnetEnv(path, example);
    assert.equal(await readFile(path, "utf8"), exampleBytes);
    assert.equal((await stat(path)).mode & 0o777, 0o644);
    assert.deepEqual(await readdir(join(dir, "run", "flannel")), ["subnet.env"]);

    await writeSubnetEnv(path, { ...example, subnet: prefix("10.244.69.0/24"), ipMasq: true });
    assert.equal(
      await readFile(path, "utf8"),
      "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.69.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
    );
    assert.deepEqual(await readdir(join(dir, "run", "flannel")), ["subnet.env"]);
  });

  test("reads back what it wrote, with the lease (not the bridge address) as subnet", async () => {
    const path = join(dir, "readback", "subnet.env");
    await writeSubnetEnv(path, example);
    assert.deepEqual(await readSubnetEnv(path), example);
  });

  test("returns null when there is no file", async () => {
    assert.equal(await readSubnetEnv(join(dir, "absent", "subnet.env")), null);
  });

  test("tolerates comments, export, quotes, CRLF and extra lines", async () => {
    const path = join(dir, "tolerant.env");
    await writeFile(
      path,
      "# written by hand\r\nexport FLANNEL_NETWORK=\"10.1.0.0/16\"\r\nFLANNEL_IPV6_NETWORK=fd00::/56\r\nFLANNEL_SUBNET='10.1.17.1/24'\r\n\r\nFLANNEL_MTU=1450\r\nFLANNEL_IPMASQ=true\r\n",
    );
    assert.deepEqual(await readSubnetEnv(path), {
      network: prefix("10.1.0.0/16"),
      subnet: prefix("10.1.17.0/24"),
      mtu: 1450,
      ipMasq: true,
    });
  });

  test("reports missing or malformed fields as null instead of failing", async () => {
    const path = join(dir, "partial.env");
    await writeFile(path, "FLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=big\nFLANNEL_IPMASQ=yes\n");
    assert.deepEqual(await readSubnetEnv(path), {
      network: null,
      subnet: prefix("10.1.17.0/24"),
      mtu: null,
      ipMasq: null,
    });
  });

  test("FLANNEL_SUBNET minus 1 gives the lease to ask for again", () => {
    assert.deepEqual(leaseFromSubnetValue("10.244.68.1/24"), prefix("10.244.68.0/24"));
    assert.deepEqual(leaseFromSubnetValue("10.9.9.21/30"), prefix("10.9.9.20/30"));
    assert.deepEqual(leaseFromSubnetValue("10.1.4.129/25"), prefix("10.1.4.128/25"));
    assert.equal(leaseFromSubnetValue("10.244.68.1"), null);
    assert.equal(leaseFromSubnetValue("garbage"), null);
    assert.equal(leaseFromSubnetValue(undefined), null);
  });
});
