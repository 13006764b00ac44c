// The payload viewer shared by the retained and live tabs: text, JSON pretty-printed or hex,
// with the default chosen from the payload, and the message's properties.

import { useMemo, useState, useId } from "preact/hooks";
import { CopyButton } from "../../components";
import { bytes as fmtBytes } from "../../lib/format";
import { asJson, asText, defaultView, renderPayload, type PayloadView } from "../../lib/payload";
import type { Schemas } from "../../api/client";

type UserProperty = Schemas["UserProperty"];

const VIEWS: [PayloadView, string][] = [
  ["text", "Text"],
  ["json", "JSON"],
  ["hex", "Hex"],
];

/** A payload with a Text / JSON / Hex switch (a radio group named "Payload view"). */
export function PayloadViewer(props: { payload: Uint8Array; label?: string }) {
  const id = useId();
  const p = props.payload;
  const [view, setView] = useState<PayloadView>(() => defaultView(p));
  const { text, isText, isJson } = useMemo(
    () => ({ text: renderPayload(p, view), isText: asText(p) !== null, isJson: asJson(p) !== null }),
    [p, view],
  );
  const fallback =
    view === "json" && !isJson ? (isText ? "Not JSON: shown as text." : "Not UTF-8 text: shown as hex.") : view === "text" && !isText ? "Not UTF-8 text: shown as hex." : null;
  return (
    <div class="payload">
      <div class="payload-head">
        <fieldset class="radios">
          <legend>Payload view</legend>
          {VIEWS.map(([v, label]) => (
            <label key={v}>
              <input type="radio" name={`view-${id}`} value={v} checked={view === v} onChange={() => setView(v)} /> {label}
            </label>
          ))}
        </fieldset>
        <span class="muted small">{fmtBytes(p.length)}</span>
        {p.length > 0 && <CopyButton text={text} label={`Copy payload (${view})`} />}
      </div>
      {fallback && <p class="muted small">{fallback}</p>}
      {p.length === 0 ? (
        <p class="muted">Empty payload (0 bytes).</p>
      ) : (
        <pre class="payload-body" tabIndex={0} aria-label={props.label ?? "Payload"}>
          {text}
        </pre>
      )}
    </div>
  );
}

/** User properties as a small table (nothing when there are none). */
export function UserProperties(props: { items: UserProperty[] }) {
  if (props.items.length === 0) return <span class="muted">none</span>;
  return (
    <table class="props">
      <thead>
        <tr>
          <th scope="col">Name</th>
          <th scope="col">Value</th>
        </tr>
      </thead>
      <tbody>
        {props.items.map((u, i) => (
          <tr key={i}>
            <td class="mono">{u.name}</td>
            <td class="mono">{u.value}</td>
          </tr>
        ))}
      </tbody>
    </table>
  );
}
