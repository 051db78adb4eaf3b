import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { describe, it } from "node:test";
import { promisify } from "node:util";
import { parseOptions, UsageError } from "../control/cli.js";

const run = promisify(execFile);
const WEFTD = new URL("../../bin/weftd", import.meta.url).pathname;

describe("weftd flags", () => {
  it("parses the seeds' systemd unit style: single dash and =", () => {
    const o = parseOptions(
      [
        "-etcd-endpoints=https://198.18.0.10:2379,https://198.18.0.11:2379",
        "-etcd-cafile=/opt/etcd/ssl/ca.pem",
        "-etcd-certfile=/opt/etcd/ssl/server.pem",
        "-etcd-keyfile=/opt/etcd/ssl/server-key.pem",
        "-etcd-prefix=/coreos.com/network",
        "-ip-masq",
        "-iface=eth0",
      ],
      {},
    );
    assert.deepEqual(o.etcdEndpoints, ["https://198.18.0.10:2379", "https://198.18.0.11:2379"]);
    assert.equal(o.etcdCafile, "/opt/etcd/ssl/ca.pem");
    assert.equal(o.etcdCertfile, "/opt/etcd/ssl/server.pem");
    assert.equal(o.etcdKeyfile, "/opt/etcd/ssl/server-key.pem");
    assert.equal(o.ipMasq, true);
    assert.deepEqual(o.iface, ["eth0"]);
  });

  it("has flanneld's defaults", () => {
    const o = parseOptions([], {});
    assert.deepEqual(o.etcdEndpoints, ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]);
    assert.equal(o.etcdPrefix, "/coreos.com/network");
    assert.equal(o.subnetFile, "/run/flannel/subnet.env");
    assert.equal(o.subnetLeaseRenewMargin, 60);
    assert.equal(o.iptablesResync, 5);
    assert.equal(o.iptablesForwardRules, true);
    assert.equal(o.healthzIp, "0.0.0.0");
    assert.equal(o.healthzPort, 0);
    assert.equal(o.ipMasq, false);
    assert.equal(o.peerCheck, true);
    assert.equal(o.registryDir, "");
  });

  it("takes values as the next argument, repeats --iface, and reads booleans Go's way", () => {
    const o = parseOptions(
      [
        "--iface",
        "eth1",
        "--iface",
        "198.18.0.1",
        "--ip-masq=false",
        "--iptables-forward-rules=0",
        "--healthz-port",
        "9100",
      ],
      {},
    );
    assert.deepEqual(o.iface, ["eth1", "198.18.0.1"]);
    assert.equal(o.ipMasq, false);
    assert.equal(o.iptablesForwardRules, false);
    assert.equal(o.healthzPort, 9100);
  });

  it("reads FLANNELD_* environment variables, and a flag beats its variable", () => {
    const env = {
      FLANNELD_ETCD_ENDPOINTS: "http://198.18.0.10:2379",
      FLANNELD_IP_MASQ: "true",
      FLANNELD_IFACE: "eth0,eth1",
      FLANNELD_SUBNET_FILE: "/tmp/x.env",
      FLANNELD_HEALTHZ_PORT: "8080",
    };
    const o = parseOptions(["--healthz-port=9000"], env);
    assert.deepEqual(o.etcdEndpoints, ["http://198.18.0.10:2379"]);
    assert.equal(o.ipMasq, true);
    assert.deepEqual(o.iface, ["eth0", "eth1"]);
    assert.equal(o.subnetFile, "/tmp/x.env");
    assert.equal(o.healthzPort, 9000);
  });

  it("turns the peer check off with --no-peer-check", () => {
    assert.equal(parseOptions(["--no-peer-check"], {}).peerCheck, false);
    assert.equal(parseOptions(["-peer-check=false"], {}).peerCheck, false);
  });

  it("polls with the adaptive window by default, and --no-adaptive-busy-poll or its variable turns it off", () => {
    assert.equal(parseOptions([], {}).adaptiveBusyPoll, true);
    assert.equal(parseOptions(["--no-adaptive-busy-poll"], {}).adaptiveBusyPoll, false);
    assert.equal(parseOptions(["--adaptive-busy-poll=false"], {}).adaptiveBusyPoll, false);
    assert.equal(parseOptions([], { FLANNELD_ADAPTIVE_BUSY_POLL: "false" }).adaptiveBusyPoll, false);
  });

  it("takes a fixed busy-poll window in microseconds, none by default", () => {
    assert.equal(parseOptions([], {}).busyPollUs, 0);
    assert.equal(parseOptions(["--busy-poll-us=50"], {}).busyPollUs, 50);
    assert.equal(parseOptions([], { FLANNELD_BUSY_POLL_US: "20" }).busyPollUs, 20);
  });

  it("releases start-up's file pages by default, and not with --no-release-file-pages", () => {
    assert.equal(parseOptions([], {}).releaseFilePages, true);
    assert.equal(parseOptions(["--no-release-file-pages"], {}).releaseFilePages, false);
  });

  it("waits on the event loop's epoll set by default, and not with --no-loop-wait", () => {
    assert.equal(parseOptions([], {}).loopWait, true);
    assert.equal(parseOptions(["--no-loop-wait"], {}).loopWait, false);
  });

  it("polls through epoll by default, and through the io_uring ring with --busy-poll-ring", () => {
    assert.equal(parseOptions([], {}).busyPollRing, false);
    assert.equal(parseOptions(["--busy-poll-ring"], {}).busyPollRing, true);
  });

  it("takes -v alone or with a level", () => {
    assert.equal(parseOptions(["-v"], {}).verbosity, 1);
    assert.equal(parseOptions(["-v=10"], {}).verbosity, 10);
  });

  it("exits 2 with one sentence for a numeric flag out of range", async () => {
    await assert.rejects(run(WEFTD, ["--iptables-resync", "0"]), (err: { code: number; stderr: string }) => {
      assert.equal(err.code, 2);
      assert.equal(err.stderr, "weftd: flag --iptables-resync: 0 is out of range; give 1 to 86400 seconds\n");
      return true;
    });
  });

  const refused: [string[], Record<string, string>, string][] = [
    [["--etcd-endpoint=http://x:1"], {}, "unknown flag --etcd-endpoint"],
    [["-bogus"], {}, "unknown flag -bogus"],
    [["--ip-masq=maybe"], {}, 'flag ip-masq: "maybe" is not a boolean (use true or false)'],
    [["--healthz-port=abc"], {}, 'flag healthz-port: "abc" is not an integer'],
    [
      ["--healthz-port=70000"],
      {},
      "flag --healthz-port: 70000 is out of range; give 0 to 65535 (0 turns the server off)",
    ],
    [["--subnet-file"], {}, "flag --subnet-file needs a value"],
    [["--busy-poll-us=-5"], {}, "flag --busy-poll-us: -5 is out of range; give 0 to 2000 microseconds"],
    [["--busy-poll-us=2001"], {}, "flag --busy-poll-us: 2001 is out of range; give 0 to 2000 microseconds"],
    [["--iptables-resync=0"], {}, "flag --iptables-resync: 0 is out of range; give 1 to 86400 seconds"],
    [["--iptables-resync=2147484"], {}, "flag --iptables-resync: 2147484 is out of range; give 1 to 86400 seconds"],
    [[], { FLANNELD_IPTABLES_RESYNC: "0" }, "flag --iptables-resync: 0 is out of range; give 1 to 86400 seconds"],
    [
      ["--port=65536"],
      {},
      "flag --port: 65536 is out of range; give 0 to 65535 (0 takes Backend.Port from the network config)",
    ],
    [
      ["--port=-1"],
      {},
      "flag --port: -1 is out of range; give 0 to 65535 (0 takes Backend.Port from the network config)",
    ],
    [
      ["--subnet-lease-renew-margin=1440"],
      {},
      "flag --subnet-lease-renew-margin: 1440 is out of range; give 1 to 1439 minutes, below the 24 h lease",
    ],
    [
      ["--subnet-lease-renew-margin=0"],
      {},
      "flag --subnet-lease-renew-margin: 0 is out of range; give 1 to 1439 minutes, below the 24 h lease",
    ],
    [["--iface-regex=("], {}, 'flag --iface-regex: "(" is not a valid regular expression'],
    [
      ["--etcd-endpoints=127.0.0.1:2379"],
      {},
      'flag --etcd-endpoints: "127.0.0.1:2379" is not an http(s)://host:port URL',
    ],
    [
      [],
      { FLANNELD_IP_MASQ: "yes" },
      'environment variable FLANNELD_IP_MASQ for ip-masq: "yes" is not a boolean (use true or false)',
    ],
    [["stray"], {}, 'unexpected argument "stray" (weftd takes only flags)'],
  ];
  for (const [argv, env, message] of refused) {
    it(`refuses ${JSON.stringify(argv)} ${Object.keys(env).join(" ")} with one sentence`, () => {
      assert.throws(
        () => parseOptions(argv, env),
        (err: unknown) => err instanceof UsageError && err.message === message,
      );
    });
  }

  it("bin/weftd exits non-zero naming an unknown flag, and prints its version", async () => {
    await assert.rejects(run(WEFTD, ["--no-such-flag"]), (err: { code: number; stderr: string }) => {
      assert.equal(err.code, 2);
      assert.equal(err.stderr, "weftd: unknown flag --no-such-flag\n");
      return true;
    });
    const { stdout } = await run(WEFTD, ["-version"]);
    assert.match(stdout, /^weftd v\d+\.\d+\.\d+/);
  });

  it("bin/weftd names a missing interface and exits 1", async () => {
    await assert.rejects(
      run(WEFTD, ["--iface", "nosuchif0", "--registry-dir", "/tmp/weft-cli-test-unused"]),
      (err: { code: number; stderr: string }) => {
        assert.equal(err.code, 1);
        assert.match(err.stderr, /weftd: --iface nosuchif0: no such interface\n/);
        return true;
      },
    );
  });
});
