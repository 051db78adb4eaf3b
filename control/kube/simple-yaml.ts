// The YAML of a kubeconfig as kubectl, kubeadm and most tools write it, read
// without loading the `yaml` package (~50 ms of module loading in weftd's
// start-up, every start in kube mode): block mappings and sequences, plain,
// single-quoted and escape-free double-quoted scalars, comments, and the empty
// `{}` and `[]`. Anything else (flow collections, anchors, tags, block
// scalars, escapes, a plain scalar that YAML would read as a number, tabs,
// several documents) returns null, and the caller parses the text with
// `yaml`: this reader either gives what `yaml` gives or nothing.

interface Line {
  readonly indent: number;
  readonly text: string;
}

/** Thrown inside the reader for anything outside its subset; never leaves it. */
class NotSimple extends Error {}

const KEY = /^[A-Za-z0-9_][A-Za-z0-9_./-]*$/;

/** YAML 1.2 core schema's numbers (the `yaml` package's own tests of a plain scalar). */
const NUMBER = [
  /^[-+]?[0-9]+$/,
  /^0o[0-7]+$/,
  /^0x[0-9a-fA-F]+$/,
  /^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?$/,
  /^[-+]?\.(?:inf|Inf|INF)$/,
  /^\.(?:nan|NaN|NAN)$/,
];

/** The document as `yaml`'s parse() would give it, or null when the text is outside the subset read here. */
export function parseSimpleYaml(text: string): unknown {
  const lines: Line[] = [];
  for (const raw of text.split("\n")) {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    const trimmed = line.trimStart();
    if (trimmed === "" || trimmed.startsWith("#")) continue;
    const indent = line.length - trimmed.length;
    if (line.slice(0, indent).includes("\t") || line.includes("\t")) return null;
    if (indent === 0 && (trimmed.startsWith("---") || trimmed.startsWith("..."))) return null;
    lines.push({ indent, text: trimmed.trimEnd() });
  }
  if (lines.length === 0) return null;
  try {
    const reader = new Reader(lines);
    const first = lines[0] as Line;
    const value = reader.block(first.indent);
    if (reader.at < lines.length) return null;
    return value;
  } catch (err) {
    if (err instanceof NotSimple) return null;
    throw err;
  }
}

class Reader {
  at = 0;
  constructor(private readonly lines: Line[]) {}

  /** The mapping or sequence whose first line is lines[at], at `indent`. */
  block(indent: number): unknown {
    const line = this.lines[this.at] as Line;
    if (line.indent !== indent) throw new NotSimple();
    return isItem(line.text) ? this.sequence(indent) : this.mapping(indent);
  }

  private mapping(indent: number): Record<string, unknown> {
    const out: Record<string, unknown> = {};
    for (;;) {
      const line = this.lines[this.at];
      if (line === undefined || line.indent < indent) return out;
      if (line.indent > indent || isItem(line.text)) throw new NotSimple();
      const colon = line.text.indexOf(":");
      if (colon <= 0) throw new NotSimple();
      const key = line.text.slice(0, colon);
      const rest = line.text.slice(colon + 1);
      if (!KEY.test(key) || Object.hasOwn(out, key) || (rest !== "" && !rest.startsWith(" "))) throw new NotSimple();
      this.at++;
      out[key] = rest.trim() === "" ? this.nested(indent, true) : scalar(rest.trim());
    }
  }

  private sequence(indent: number): unknown[] {
    const out: unknown[] = [];
    for (;;) {
      const line = this.lines[this.at];
      if (line === undefined || line.indent < indent) return out;
      if (line.indent > indent) throw new NotSimple();
      // A key after a sequence written at its parent key's indent ends the sequence.
      if (!isItem(line.text)) return out;
      const content = line.text.slice(1).trimStart();
      if (content === "") {
        this.at++;
        out.push(this.nested(indent, false));
        continue;
      }
      // "- key: value" opens a mapping whose entries sit at the column of "key".
      const column = indent + line.text.length - content.length;
      if (/^[^'"]*:( |$)/.test(content) && !content.startsWith("-")) {
        this.lines[this.at] = { indent: column, text: content };
        out.push(this.mapping(column));
      } else {
        this.at++;
        out.push(scalar(content));
      }
    }
  }

  /** The value of a key or item with nothing after it: a deeper block, a sequence at the key's indent, or null. */
  private nested(indent: number, ofKey: boolean): unknown {
    const next = this.lines[this.at];
    if (next === undefined || next.indent < indent) return null;
    if (next.indent > indent) return this.block(next.indent);
    if (ofKey && isItem(next.text)) return this.sequence(indent);
    return null;
  }
}

function isItem(text: string): boolean {
  return text === "-" || text.startsWith("- ");
}

/** A scalar on one line, as YAML 1.2's core schema reads it; NotSimple for what is not certain. */
function scalar(text: string): unknown {
  if (text === "{}") return {};
  if (text === "[]") return [];
  const c = text[0] as string;
  if (c === "'") {
    if (!text.endsWith("'") || text.length < 2) throw new NotSimple();
    const inner = text.slice(1, -1);
    if (inner.replaceAll("''", "").includes("'")) throw new NotSimple();
    return inner.replaceAll("''", "'");
  }
  if (c === '"') {
    if (!text.endsWith('"') || text.length < 2) throw new NotSimple();
    const inner = text.slice(1, -1);
    if (inner.includes('"') || inner.includes("\\")) throw new NotSimple();
    return inner;
  }
  // Indicators that start something else (flow, anchor, alias, tag, block scalar, directive...).
  if ("[]{}&*!|>%@`,?:-#".includes(c) && !(c === "-" && /^-[A-Za-z]/.test(text))) throw new NotSimple();
  // A comment after the value, or a second mapping on the line.
  if (text.includes(" #") || text.includes(": ") || text.endsWith(":")) throw new NotSimple();
  if (/^(true|True|TRUE)$/.test(text)) return true;
  if (/^(false|False|FALSE)$/.test(text)) return false;
  if (/^(null|Null|NULL|~)$/.test(text)) return null;
  // What the core schema reads as a number (int, octal, hex, float, .inf, .nan): left to `yaml`.
  if (NUMBER.some((re) => re.test(text))) throw new NotSimple();
  return text;
}
