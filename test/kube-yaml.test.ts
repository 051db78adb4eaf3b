// parseSimpleYaml (control/kube/simple-yaml.ts): the kubeconfigs tools write
// are read without the `yaml` package, and give exactly what `yaml` gives;
// anything outside that subset is left to `yaml` (null), never misread.

import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { parse } from "yaml";
import { parseSimpleYaml } from "../control/kube/simple-yaml.js";
import { kubeconfig } from "../lab/kube/pki.js";

const PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

/** Read here: each must give what yaml.parse gives. */
const SIMPLE = [
  kubeconfig({ server: "https://198.18.0.1:6443", ca: PEM, user: { token: "3fa2b9c0d1e2f3a4b5c6d7e8f9a0b1c2" } }),
  kubeconfig({ server: "https://[fd00::1]:6443", ca: PEM, user: { cert: PEM, key: PEM }, name: "a@b" }),
  // kubectl config view --raw, as it writes it.
  `apiVersion: v1
clusters:
- cluster:
    certificate-authority-data: LS0tLS1CRUdJTg==
    server: https://kube.example.com:6443
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    namespace: kube-system
    user: kubernetes-admin
  name: kubernetes-admin@kubernetes
current-context: kubernetes-admin@kubernetes
kind: Config
preferences: {}
users:
- name: kubernetes-admin
  user:
    client-certificate: /etc/kubernetes/pki/admin.crt
    client-key: /etc/kubernetes/pki/admin.key
`,
  // Comments, CRLF, quoting, indented sequences, booleans, nulls, and odd plain scalars.
  "# written by hand\r\napiVersion: v1\r\nclusters:\r\n  - name: 'it''s'\r\n    cluster:\r\n      server: \"http://127.0.0.1:8080\"\r\n      insecure-skip-tls-verify: true\r\n",
  `current-context: c
contexts:
  -
    name: c
    context:
      cluster: k
      user: u
users:
- name: u
  user:
    tokenFile: ./token
    exec:
extensions: []
`,
  "a: -dash\nb: 1_000\nc: 3fa2\nd: True\ne: ~\nf: NULL\ng:\nh: x:y\ni: 'a#b'\nj: FALSE\n",
];

/** Outside the subset: left to yaml (null). */
const NOT_SIMPLE = [
  "a: {b: 1}\n",
  "a: [1, 2]\n",
  "a: &x 1\nb: *x\n",
  "a: !!str 1\n",
  "a: |\n  text\n",
  "a: >\n  text\n",
  'a: "esc\\n"\n',
  "a: 12\n",
  "a: 0x1F\n",
  "a: 1.5e3\n",
  "a: .inf\n",
  "a: value # comment\n",
  "a:\tb\n",
  "---\na: 1\n",
  "a: 1\na: 2\n",
  "a: b\n  c: d\n",
  "a: multi\n  line\n",
  "? complex\n: key\n",
];

describe("parseSimpleYaml", () => {
  it("reads the kubeconfigs tools write, giving exactly what yaml.parse gives", () => {
    for (const text of SIMPLE) assert.deepEqual(parseSimpleYaml(text), parse(text), text);
  });
  it("leaves to yaml what is outside its subset (flow, anchors, tags, block scalars, escapes, numbers, comments after values)", () => {
    for (const text of NOT_SIMPLE) assert.equal(parseSimpleYaml(text), null, text);
  });
});
