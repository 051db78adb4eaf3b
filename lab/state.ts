// The lab's state file: a write-ahead record of everything `npm run lab` creates, so
// `npm run lab -- down` can remove a lab whose creator crashed at any point. Every
// name is recorded before the thing is created (a crash leaves at worst a name with
// nothing behind it) and every PID right after its process is spawned (the window
// before that is covered by down's scan of the lab's namespaces). Writes are atomic
// (temp file + rename), so a reader never sees half a file.

import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export const DEFAULT_PREFIX = "weftlab";

export type ProcessRole = "weftd" | "etcd" | "transfer" | "apiserver";

export interface LabProcess {
  pid: number;
  role: ProcessRole;
  /** The namespace it runs in. */
  ns: string;
}

export interface LabStateHost {
  ns: string;
  underlayIp: string;
  subnetFile: string;
  /** Bound over /var/lib for every CNI plugin run on this host (host-local's leases, flannel's dataDir). */
  varLib: string;
  /** libcni's result cache for this host's pods. */
  cniCache: string;
  /** The conflist CNI ADD is called with on this host, so DEL gets the same. */
  conflist: object;
}

export interface LabStatePod {
  ns: string;
  hostNs: string;
  containerId: string;
  /** Filled in once CNI ADD has returned. */
  ip: string | null;
}

export interface LabState {
  version: 1;
  prefix: string;
  /** Where state.json lives; the lab's files are under `<stateDir>/lab`. */
  stateDir: string;
  labDir: string;
  /** The `npm run lab` process that wrote this; a dead one with phase "starting" crashed. */
  labPid: number;
  phase: "starting" | "up";
  registry: "file" | "etcd" | "kube";
  etcdEndpoint: string | null;
  cniPath: string[];
  namespaces: string[];
  processes: LabProcess[];
  hosts: LabStateHost[];
  pods: LabStatePod[];
}

export function defaultStateDir(prefix: string): string {
  return prefix === DEFAULT_PREFIX ? "/run/weft-lab" : `/run/weft-lab-${prefix}`;
}

export function stateFile(stateDir: string): string {
  return join(stateDir, "state.json");
}

export function labDir(stateDir: string): string {
  return join(stateDir, "lab");
}

/** Reads the state file; null when there is none, an Error when it cannot be used. */
export function readState(stateDir: string): LabState | null | Error {
  let text: string;
  try {
    text = readFileSync(stateFile(stateDir), "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") return null;
    return err as Error;
  }
  try {
    const s = JSON.parse(text) as LabState;
    if (s.version !== 1 || !Array.isArray(s.namespaces) || !Array.isArray(s.processes) || !Array.isArray(s.pods)) {
      return new Error(`${stateFile(stateDir)} is not a weft lab state file`);
    }
    return s;
  } catch (err) {
    return new Error(`${stateFile(stateDir)} is not JSON: ${(err as Error).message}`);
  }
}

/** The state of a lab being built, written through on every change. */
export class StateJournal {
  private closed = false;

  constructor(readonly state: LabState) {}

  /** Creates the state file; fails when one exists, so two `up`s cannot both proceed. */
  static create(state: LabState): StateJournal {
    mkdirSync(state.stateDir, { recursive: true });
    writeFileSync(stateFile(state.stateDir), JSON.stringify(state, null, 1), { flag: "wx" });
    return new StateJournal(state);
  }

  /**
   * Applies a change and writes the file. After close() (the lab is being torn
   * down) it throws, so whatever was about to be created is not.
   */
  update(change: (s: LabState) => void): void {
    if (this.closed) throw new Error("the lab is being removed");
    change(this.state);
    const path = stateFile(this.state.stateDir);
    const tmp = `${path}.${process.pid}.tmp`;
    writeFileSync(tmp, JSON.stringify(this.state, null, 1));
    renameSync(tmp, path);
  }

  close(): void {
    this.closed = true;
  }

  namespace(name: string): void {
    if (!this.state.namespaces.includes(name)) this.update((s) => s.namespaces.push(name));
  }

  /** Records a process just spawned; one spawned after close() is killed at once, as teardown may have missed it. */
  process(pid: number | undefined, role: ProcessRole, ns: string): void {
    if (pid === undefined) return;
    if (this.closed) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {
        // Already gone.
      }
    }
    this.update((s) => s.processes.push({ pid, role, ns }));
  }

  forgetProcess(pid: number | undefined): void {
    if (this.closed) return;
    this.update((s) => {
      s.processes = s.processes.filter((p) => p.pid !== pid);
    });
  }
}
