// RFC 9457 problem documents from the admin API, as errors the pages can show.

/** A field-level message of a 400 answer. */
export interface FieldError {
  field: string;
  message: string;
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
    super(detail || title);
    this.name = "ApiError";
  }

  /** The short slug of the problem type (`https://tern.dev/problems/not-found` → `not-found`). */
  get slug(): string {
    const i = this.type.lastIndexOf("/");
    return i >= 0 ? this.type.slice(i + 1) : this.type;
  }

  /** One line for a banner: detail, the first field errors, and the request id to quote. */
  get message(): string {
    const fields = this.errors.map((e) => `${e.field}: ${e.message}`).join("; ");
    const text = [this.detail || this.title, fields].filter(Boolean).join(" — ");
    return text || `HTTP ${this.status}`;
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
  if (e instanceof TypeError) return "The admin API cannot be reached (network error).";
  if (e instanceof Error) return e.message;
  return String(e);
}
