import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { ConfigError, type NetworkConfig, parseNetworkConfig } from "../control/config.js";
import { formatIpv4, formatPrefix } from "../net/addr.js";

/** The config in dotted form, so expectations read like the JSON they come from. */
function readable(config: NetworkConfig) {
  return {
    network: formatPrefix(config.network),
    subnetLen: config.subnetLen,
    subnetMin: formatIpv4(config.subnetMin),
    subnetMax: formatIpv4(config.subnetMax),
    backend: config.backend,
  };
}

const udp8285 = { type: "udp", port: 8285 } as const;

describe("parseNetworkConfig accepts flannel configs and fills flannel's defaults", () => {
  const good: { name: string; json: string; want: ReturnType<typeof readable> }[] = [
    {
      name: "a /16 gets /24 subnets, skipping the zeroth, up to the last",
      json: '{"Network":"10.244.0.0/16"}',
      want: {
        network: "10.244.0.0/16",
        subnetLen: 24,
        subnetMin: "10.244.1.0",
        subnetMax: "10.244.255.0",
        backend: udp8285,
      },
    },
    {
      name: "a /22 still gets /24 subnets",
      json: '{"Network":"10.1.4.0/22"}',
      want: { network: "10.1.4.0/22", subnetLen: 24, subnetMin: "10.1.5.0", subnetMax: "10.1.7.0", backend: udp8285 },
    },
    {
      name: "a /23 gets prefix + 2 = /25",
      json: '{"Network":"10.1.4.0/23"}',
      want: {
        network: "10.1.4.0/23",
        subnetLen: 25,
        subnetMin: "10.1.4.128",
        subnetMax: "10.1.5.128",
        backend: udp8285,
      },
    },
    {
      name: "a /28 gets /30",
      json: '{"Network":"10.9.9.16/28"}',
      want: {
        network: "10.9.9.16/28",
        subnetLen: 30,
        subnetMin: "10.9.9.20",
        subnetMax: "10.9.9.28",
        backend: udp8285,
      },
    },
    {
      name: "keys match case-insensitively, as Go's encoding/json does",
      json: '{"network":"10.244.0.0/16","subnetlen":26,"SUBNETMIN":"10.244.0.64","subnetMAX":"10.244.3.192","backend":{"type":"udp","port":9000}}',
      want: {
        network: "10.244.0.0/16",
        subnetLen: 26,
        subnetMin: "10.244.0.64",
        subnetMax: "10.244.3.192",
        backend: { type: "udp" as const, port: 9000 },
      },
    },
    {
      name: "a Backend without Port uses 8285",
      json: '{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}',
      want: {
        network: "10.244.0.0/16",
        subnetLen: 24,
        subnetMin: "10.244.1.0",
        subnetMax: "10.244.255.0",
        backend: udp8285,
      },
    },
    {
      name: "Port overrides 8285 and the backend name is case-insensitive",
      json: '{"Network":"10.244.0.0/16","Backend":{"Type":"UDP","Port":18285}}',
      want: {
        network: "10.244.0.0/16",
        subnetLen: 24,
        subnetMin: "10.244.1.0",
        subnetMax: "10.244.255.0",
        backend: { type: "udp" as const, port: 18285 },
      },
    },
    {
      name: "host bits in Network are cleared, as net.ParseCIDR does",
      json: '{"Network":"10.244.7.7/16"}',
      want: {
        network: "10.244.0.0/16",
        subnetLen: 24,
        subnetMin: "10.244.1.0",
        subnetMax: "10.244.255.0",
        backend: udp8285,
      },
    },
    {
      name: "SubnetLen 0 and SubnetMin 0.0.0.0 mean unset, as in flannel",
      json: '{"Network":"10.244.0.0/16","SubnetLen":0,"SubnetMin":"0.0.0.0"}',
      want: {
        network: "10.244.0.0/16",
        subnetLen: 24,
        subnetMin: "10.244.1.0",
        subnetMax: "10.244.255.0",
        backend: udp8285,
      },
    },
    {
      name: "SubnetMin may equal SubnetMax, and the zeroth subnet may be chosen explicitly",
      json: '{"Network":"10.244.0.0/16","SubnetMin":"10.244.0.0","SubnetMax":"10.244.0.0"}',
      want: {
        network: "10.244.0.0/16",
        subnetLen: 24,
        subnetMin: "10.244.0.0",
        subnetMax: "10.244.0.0",
        backend: udp8285,
      },
    },
    {
      name: "EnableIPv6 false, a null IPv6Network and unknown keys are ignored",
      json: '{"Network":"10.244.0.0/16","EnableIPv6":false,"IPv6Network":null,"EnableIPv4":true,"Comment":"lab"}',
      want: {
        network: "10.244.0.0/16",
        subnetLen: 24,
        subnetMin: "10.244.1.0",
        subnetMax: "10.244.255.0",
        backend: udp8285,
      },
    },
  ];
  for (const { name, json, want } of good) {
    test(name, () => {
      assert.deepEqual(readable(parseNetworkConfig(json)), want);
    });
  }
});

describe("parseNetworkConfig rejects with one sentence naming the field and value", () => {
  const bad: { name: string; json: string; error: string }[] = [
    { name: "missing Network", json: '{"SubnetLen":24}', error: "network config: Network is missing" },
    {
      name: "Network without a prefix length",
      json: '{"Network":"10.244.0.0"}',
      error: 'network config: Network "10.244.0.0" is not an IPv4 CIDR',
    },
    {
      name: "Network with a bad octet",
      json: '{"Network":"10.300.0.0/16"}',
      error: 'network config: Network "10.300.0.0/16" is not an IPv4 CIDR',
    },
    {
      name: "Network that is not a string",
      json: '{"Network":16}',
      error: "network config: Network 16 is not an IPv4 CIDR",
    },
    {
      name: "Network prefix longer than /28",
      json: '{"Network":"10.0.0.0/29"}',
      error: "network config: Network 10.0.0.0/29 is too small; the smallest usable Network is a /28",
    },
    {
      name: "Network 0.0.0.0/0 (everything: the FORWARD chain would accept all)",
      json: '{"Network":"0.0.0.0/0"}',
      error:
        'network config: Network 0.0.0.0/0 overlaps "this" network 0.0.0.0/8; use a private range such as 10.244.0.0/16',
    },
    {
      name: "Network in loopback",
      json: '{"Network":"127.0.0.0/16"}',
      error:
        "network config: Network 127.0.0.0/16 overlaps loopback 127.0.0.0/8; use a private range such as 10.244.0.0/16",
    },
    {
      name: "Network covering loopback",
      json: '{"Network":"64.0.0.0/2"}',
      error:
        "network config: Network 64.0.0.0/2 overlaps loopback 127.0.0.0/8; use a private range such as 10.244.0.0/16",
    },
    {
      name: "Network in multicast",
      json: '{"Network":"239.1.0.0/16"}',
      error:
        "network config: Network 239.1.0.0/16 overlaps multicast 224.0.0.0/4; use a private range such as 10.244.0.0/16",
    },
    {
      name: "Network in link-local",
      json: '{"Network":"169.254.0.0/16"}',
      error:
        "network config: Network 169.254.0.0/16 overlaps link-local 169.254.0.0/16; use a private range such as 10.244.0.0/16",
    },
    {
      name: "Network in 240/4",
      json: '{"Network":"250.0.0.0/16"}',
      error:
        "network config: Network 250.0.0.0/16 overlaps reserved 240.0.0.0/4 (and broadcast); use a private range such as 10.244.0.0/16",
    },
    {
      name: "SubnetLen above 30",
      json: '{"Network":"10.0.0.0/16","SubnetLen":31}',
      error: "network config: SubnetLen 31 is larger than 30",
    },
    {
      name: "SubnetLen shorter than the Network prefix plus 2",
      json: '{"Network":"10.0.0.0/16","SubnetLen":17}',
      error: "network config: SubnetLen 17 is smaller than 18, the Network prefix length plus 2",
    },
    {
      name: "SubnetLen as a string",
      json: '{"Network":"10.0.0.0/16","SubnetLen":"24"}',
      error: 'network config: SubnetLen "24" is not an integer',
    },
    {
      name: "SubnetMin outside Network",
      json: '{"Network":"10.244.0.0/16","SubnetMin":"10.245.0.0"}',
      error: "network config: SubnetMin 10.245.0.0 is outside Network 10.244.0.0/16",
    },
    {
      name: "SubnetMin not aligned to SubnetLen",
      json: '{"Network":"10.244.0.0/16","SubnetMin":"10.244.1.128"}',
      error: "network config: SubnetMin 10.244.1.128 is not aligned to SubnetLen 24",
    },
    {
      name: "SubnetMin that is not an address",
      json: '{"Network":"10.244.0.0/16","SubnetMin":"10.244.1"}',
      error: 'network config: SubnetMin "10.244.1" is not an IPv4 address',
    },
    {
      name: "SubnetMax outside Network",
      json: '{"Network":"10.244.0.0/16","SubnetMax":"10.0.0.0"}',
      error: "network config: SubnetMax 10.0.0.0 is outside Network 10.244.0.0/16",
    },
    {
      name: "SubnetMax not aligned to SubnetLen",
      json: '{"Network":"10.244.0.0/16","SubnetLen":26,"SubnetMax":"10.244.9.32"}',
      error: "network config: SubnetMax 10.244.9.32 is not aligned to SubnetLen 26",
    },
    {
      name: "SubnetMin above SubnetMax",
      json: '{"Network":"10.244.0.0/16","SubnetMin":"10.244.9.0","SubnetMax":"10.244.2.0"}',
      error: "network config: SubnetMin 10.244.9.0 is above SubnetMax 10.244.2.0",
    },
    {
      name: "the vxlan backend",
      json: '{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}',
      error: 'network config: Backend.Type "vxlan" is not supported; weft implements only the udp backend',
    },
    {
      name: "a Backend without Type (flannel rejects it too)",
      json: '{"Network":"10.244.0.0/16","Backend":{"Port":8285}}',
      error: "network config: Backend.Type is missing; weft implements only the udp backend",
    },
    {
      name: "a Backend that is not an object",
      json: '{"Network":"10.244.0.0/16","Backend":"udp"}',
      error: 'network config: Backend "udp" is not a JSON object',
    },
    {
      name: "Port 0",
      json: '{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":0}}',
      error: "network config: Backend.Port 0 is not a port number between 1 and 65535",
    },
    {
      name: "Port above 65535",
      json: '{"Network":"10.244.0.0/16","Backend":{"Type":"udp","Port":65536}}',
      error: "network config: Backend.Port 65536 is not a port number between 1 and 65535",
    },
    {
      name: "EnableIPv6",
      json: '{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}',
      error: "network config: EnableIPv6 true is not supported; the udp backend carries only IPv4",
    },
    {
      name: "an IPv6Network without EnableIPv6",
      json: '{"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56"}',
      error: 'network config: IPv6Network "fd00:10:244::/56" is not supported; the udp backend carries only IPv4',
    },
    {
      name: "an IPv6-only config",
      json: '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56"}',
      error: "network config: EnableIPv4 false is not supported; the udp backend carries only IPv4",
    },
    {
      name: "JSON that is not an object",
      json: '["10.244.0.0/16"]',
      error: 'network config is not a JSON object: ["10.244.0.0/16"]',
    },
  ];
  for (const { name, json, error } of bad) {
    test(name, () => {
      assert.throws(
        () => parseNetworkConfig(json),
        (err: unknown) => {
          assert.ok(err instanceof ConfigError, `expected a ConfigError, got ${String(err)}`);
          assert.equal(err.message, error);
          return true;
        },
      );
    });
  }

  test("invalid JSON, with the parser's own explanation", () => {
    const text = '{"Network": "10.244.0.0/16",}';
    let parserMessage = "";
    try {
      JSON.parse(text);
    } catch (err) {
      parserMessage = (err as Error).message;
    }
    assert.notEqual(parserMessage, "");
    assert.throws(
      () => parseNetworkConfig(text),
      (err: unknown) =>
        err instanceof ConfigError && err.message === `network config is not valid JSON: ${parserMessage}`,
    );
  });
});
