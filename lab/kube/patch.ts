// The two patch flavours the stand-in API server applies, with kube-apiserver's
// rules for the Node and Pod fields weft and kubectl touch:
//
//   JSON merge patch (RFC 7386)   maps merge, null deletes a key, lists are replaced whole
//   strategic merge patch         the same, except lists that carry a patchMergeKey in the
//                                 Kubernetes types merge element by element on that key
//                                 (Node status.conditions and status.addresses by "type"),
//                                 `$patch: delete` inside such an element removes it, and
//                                 `$setElementOrder/…` / `$retainKeys` directives are dropped
//
// kube-apiserver knows merge keys from the Go types; the stand-in knows the few it needs.

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

/** Dotted paths (from the object's root) of lists merged by key under strategic merge. */
const MERGE_KEYS: Record<string, string> = {
  "status.conditions": "type",
  "status.addresses": "type",
  "spec.containers": "name",
  "spec.initContainers": "name",
};

export function isObject(value: unknown): value is JsonObject {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** RFC 7386: returns the patched copy; `target` is not modified. */
export function mergePatch(target: Json | undefined, patch: Json): Json {
  if (!isObject(patch)) return structuredClone(patch);
  const out: JsonObject = isObject(target) ? structuredClone(target) : {};
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete out[key];
    else out[key] = mergePatch(out[key], value);
  }
  return out;
}

/** Strategic merge patch for the stand-in's kinds; returns the patched copy. */
export function strategicMergePatch(target: Json | undefined, patch: Json, path = ""): Json {
  if (!isObject(patch)) return structuredClone(patch);
  if (patch.$patch === "replace") {
    const { $patch: _, ...rest } = patch;
    return structuredClone(rest);
  }
  const out: JsonObject = isObject(target) ? structuredClone(target) : {};
  for (const [key, value] of Object.entries(patch)) {
    if (key.startsWith("$setElementOrder/") || key === "$retainKeys" || key === "$patch") continue;
    const child = path === "" ? key : `${path}.${key}`;
    if (value === null) delete out[key];
    else if (Array.isArray(value) && MERGE_KEYS[child] !== undefined)
      out[key] = mergeList(out[key], value, MERGE_KEYS[child] as string, child);
    else out[key] = strategicMergePatch(out[key], value, child);
  }
  return out;
}

function mergeList(target: Json | undefined, patch: Json[], mergeKey: string, path: string): Json[] {
  const out: Json[] = Array.isArray(target) ? structuredClone(target) : [];
  for (const element of patch) {
    if (!isObject(element) || element[mergeKey] === undefined) {
      out.push(structuredClone(element));
      continue;
    }
    const at = out.findIndex((e) => isObject(e) && e[mergeKey] === element[mergeKey]);
    if (element.$patch === "delete") {
      if (at >= 0) out.splice(at, 1);
    } else if (at >= 0) out[at] = strategicMergePatch(out[at], element, path);
    else out.push(strategicMergePatch(undefined, element, path));
  }
  return out;
}
