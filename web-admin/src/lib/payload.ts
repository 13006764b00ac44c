// Payload formatting for the retained viewer and the live view: text, JSON pretty-printed, hex.

export type PayloadView = "text" | "json" | "hex";

/** Bytes of a payload given as text or base64 (the API sends one of them). */
export function payloadBytes(text: string | null | undefined, base64: string | null | undefined): Uint8Array {
  if (text !== null && text !== undefined) return new TextEncoder().encode(text);
  if (base64) {
    const bin = atob(base64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }
  return new Uint8Array(0);
}

/** The payload as UTF-8 text, or null when it is not valid UTF-8. */
export function asText(bytes: Uint8Array): string | null {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return null;
  }
}

/**
 * The payload pretty-printed as JSON, or null when it is not JSON. The text is re-indented, not
 * re-serialized: numbers and strings stay exactly as sent (`JSON.stringify(JSON.parse(x))`
 * would turn `12345678901234567890` into `12345678901234567000` and `1.0` into `1`, and drop
 * duplicate keys).
 */
export function asJson(bytes: Uint8Array): string | null {
  const text = asText(bytes);
  if (text === null) return null;
  return prettyJson(text);
}

/** `text` re-indented with two spaces when it is one valid JSON value, else null. */
export function prettyJson(text: string): string | null {
  if (text.trim() === "") return null;
  try {
    JSON.parse(text);
  } catch {
    return null;
  }
  let out = "";
  let depth = 0;
  const nl = () => "\n" + "  ".repeat(depth);
  for (let i = 0; i < text.length; i++) {
    const c = text[i]!;
    if (c === '"') {
      // A string, verbatim (escapes included).
      let j = i + 1;
      while (j < text.length && text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j;
    } else if (c === "{" || c === "[") {
      const close = c === "{" ? "}" : "]";
      let j = i + 1;
      while (j < text.length && isSpace(text[j]!)) j++;
      if (text[j] === close) {
        out += c + close;
        i = j;
      } else {
        depth++;
        out += c + nl();
      }
    } else if (c === "}" || c === "]") {
      depth--;
      out += nl() + c;
    } else if (c === ",") {
      out += "," + nl();
    } else if (c === ":") {
      out += ": ";
    } else if (!isSpace(c)) {
      out += c;
    }
  }
  return out;
}

function isSpace(c: string): boolean {
  return c === " " || c === "\n" || c === "\r" || c === "\t";
}

/** Whether the payload is a JSON object or array (what the viewer opens as JSON by default). */
export function isJsonDocument(bytes: Uint8Array): boolean {
  const text = asText(bytes);
  if (text === null) return false;
  const first = text.trimStart()[0];
  return (first === "{" || first === "[") && prettyJson(text) !== null;
}

/** A hex dump: 16 bytes a line, offset, hex, and printable ASCII. */
export function asHex(bytes: Uint8Array, maxBytes = 4096): string {
  const lines: string[] = [];
  const n = Math.min(bytes.length, maxBytes);
  for (let off = 0; off < n; off += 16) {
    const row = bytes.subarray(off, Math.min(off + 16, n));
    const hex = Array.from(row, (b) => b.toString(16).padStart(2, "0")).join(" ");
    const ascii = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : ".")).join("");
    lines.push(`${off.toString(16).padStart(8, "0")}  ${hex.padEnd(47)}  ${ascii}`);
  }
  if (bytes.length > n) lines.push(`… ${bytes.length - n} more bytes`);
  return lines.join("\n");
}

/**
 * The best default view: JSON for a JSON object or array, text if it is UTF-8, else hex. (A bare
 * number or string is valid JSON too, but it reads the same as text.)
 */
export function defaultView(bytes: Uint8Array): PayloadView {
  if (isJsonDocument(bytes)) return "json";
  if (asText(bytes) !== null) return "text";
  return "hex";
}

/** The payload rendered in `view`, falling back to hex where the view does not apply. */
export function renderPayload(bytes: Uint8Array, view: PayloadView): string {
  if (view === "json") return asJson(bytes) ?? asText(bytes) ?? asHex(bytes);
  if (view === "text") return asText(bytes) ?? asHex(bytes);
  return asHex(bytes);
}

/** A one-line preview for lists: text (trimmed) or a hex prefix. */
export function preview(bytes: Uint8Array, max = 80): string {
  // Only the start matters: a cut inside a UTF-8 sequence is decoded as U+FFFD at the end, but
  // whether the payload is text is decided on the whole of it.
  const text = asText(bytes);
  if (text !== null) {
    const one = text.slice(0, max * 4).replace(/\s+/g, " ").trim();
    return one.length > max ? one.slice(0, max - 1) + "…" : one;
  }
  const hex = Array.from(bytes.subarray(0, Math.floor(max / 3)), (b) => b.toString(16).padStart(2, "0")).join(" ");
  return `0x ${hex}${bytes.length > max / 3 ? " …" : ""}`;
}
