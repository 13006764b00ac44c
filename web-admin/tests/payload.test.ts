import { test } from "node:test";
import assert from "node:assert/strict";
import { asHex, asJson, asText, defaultView, payloadBytes, preview, prettyJson, renderPayload } from "../src/lib/payload.js";

const utf8 = (s: string) => new TextEncoder().encode(s);
const b64 = (bytes: number[]) => Buffer.from(bytes).toString("base64");

test("payload bytes from text or base64", () => {
  assert.deepEqual(payloadBytes("hé", null), utf8("hé"));
  assert.deepEqual(payloadBytes(null, b64([0, 255, 1])), new Uint8Array([0, 255, 1]));
  assert.deepEqual(payloadBytes(undefined, undefined), new Uint8Array(0));
  // The API sends text when it is UTF-8 and always base64 for retained messages: same bytes.
  assert.deepEqual(payloadBytes("ok", b64([0x6f, 0x6b])), utf8("ok"));
});

test("text only when valid UTF-8", () => {
  assert.equal(asText(utf8("grüße ✓")), "grüße ✓");
  assert.equal(asText(new Uint8Array([0xff, 0xfe, 0x00])), null);
  assert.equal(asText(new Uint8Array([0xe2, 0x9c])), null); // cut sequence
});

test("JSON pretty-printed", () => {
  assert.equal(asJson(utf8('{"a":1,"b":[1,2,{"c":null}],"d":{}, "e": []}')), '{\n  "a": 1,\n  "b": [\n    1,\n    2,\n    {\n      "c": null\n    }\n  ],\n  "d": {},\n  "e": []\n}');
  assert.equal(asJson(utf8("not json")), null);
  assert.equal(asJson(utf8("")), null);
  assert.equal(asJson(utf8("   ")), null);
  assert.equal(asJson(new Uint8Array([0xff])), null);
  assert.equal(asJson(utf8("42")), "42");
});

test("JSON keeps numbers, strings and duplicate keys exactly as sent", () => {
  const raw = '{"id":12345678901234567890,"t":1.50,"e":1E+2,"s":"a,b:{c}[d] \\"q\\" \\\\","s":"dup"}';
  const pretty = prettyJson(raw)!;
  assert.equal(
    pretty,
    '{\n  "id": 12345678901234567890,\n  "t": 1.50,\n  "e": 1E+2,\n  "s": "a,b:{c}[d] \\"q\\" \\\\",\n  "s": "dup"\n}',
  );
  // Re-indenting pretty output gives it back: stable.
  assert.equal(prettyJson(pretty), pretty);
  // And it parses to the same value as the original.
  assert.deepEqual(JSON.parse(pretty), JSON.parse(raw));
});

test("pretty JSON re-indents already indented and CRLF input", () => {
  assert.equal(prettyJson('{\r\n\t"a" :\t[ ]\r\n}\r\n'), '{\n  "a": []\n}');
  assert.equal(prettyJson("[1 , 2]"), "[\n  1,\n  2\n]");
  assert.equal(prettyJson('"x"'), '"x"');
  assert.equal(prettyJson("{"), null);
});

test("hex dump: offset, hex, ASCII, and a cut", () => {
  const bytes = new Uint8Array(20).map((_, i) => i + 60);
  assert.equal(
    asHex(bytes),
    "00000000  3c 3d 3e 3f 40 41 42 43 44 45 46 47 48 49 4a 4b  <=>?@ABCDEFGHIJK\n" + "00000010  4c 4d 4e 4f                                      LMNO",
  );
  assert.equal(asHex(new Uint8Array([0, 10, 127, 200])), "00000000  00 0a 7f c8" + " ".repeat(36) + "  ....");
  assert.equal(asHex(new Uint8Array(0)), "");
  const big = asHex(new Uint8Array(40), 16);
  assert.equal(big.split("\n").length, 2);
  assert.match(big, /… 24 more bytes$/);
});

test("default view: JSON documents, then text, then hex", () => {
  assert.equal(defaultView(utf8('{"temp": 21.5}')), "json");
  assert.equal(defaultView(utf8("  [1,2]")), "json");
  assert.equal(defaultView(utf8("21.5")), "text");
  assert.equal(defaultView(utf8('"quoted"')), "text");
  assert.equal(defaultView(utf8("{not json")), "text");
  assert.equal(defaultView(utf8("")), "text");
  assert.equal(defaultView(new Uint8Array([0x80, 0x81])), "hex");
});

test("render falls back where the view does not apply", () => {
  const bin = new Uint8Array([0xff, 0x00]);
  assert.equal(renderPayload(bin, "text"), asHex(bin));
  assert.equal(renderPayload(bin, "json"), asHex(bin));
  assert.equal(renderPayload(utf8("plain"), "json"), "plain");
  assert.equal(renderPayload(utf8('{"a":1}'), "text"), '{"a":1}');
  assert.equal(renderPayload(utf8("ab"), "hex"), asHex(utf8("ab")));
});

test("preview: one line of text, or a hex prefix", () => {
  assert.equal(preview(utf8("  line one\n\tline two  ")), "line one line two");
  assert.equal(preview(utf8("x".repeat(100)), 10), "xxxxxxxxx…");
  assert.equal(preview(utf8("")), "");
  assert.equal(preview(new Uint8Array([0xde, 0xad, 0xbe, 0xef]), 80), "0x de ad be ef");
  const long = preview(new Uint8Array(100).fill(0xff), 30);
  assert.equal(long, "0x " + Array(10).fill("ff").join(" ") + " …");
  // A long text payload is only scanned at its start.
  const huge = preview(utf8("word ".repeat(1_000_000)), 20);
  assert.equal(huge, "word word word word…");
});
