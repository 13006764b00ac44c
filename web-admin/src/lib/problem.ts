// RFC 9457 problem documents from the admin API, as errors the pages can show.

/** A field-level message of a 400 answer. */
export interface FieldError {
  field: string;
  message: string;
}

/**
 * One line for a banner: the detail (or title), the field errors the detail does not already
 * say, and for server errors the request id to quote.
 */
export function problemMessage(status: number, title: string, detail: string, errors: FieldError[], requestId: string | null): string {
  const main = detail || title;
  const fields = errors
    .filter((e) => !main.includes(e.message))
    .map((e) => `${e.field}: ${e.message}`)
    .join("; ");
  let text = [main, fields].filter(Boolean).join(" — ") || `HTTP ${status}`;
  if (status >= 500 && requestId) text += ` (request id ${requestId})`;
  return text;
}

/** A failed API call: the problem document's fields, or what the transport said. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly title: string,
    readonly detail: string,
    readonly type: string = "about:blank",
    readonly errors: FieldError[] = [],
    readonly requestId: string | null = null,
  ) {
    // The message is computed here: `Error` makes `message` an own property of the instance,
    // which would hide a getter on the prototype.
    super(problemMessage(status, title, detail, errors, requestId));
    this.name = "ApiError";
  }

  /** The short slug of the problem type (`https://tern.dev/problems/not-found` → `not-found`). */
  get slug(): string {
    const i = this.type.lastIndexOf("/");
    return i >= 0 ? this.type.slice(i + 1) : this.type;
  }
}

/** Parses a problem document (or anything else) into an `ApiError`. */
export function problemFromBody(status: number, statusText: string, body: string, requestId: string | null): ApiError {
  let doc: unknown = null;
  try {
    doc = body ? JSON.parse(body) : null;
  } catch {
    doc = null;
  }
  if (doc && typeof doc === "object") {
    const d = doc as Record<string, unknown>;
    const errors = Array.isArray(d.errors)
      ? d.errors
          .filter((e): e is FieldError => !!e && typeof e === "object" && typeof (e as FieldError).field === "string")
          .map((e) => ({ field: e.field, message: String(e.message ?? "") }))
      : [];
    return new ApiError(
      typeof d.status === "number" ? d.status : status,
      typeof d.title === "string" ? d.title : statusText,
      typeof d.detail === "string" ? d.detail : "",
      typeof d.type === "string" ? d.type : "about:blank",
      errors,
      typeof d.request_id === "string" ? d.request_id : requestId,
    );
  }
  const text = body.trim().slice(0, 200);
  return new ApiError(status, statusText || `HTTP ${status}`, text, "about:blank", [], requestId);
}

/** Reads a failed response into an `ApiError`. */
export async function problemFromResponse(res: Response): Promise<ApiError> {
  const body = await res.text().catch(() => "");
  return problemFromBody(res.status, res.statusText, body, res.headers.get("x-request-id"));
}

/** Any thrown value as a message for the user. */
export function errorMessage(e: unknown): string {
  if (e instanceof ApiError) return e.message;
  // fetch rejects with a TypeError when the network fails ("Failed to fetch" in Chromium,
  // "NetworkError when attempting to fetch resource." in Firefox, "Load failed" in Safari,
  // "fetch failed" in Node); other TypeErrors are bugs and say what they are.
  if (e instanceof TypeError && /fetch|network|load failed/i.test(e.message)) return "The admin API cannot be reached (network error).";
  if (e instanceof Error && e.name === "AbortError") return "The request was cancelled.";
  if (e instanceof Error) return e.message;
  return String(e);
}
