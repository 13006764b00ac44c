import { test } from "node:test";
import assert from "node:assert/strict";
import { ApiError, errorMessage, problemFromBody, problemFromResponse } from "../src/lib/problem.js";

test("a problem document becomes an ApiError", () => {
  const e = problemFromBody(
    404,
    "Not Found",
    JSON.stringify({ type: "https://tern.dev/problems/not-found", title: "Not found", status: 404, detail: "no retained message on `a/b`", request_id: "r-1" }),
    null,
  );
  assert.ok(e instanceof ApiError);
  assert.ok(e instanceof Error);
  assert.equal(e.status, 404);
  assert.equal(e.title, "Not found");
  assert.equal(e.detail, "no retained message on `a/b`");
  assert.equal(e.slug, "not-found");
  assert.equal(e.requestId, "r-1");
  assert.equal(e.message, "no retained message on `a/b`");
  assert.equal(errorMessage(e), "no retained message on `a/b`");
  assert.equal(String(e), "ApiError: no retained message on `a/b`");
});

test("field errors the detail does not say are added to the message", () => {
  // Tern's own 400s say the field in the detail too: no repetition.
  const own = problemFromBody(
    400,
    "Bad Request",
    JSON.stringify({ type: "https://tern.dev/problems/invalid", title: "Invalid request", status: 400, detail: "invalid `topic`: not a valid MQTT topic name", errors: [{ field: "topic", message: "not a valid MQTT topic name" }] }),
    null,
  );
  assert.equal(own.message, "invalid `topic`: not a valid MQTT topic name");
  assert.deepEqual(own.errors, [{ field: "topic", message: "not a valid MQTT topic name" }]);
  const other = problemFromBody(
    400,
    "Bad Request",
    JSON.stringify({ title: "Invalid request", detail: "2 fields are invalid", errors: [{ field: "qos", message: "must be 0, 1 or 2" }, { field: "topic", message: "empty" }, { nope: 1 }] }),
    null,
  );
  assert.equal(other.message, "2 fields are invalid — qos: must be 0, 1 or 2; topic: empty");
  assert.equal(other.errors.length, 2);
});

test("no detail: the title; nothing: the status", () => {
  assert.equal(problemFromBody(403, "Forbidden", JSON.stringify({ title: "Forbidden" }), null).message, "Forbidden");
  assert.equal(problemFromBody(502, "", "", null).message, "HTTP 502");
});

test("server errors carry the request id to quote", () => {
  const e = problemFromBody(500, "Internal Server Error", JSON.stringify({ title: "Internal error", detail: "internal error", request_id: "abc" }), null);
  assert.equal(e.message, "internal error (request id abc)");
  const h = problemFromBody(503, "Service Unavailable", "upstream down", "from-header");
  assert.equal(h.requestId, "from-header");
  assert.equal(h.message, "upstream down (request id from-header)");
});

test("a body that is not a problem document: its text, cut", () => {
  const e = problemFromBody(502, "Bad Gateway", "<html>" + "x".repeat(500) + "</html>", null);
  assert.equal(e.title, "Bad Gateway");
  assert.equal(e.detail.length, 200);
  assert.equal(e.type, "about:blank");
  // JSON that is not an object (a bare string) is text too.
  assert.equal(problemFromBody(400, "Bad Request", '"oops"', null).detail, '"oops"');
});

test("a Response becomes an ApiError with the x-request-id header", async () => {
  const res = new Response(JSON.stringify({ title: "Too many requests", status: 429, detail: "retry after 10 s" }), {
    status: 429,
    statusText: "Too Many Requests",
    headers: { "content-type": "application/problem+json", "x-request-id": "req-9" },
  });
  const e = await problemFromResponse(res);
  assert.equal(e.status, 429);
  assert.equal(e.requestId, "req-9");
  assert.equal(e.message, "retry after 10 s");
});

test("errorMessage for other failures", () => {
  assert.equal(errorMessage(new TypeError("Failed to fetch")), "The admin API cannot be reached (network error).");
  assert.equal(errorMessage(new TypeError("NetworkError when attempting to fetch resource.")), "The admin API cannot be reached (network error).");
  assert.equal(errorMessage(new TypeError("x is undefined")), "x is undefined");
  assert.equal(errorMessage(new DOMException("The user aborted a request.", "AbortError")), "The request was cancelled.");
  assert.equal(errorMessage(new Error("boom")), "boom");
  assert.equal(errorMessage("plain"), "plain");
});
