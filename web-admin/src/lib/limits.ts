// A device's own limits (the API's `DeviceLimits`): the fields in display order with their
// units and ranges, how a set value reads, and the edit form's text <-> the request body with
// the checks the API makes (whole numbers; max_queued_messages >= 1, max_queued_bytes >= 1024).

import type { components } from "../api/schema.js";
import { bytes } from "./format.js";

export type DeviceLimits = components["schemas"]["DeviceLimits"];
export type LimitKey = keyof DeviceLimits;

/** The unit a limit is counted in. */
export type LimitUnit = "msg/s" | "B/s" | "messages" | "bytes" | "subscriptions";

/** Which group of the form a limit belongs to. */
export type LimitGroup = "publish" | "outbound" | "session";

/** One limit: what it is called, its unit, its range and what 0 means. */
export interface LimitField {
  key: LimitKey;
  label: string;
  unit: LimitUnit;
  group: LimitGroup;
  /** The lowest value the API accepts. */
  min: number;
  /** The highest value the API accepts (u32, or the largest exact integer for u64 fields). */
  max: number;
  /** What 0 means, when it means something special. */
  zero?: string;
}

/** Largest u32. */
export const U32_MAX = 4_294_967_295;

/** Every limit, in the API's order. */
export const LIMIT_FIELDS: readonly LimitField[] = [
  { key: "publish_rate", label: "Publish rate", unit: "msg/s", group: "publish", min: 0, max: U32_MAX, zero: "unlimited" },
  { key: "publish_burst", label: "Publish burst", unit: "messages", group: "publish", min: 0, max: U32_MAX, zero: "one second's worth" },
  { key: "publish_bytes_rate", label: "Publish bytes rate", unit: "B/s", group: "publish", min: 0, max: Number.MAX_SAFE_INTEGER, zero: "unlimited" },
  { key: "publish_bytes_burst", label: "Publish bytes burst", unit: "bytes", group: "publish", min: 0, max: Number.MAX_SAFE_INTEGER, zero: "one second's worth" },
  { key: "outbound_bytes_rate", label: "Outbound bytes rate", unit: "B/s", group: "outbound", min: 0, max: Number.MAX_SAFE_INTEGER, zero: "unlimited" },
  { key: "outbound_bytes_burst", label: "Outbound bytes burst", unit: "bytes", group: "outbound", min: 0, max: Number.MAX_SAFE_INTEGER, zero: "one second's worth" },
  { key: "max_subscriptions", label: "Max subscriptions", unit: "subscriptions", group: "session", min: 0, max: U32_MAX, zero: "publish only" },
  { key: "max_queued_messages", label: "Max queued messages", unit: "messages", group: "session", min: 1, max: U32_MAX },
  { key: "max_queued_bytes", label: "Max queued bytes", unit: "bytes", group: "session", min: 1024, max: Number.MAX_SAFE_INTEGER },
  { key: "max_retained", label: "Max retained messages", unit: "messages", group: "session", min: 0, max: U32_MAX, zero: "may not retain" },
];

/** A set value with its unit: `10 msg/s`, `65536 B/s (64 KiB/s)`, `0 msg/s (unlimited)`. */
export function formatLimit(field: LimitField, value: number): string {
  // Counts read "1 message", "1 byte"; rates keep their symbol.
  const unit = value === 1 && !field.unit.endsWith("/s") ? field.unit.slice(0, -1) : field.unit;
  let text = `${value} ${unit}`;
  if (value === 0 && field.zero) return `${text} (${field.zero})`;
  if (value >= 1024 && (field.unit === "B/s" || field.unit === "bytes")) {
    text += ` (${bytes(value)}${field.unit === "B/s" ? "/s" : ""})`;
  }
  return text;
}

/** The limits that are set, in display order, as label and text. */
export function limitEntries(limits: DeviceLimits | null | undefined): { key: LimitKey; label: string; text: string }[] {
  const out: { key: LimitKey; label: string; text: string }[] = [];
  for (const f of LIMIT_FIELDS) {
    const v = limits?.[f.key];
    if (v !== undefined && v !== null) out.push({ key: f.key, label: f.label, text: formatLimit(f, v) });
  }
  return out;
}

/** The edit form's state: one text per limit (empty: not set). */
export type LimitsForm = Record<LimitKey, string>;

/** The form for `limits`: set values as digits, the others empty. */
export function limitsToForm(limits: DeviceLimits | null | undefined): LimitsForm {
  const form = {} as LimitsForm;
  for (const f of LIMIT_FIELDS) {
    const v = limits?.[f.key];
    form[f.key] = v === undefined || v === null ? "" : String(v);
  }
  return form;
}

/** Why one input cannot be sent, or null (empty is fine: not set). */
export function limitProblem(field: LimitField, text: string): string | null {
  const t = text.trim();
  if (t === "") return null;
  if (!/^\d+$/.test(t)) return "A whole number, 0 or more (empty: not set).";
  const n = Number(t);
  if (n < field.min) return `At least ${field.min} (empty: not set).`;
  if (n > field.max) return `At most ${field.max}.`;
  return null;
}

/**
 * The request's `limits` from the form: only the filled-in ones (none: `{}`, which clears
 * them), or the problems by field when any input is not valid.
 */
export function parseLimitsForm(form: Partial<LimitsForm>): { limits: DeviceLimits; errors: Partial<Record<LimitKey, string>> } {
  const limits: DeviceLimits = {};
  const errors: Partial<Record<LimitKey, string>> = {};
  for (const f of LIMIT_FIELDS) {
    const text = form[f.key] ?? "";
    const problem = limitProblem(f, text);
    if (problem) errors[f.key] = problem;
    else if (text.trim() !== "") limits[f.key] = Number(text.trim());
  }
  return { limits, errors };
}

/**
 * A limit's label in the form: with its unit in brackets, unless the name already ends with it
 * (`Publish rate (msg/s)`, `Publish burst (messages)`, but `Max queued bytes`).
 */
export function limitLabel(field: LimitField): string {
  return field.label.toLowerCase().endsWith(` ${field.unit}`) ? field.label : `${field.label} (${field.unit})`;
}

/** The hint under a limit's input: what 0 means, or its lowest value. */
export function limitHint(field: LimitField): string {
  return field.zero ? `0: ${field.zero}.` : `At least ${field.min}.`;
}
