// Widgets shared by the ACL, Clients, Sessions, Admin users and Audit pages: a debounced
// value for filter boxes, the pause toggle of live lists, a modal form dialog, and the
// "shown once" secret panel. (Candidates for components.tsx.)

import type { ComponentChildren } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import { CopyButton, ErrorBanner } from "../../components";

/** `value`, once it has stopped changing for `ms`. */
export function useDebounced<T>(value: T, ms = 300): T {
  const [v, setV] = useState(value);
  useEffect(() => {
    const t = setTimeout(() => setV(value), ms);
    return () => clearTimeout(t);
  }, [value, ms]);
  return v;
}

/** "Pause updates" / "Resume updates" with the time of the last refresh. */
export function LiveToggle(props: { paused: boolean; onToggle: () => void; updatedAt: number | null; every: string }) {
  return (
    <div class="live-toggle">
      <button type="button" aria-pressed={props.paused} onClick={props.onToggle}>
        {props.paused ? "Resume updates" : "Pause updates"}
      </button>
      <span class="muted small" aria-live="off">
        {props.paused ? "Paused" : `Updates every ${props.every}`}
        {props.updatedAt !== null && ` · last ${new Date(props.updatedAt).toLocaleTimeString()}`}
      </span>
    </div>
  );
}

/** The time `data` last changed (for "last updated"). */
export function useUpdatedAt(data: unknown): number | null {
  const [at, setAt] = useState<number | null>(null);
  useEffect(() => {
    if (data !== undefined) setAt(Date.now());
  }, [data]);
  return at;
}

let dialogSeq = 0;

/**
 * A modal dialog holding a form: focus moves into it, Escape or "Cancel" closes it, and focus
 * returns to the control that opened it.
 */
export function FormDialog(props: {
  title: string;
  submitLabel: string;
  busy?: boolean;
  error?: string | null;
  onSubmit: () => void;
  onCancel: () => void;
  children: ComponentChildren;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  const [id] = useState(() => `form-dialog-${++dialogSeq}`);
  useEffect(() => {
    const opener = document.activeElement as HTMLElement | null;
    const d = ref.current;
    if (d && !d.open) d.showModal();
    return () => {
      d?.close();
      if (opener && opener.isConnected) opener.focus();
    };
  }, []);
  return (
    <dialog ref={ref} class="dialog" aria-labelledby={id} onCancel={(e) => (e.preventDefault(), props.onCancel())}>
      <form
        onSubmit={(e) => {
          e.preventDefault();
          props.onSubmit();
        }}
        noValidate
      >
        <h2 id={id}>{props.title}</h2>
        <ErrorBanner error={props.error} />
        {props.children}
        <div class="dialog-actions">
          <button type="button" onClick={props.onCancel}>
            Cancel
          </button>
          <button type="submit" class="primary" disabled={props.busy}>
            {props.submitLabel}
          </button>
        </div>
      </form>
    </dialog>
  );
}

/** A secret shown this once: a warning, the value with a copy button, and "Done". */
export function SecretOnce(props: { title: string; what: string; value: string; copyLabel: string; onDone: () => void; children?: ComponentChildren }) {
  const h = useRef<HTMLHeadingElement>(null);
  useEffect(() => h.current?.focus(), []);
  return (
    <section class="card secret-once" aria-labelledby="secret-once-title">
      <h2 id="secret-once-title" tabIndex={-1} ref={h}>
        {props.title}
      </h2>
      {props.children}
      <p class="warn-text" role="note">
        <strong>Copy the {props.what} now:</strong> it is shown only this once and cannot be shown again.
      </p>
      <div class="secret">
        <code data-secret>{props.value}</code>
        <CopyButton text={props.value} label={props.copyLabel} />
      </div>
      <button type="button" onClick={props.onDone}>
        Done
      </button>
    </section>
  );
}

/** An error line under a form field (the input points at it with aria-describedby). */
export function FieldError(props: { id: string; error: string | undefined }) {
  if (!props.error) return null;
  return (
    <small class="field-error" id={props.id}>
      {props.error}
    </small>
  );
}
