// The stand-in API server's objects: Nodes (cluster-scoped) and Pods
// (namespaced), one global resourceVersion counter as etcd's revision is for a
// real kube-apiserver, and the event history watches replay from. History
// older than `compactedRv` is gone: a watch that asks for it gets 410 Expired,
// as after etcd compaction.

import { randomUUID } from "node:crypto";
import { isObject } from "./patch.js";

export type JsonObject = { [key: string]: unknown };
export type Resource = "nodes" | "pods";
export type EventType = "ADDED" | "MODIFIED" | "DELETED";

export interface StoredEvent {
  readonly resource: Resource;
  readonly type: EventType;
  readonly object: JsonObject;
  readonly rv: number;
}

const KINDS: Record<Resource, string> = { nodes: "Node", pods: "Pod" };

export class Conflict extends Error {}

export class ObjectStore {
  private rv = 1;
  private compacted = 0;
  private readonly objects: Record<Resource, Map<string, JsonObject>> = { nodes: new Map(), pods: new Map() };
  private readonly history: StoredEvent[] = [];
  private readonly listeners = new Set<(event: StoredEvent) => void>();
  /** Each stored object's JSON (see serialised()). */
  private readonly texts = new WeakMap<JsonObject, string>();
  /** view()'s answer, until the next change of that resource. */
  private readonly sorted: Record<Resource, JsonObject[] | null> = { nodes: null, pods: null };

  get resourceVersion(): number {
    return this.rv;
  }

  /** Watches from a resourceVersion below this are answered with 410 Expired. */
  get compactedRv(): number {
    return this.compacted;
  }

  list(resource: Resource): JsonObject[] {
    return this.view(resource).map((o) => structuredClone(o));
  }

  /**
   * The stored objects themselves, ordered by key as etcd returns them: to be
   * serialised at once, never changed. A list page of a big cluster is served
   * from this without copying every object for every page.
   */
  view(resource: Resource): readonly JsonObject[] {
    const sorted = this.sorted[resource];
    if (sorted !== null) return sorted;
    const keys = [...this.objects[resource].keys()].sort();
    const objects = keys.map((k) => this.objects[resource].get(k) as JsonObject);
    this.sorted[resource] = objects;
    return objects;
  }

  /**
   * A stored object's JSON, made when it was written: stored objects are
   * replaced, never changed, and a real API server's watch cache likewise
   * keeps each object version serialised rather than encoding thousands of
   * Nodes again for every list page. Encoding at write time also keeps the
   * first list after a burst of writes from paying for all of them at once
   * (in the scale bench the stand-in shares weftd's cores, and its encoding
   * of 5,000 Nodes, ~35 MB, landed inside weftd's start-up).
   */
  serialised(object: JsonObject): string {
    let text = this.texts.get(object);
    if (text === undefined) {
      text = JSON.stringify(object);
      this.texts.set(object, text);
    }
    return text;
  }

  get(resource: Resource, key: string): JsonObject | undefined {
    const found = this.objects[resource].get(key);
    return found === undefined ? undefined : structuredClone(found);
  }

  create(resource: Resource, key: string, object: JsonObject): JsonObject {
    if (this.objects[resource].has(key)) throw new Conflict(`${resource} "${key}" already exists`);
    const meta = isObject(object.metadata) ? object.metadata : {};
    const stored: JsonObject = {
      ...object,
      kind: KINDS[resource],
      apiVersion: "v1",
      metadata: {
        ...meta,
        uid: randomUUID(),
        creationTimestamp: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
      },
    };
    return this.commit(resource, key, "ADDED", stored);
  }

  /** Replaces the object (after a patch or an update); a no-op change keeps its resourceVersion. */
  replace(resource: Resource, key: string, object: JsonObject): JsonObject {
    const old = this.objects[resource].get(key);
    if (old === undefined) throw new Error(`${resource} "${key}" does not exist`);
    const next = structuredClone(object);
    const meta = next.metadata as JsonObject;
    const oldMeta = old.metadata as JsonObject;
    // Identity fields are the server's, whatever a patch said.
    for (const k of ["name", "namespace", "uid", "creationTimestamp", "resourceVersion"]) {
      if (oldMeta[k] === undefined) delete meta[k];
      else meta[k] = oldMeta[k];
    }
    next.kind = old.kind;
    next.apiVersion = old.apiVersion;
    if (JSON.stringify(next) === this.serialised(old)) return structuredClone(old);
    return this.commit(resource, key, "MODIFIED", next);
  }

  delete(resource: Resource, key: string): JsonObject | undefined {
    const old = this.objects[resource].get(key);
    if (old === undefined) return undefined;
    this.objects[resource].delete(key);
    this.sorted[resource] = null;
    this.rv++;
    const object = structuredClone(old);
    (object.metadata as JsonObject).resourceVersion = String(this.rv);
    this.record({ resource, type: "DELETED", object, rv: this.rv });
    return structuredClone(object);
  }

  /** Events of `resource` after `rv`, oldest first. */
  since(resource: Resource, rv: number): StoredEvent[] {
    return this.history.filter((e) => e.resource === resource && e.rv > rv);
  }

  /** Forgets all history up to now, as etcd compaction does. */
  compact(): void {
    this.compacted = this.rv;
    this.history.length = 0;
  }

  subscribe(listener: (event: StoredEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private commit(resource: Resource, key: string, type: EventType, object: JsonObject): JsonObject {
    this.rv++;
    (object.metadata as JsonObject).resourceVersion = String(this.rv);
    this.objects[resource].set(key, object);
    this.serialised(object);
    this.sorted[resource] = null;
    this.record({ resource, type, object: structuredClone(object), rv: this.rv });
    return structuredClone(object);
  }

  private record(event: StoredEvent): void {
    this.history.push(event);
    for (const listener of this.listeners) listener(event);
  }
}
