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

/** The payload pretty-printed as JSON, or null when it is not JSON. */
export function asJson(bytes: Uint8Array): string | null {
  const text = asText(bytes);
  if (text === null || text.trim() === "") return null;
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return null;
  }
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

/** The best default view: JSON if it parses, text if it is UTF-8, else hex. */
export function defaultView(bytes: Uint8Array): PayloadView {
  if (asJson(bytes) !== null) return "json";
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
  const text = asText(bytes);
  if (text !== null) {
    const one = text.replace(/\s+/g, " ").trim();
    return one.length > max ? one.slice(0, max - 1) + "…" : one;
  }
  const hex = Array.from(bytes.subarray(0, Math.floor(max / 3)), (b) => b.toString(16).padStart(2, "0")).join(" ");
  return `0x ${hex}${bytes.length > max / 3 ? " …" : ""}`;
}
