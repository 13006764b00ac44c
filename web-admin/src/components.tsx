// Shared building blocks: page frame, states (loading, empty, error), tables, dialogs, copy
// buttons and the sparkline chart. Every page uses these so states look and behave the same.

import type { ComponentChildren, JSX } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";

/** A page: its title (focused on navigation, for screen readers) and content. */
export function Page(props: { title: string; actions?: ComponentChildren; children: ComponentChildren }) {
  const h = useRef<HTMLHeadingElement>(null);
  useEffect(() => {
    document.title = `${props.title} · Tern`;
    h.current?.focus();
  }, [props.title]);
  return (
    <section class="page" aria-labelledby="page-title">
      <header class="page-head">
        <h1 id="page-title" tabIndex={-1} ref={h}>
          {props.title}
        </h1>
        {props.actions && <div class="page-actions">{props.actions}</div>}
      </header>
      {props.children}
    </section>
  );
}

/** An error banner (problem+json detail as the API sent it). */
export function ErrorBanner(props: { error: string | null | undefined; onDismiss?: () => void }) {
  if (!props.error) return null;
  return (
    <div class="banner error" role="alert">
      <span>{props.error}</span>
      {props.onDismiss && (
        <button type="button" class="link" onClick={props.onDismiss} aria-label="Dismiss error">
          ×
        </button>
      )}
    </div>
  );
}

/** A success or information banner. */
export function Notice(props: { children: ComponentChildren }) {
  return (
    <div class="banner info" role="status">
      {props.children}
    </div>
  );
}

export function Loading(props: { label?: string }) {
  return (
    <p class="muted" role="status" aria-live="polite">
      {props.label ?? "Loading…"}
    </p>
  );
}

export function Empty(props: { children: ComponentChildren }) {
  return <p class="empty">{props.children}</p>;
}

/** A labelled form field. */
export function Field(props: { label: string; hint?: string; children: ComponentChildren; id: string }) {
  return (
    <div class="field">
      <label for={props.id}>{props.label}</label>
      {props.children}
      {props.hint && (
        <small class="muted" id={`${props.id}-hint`}>
          {props.hint}
        </small>
      )}
    </div>
  );
}

/** A button that copies `text` and says so. */
export function CopyButton(props: { text: string; label?: string }) {
  const [copied, setCopied] = useState(false);
  const copy = async () => {
    try {
      await navigator.clipboard.writeText(props.text);
    } catch {
      // Insecure contexts have no clipboard API: select-and-copy fallback.
      const ta = document.createElement("textarea");
      ta.value = props.text;
      document.body.appendChild(ta);
      ta.select();
      document.execCommand("copy");
      ta.remove();
    }
    setCopied(true);
    setTimeout(() => setCopied(false), 1500);
  };
  return (
    <button type="button" class="small" onClick={copy} aria-label={props.label ?? "Copy"}>
      {copied ? "Copied" : "Copy"}
    </button>
  );
}

/** A modal confirmation; focus moves into it and Escape cancels. */
export function Confirm(props: {
  title: string;
  children: ComponentChildren;
  confirmLabel: string;
  danger?: boolean;
  busy?: boolean;
  onConfirm: () => void;
  onCancel: () => void;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const d = ref.current;
    if (d && !d.open) d.showModal();
    return () => d?.close();
  }, []);
  return (
    <dialog ref={ref} class="dialog" aria-labelledby="confirm-title" onCancel={(e) => (e.preventDefault(), props.onCancel())}>
      <h2 id="confirm-title">{props.title}</h2>
      <div>{props.children}</div>
      <div class="dialog-actions">
        <button type="button" onClick={props.onCancel}>
          Cancel
        </button>
        <button type="button" class={props.danger ? "danger" : "primary"} disabled={props.busy} onClick={props.onConfirm} autofocus>
          {props.confirmLabel}
        </button>
      </div>
    </dialog>
  );
}

/** A key-value list for detail pages. */
export function Facts(props: { items: [string, ComponentChildren][] }) {
  return (
    <dl class="facts">
      {props.items.map(([k, v]) => (
        <div key={k}>
          <dt>{k}</dt>
          <dd>{v}</dd>
        </div>
      ))}
    </dl>
  );
}

/** An online/offline/disabled badge. */
export function Badge(props: { kind: "ok" | "off" | "warn" | "bad"; children: ComponentChildren }) {
  return <span class={`badge ${props.kind}`}>{props.children}</span>;
}

/** "Previous / Next" for cursor paging: the caller keeps the stack of cursors. */
export function Pager(props: { hasPrev: boolean; next: string | null | undefined; onPrev: () => void; onNext: (cursor: string) => void }) {
  if (!props.hasPrev && !props.next) return null;
  return (
    <nav class="pager" aria-label="Pages">
      <button type="button" disabled={!props.hasPrev} onClick={props.onPrev}>
        ← Previous
      </button>
      <button type="button" disabled={!props.next} onClick={() => props.next && props.onNext(props.next)}>
        Next →
      </button>
    </nav>
  );
}

/** Cursor paging state: the cursors of the pages before the current one. */
export function useCursor(): { after: string | undefined; hasPrev: boolean; next: (c: string) => void; prev: () => void; reset: () => void } {
  const [stack, setStack] = useState<(string | undefined)[]>([undefined]);
  const after = stack[stack.length - 1];
  return {
    after,
    hasPrev: stack.length > 1,
    next: (c) => setStack((s) => [...s, c]),
    prev: () => setStack((s) => (s.length > 1 ? s.slice(0, -1) : s)),
    reset: () => setStack([undefined]),
  };
}

/** A small line chart of the last values (no axes: the current value is printed next to it). */
export function Sparkline(props: { values: number[]; label: string; width?: number; height?: number }) {
  const w = props.width ?? 160;
  const h = props.height ?? 36;
  const vs = props.values;
  const max = Math.max(1e-9, ...vs);
  const pts = vs.map((v, i) => `${vs.length === 1 ? w : (i / (vs.length - 1)) * w},${h - 2 - (v / max) * (h - 4)}`).join(" ");
  return (
    <svg class="spark" width={w} height={h} viewBox={`0 0 ${w} ${h}`} role="img" aria-label={props.label}>
      {vs.length > 0 && <polyline points={pts} fill="none" stroke="currentColor" stroke-width="1.5" />}
    </svg>
  );
}

/** A stat tile with an optional sparkline. */
export function Stat(props: { label: string; value: string; series?: number[]; tone?: "ok" | "bad" | "warn"; hint?: string }) {
  return (
    <div class={`stat ${props.tone ?? ""}`}>
      <div class="stat-label">{props.label}</div>
      <div class="stat-value">{props.value}</div>
      {props.series && <Sparkline values={props.series} label={`${props.label}, last minutes`} />}
      {props.hint && <div class="muted small">{props.hint}</div>}
    </div>
  );
}

/** A tab strip (buttons with aria-selected; arrow keys move between them). */
export function Tabs<T extends string>(props: { tabs: [T, string][]; value: T; onChange: (t: T) => void; label: string }) {
  const list = useRef<HTMLDivElement>(null);
  // Arrow keys move between tabs (and focus with them), Home/End to the ends: the ARIA tabs
  // pattern with automatic activation.
  const onKey = (e: JSX.TargetedKeyboardEvent<HTMLDivElement>) => {
    const n = props.tabs.length;
    const i = props.tabs.findIndex(([t]) => t === props.value);
    const to = { ArrowRight: (i + 1) % n, ArrowLeft: (i - 1 + n) % n, Home: 0, End: n - 1 }[e.key];
    if (to === undefined) return;
    e.preventDefault();
    const next = props.tabs[to];
    if (!next) return;
    props.onChange(next[0]);
    list.current?.querySelectorAll<HTMLButtonElement>("[role=tab]")[to]?.focus();
  };
  return (
    <div class="tabs" role="tablist" aria-label={props.label} onKeyDown={onKey} ref={list}>
      {props.tabs.map(([t, label]) => (
        <button
          key={t}
          type="button"
          role="tab"
          id={`tab-${t}`}
          aria-selected={t === props.value}
          tabIndex={t === props.value ? 0 : -1}
          onClick={() => props.onChange(t)}
        >
          {label}
        </button>
      ))}
    </div>
  );
}
