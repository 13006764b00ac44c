// Retained messages: a filtered, paged list; the selected message with its properties and the
// payload viewer; delete (operators). The filter and the selected topic live in the URL
// (`#/topics?tab=retained&filter=a/%23&topic=a/b`).

import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { api, seg, type Retained, type RetainedPage } from "../../api/client";
import { Confirm, Empty, ErrorBanner, Facts, Field, Loading, Notice, Pager, useCursor } from "../../components";
import { useAction, useAsync } from "../../hooks";
import { bytes, duration } from "../../lib/format";
import { payloadBytes, preview } from "../../lib/payload";
import { ApiError } from "../../lib/problem";
import { href } from "../../lib/router";
import { showTopic } from "./tree";
import { PayloadViewer, UserProperties } from "./viewer";

const PAGE = 25;

/** The API path of a topic's retained message (each level escaped: `#`, `?`, `%`, spaces). */
export function retainedPath(topic: string): string {
  return "/api/v1/retained/" + seg(topic);
}

/** Replaces the current history entry (no new Back step for each filter change). */
function setQuery(q: Record<string, string | null>) {
  const clean: Record<string, string> = { tab: "retained" };
  for (const [k, v] of Object.entries(q)) if (v !== null && v !== "") clean[k] = v;
  location.replace(href(["topics"], clean));
}

export function RetainedTab(props: { filter: string; topic: string | null; canOperate: boolean }) {
  const { filter, topic } = props;
  const [draft, setDraft] = useState(filter);
  useEffect(() => setDraft(filter), [filter]);
  const cursor = useCursor();
  const first = useRef(true);
  useEffect(() => {
    if (first.current) first.current = false;
    else cursor.reset();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [filter]);
  const [notice, setNotice] = useState<string | null>(null);
  const page = useAsync(() => api.get<RetainedPage>("/api/v1/retained", { filter, after: cursor.after, limit: PAGE }), [filter, cursor.after]);

  const apply = (e: Event) => {
    e.preventDefault();
    setNotice(null);
    setQuery({ filter: draft.trim() || "#", topic: null });
  };
  const select = (t: string | null) => setQuery({ filter, topic: t });

  return (
    <div>
      <form class="toolbar" onSubmit={apply} role="search" aria-label="Filter retained messages">
        <Field id="retained-filter" label="Retained filter" hint="An MQTT topic filter: + matches one level, # the rest (a/#, +/temp).">
          <input
            id="retained-filter"
            value={draft}
            onInput={(e) => setDraft(e.currentTarget.value)}
            spellcheck={false}
            aria-describedby="retained-filter-hint"
            class="mono"
          />
        </Field>
        <button type="submit">Show</button>
        <button type="button" onClick={page.reload}>
          Refresh
        </button>
      </form>
      {notice && <Notice>{notice}</Notice>}
      <ErrorBanner error={page.error} />
      {page.loading && !page.data ? (
        <Loading label="Loading retained messages…" />
      ) : page.data && page.data.items.length === 0 ? (
        <Empty>{cursor.hasPrev ? "No more retained messages." : `No retained message matches ${filter}.`}</Empty>
      ) : page.data ? (
        <>
          <div class="topics-scroll">
            <table aria-label="Retained messages">
              <thead>
                <tr>
                  <th scope="col">Topic</th>
                  <th scope="col" class="num">
                    QoS
                  </th>
                  <th scope="col" class="num">
                    Size
                  </th>
                  <th scope="col">Payload</th>
                  <th scope="col">Expires</th>
                </tr>
              </thead>
              <tbody>
                {page.data.items.map((r) => (
                  <RetainedRow key={r.topic} r={r} selected={r.topic === topic} onSelect={() => select(r.topic === topic ? null : r.topic)} />
                ))}
              </tbody>
            </table>
          </div>
          <Pager hasPrev={cursor.hasPrev} next={page.data.next} onPrev={cursor.prev} onNext={cursor.next} />
        </>
      ) : null}
      {topic !== null && (
        <RetainedDetail
          key={topic}
          topic={topic}
          canOperate={props.canOperate}
          onClose={() => select(null)}
          onDeleted={() => {
            setNotice(`Deleted the retained message on ${showTopic(topic)}.`);
            // The message is gone: focus returns to the list's filter, above the notice.
            document.getElementById("retained-filter")?.focus();
            select(null);
            page.reload();
          }}
        />
      )}
    </div>
  );
}

function RetainedRow(props: { r: Retained; selected: boolean; onSelect: () => void }) {
  const r = props.r;
  const data = useMemo(() => payloadBytes(r.payload, r.payload_base64), [r]);
  return (
    <tr class={props.selected ? "selected" : undefined}>
      <td>
        <button type="button" class="link topic-name mono" aria-current={props.selected ? "true" : undefined} onClick={props.onSelect}>
          {showTopic(r.topic)}
        </button>
      </td>
      <td class="num">{r.qos}</td>
      <td class="num">{bytes(data.length)}</td>
      <td class="mono preview">{preview(data, 60) || <span class="muted">(empty)</span>}</td>
      <td>{r.expires_in === null || r.expires_in === undefined ? <span class="muted">never</span> : `in ${duration(r.expires_in)}`}</td>
    </tr>
  );
}

function RetainedDetail(props: { topic: string; canOperate: boolean; onClose: () => void; onDeleted: () => void }) {
  // null: none retained on it (a 404).
  const msg = useAsync<Retained | null>(
    () =>
      api.get<Retained>(retainedPath(props.topic)).catch((e: unknown) => {
        if (e instanceof ApiError && e.status === 404) return null;
        throw e;
      }),
    [props.topic],
  );
  const [confirming, setConfirming] = useState(false);
  const del = useAction();
  const head = useRef<HTMLHeadingElement>(null);
  // Focus moves to the message when it is opened (it is below the list).
  useEffect(() => head.current?.focus(), []);
  const r = msg.data;
  const data = useMemo(() => (r ? payloadBytes(r.payload, r.payload_base64) : new Uint8Array(0)), [r]);
  const notFound = r === null;
  const remove = async () => {
    const ok = await del.run(async () => {
      await api.del(retainedPath(props.topic));
      return true;
    });
    setConfirming(false);
    if (ok) props.onDeleted();
  };
  return (
    <section class="card retained-detail" aria-labelledby="retained-title">
      <div class="topic-details-head">
        <h2 id="retained-title" tabIndex={-1} ref={head}>
          Retained on <span class="mono">{showTopic(props.topic)}</span>
        </h2>
        <button type="button" class="link" onClick={props.onClose} aria-label="Close retained message">
          ×
        </button>
      </div>
      {msg.loading && r === undefined ? (
        <Loading label="Loading the retained message…" />
      ) : notFound ? (
        <Empty>There is no retained message on this topic (any more): it was deleted, replaced by an empty one, or it expired.</Empty>
      ) : !r ? (
        <ErrorBanner error={msg.error} />
      ) : (
        <>
          <ErrorBanner error={del.error} onDismiss={del.clear} />
          <Facts
            items={[
              ["QoS", String(r.qos)],
              ["Size", `${bytes(data.length)} (${data.length.toLocaleString()} bytes)`],
              ["Content type", r.content_type ?? <span class="muted">–</span>],
              [
                "Payload format",
                r.payload_format_indicator === true ? "UTF-8 text (indicator set)" : r.payload_format_indicator === false ? "bytes (indicator 0)" : <span class="muted">not given</span>,
              ],
              ["Expires", r.expires_in === null || r.expires_in === undefined ? "never" : `in ${duration(r.expires_in)} (${r.expires_in} s)`],
              ["Response topic", r.response_topic ? <span class="mono">{r.response_topic}</span> : <span class="muted">–</span>],
              [
                "Correlation data",
                r.correlation_data_base64 ? <CorrelationData b64={r.correlation_data_base64} /> : <span class="muted">–</span>,
              ],
              ["User properties", <UserProperties items={r.user_properties} />],
            ]}
          />
          <PayloadViewer payload={data} label={`Payload of the retained message on ${showTopic(props.topic)}`} />
          {props.canOperate && (
            <div class="toolbar spaced">
              <button type="button" class="danger" onClick={() => setConfirming(true)}>
                Delete retained
              </button>
            </div>
          )}
          {confirming && (
            <Confirm
              title="Delete this retained message?"
              confirmLabel="Delete"
              danger
              busy={del.busy}
              onConfirm={() => void remove()}
              onCancel={() => setConfirming(false)}
            >
              <p>
                New subscribers to <code>{showTopic(props.topic)}</code> will no longer get it. Messages already delivered are not affected.
                This is recorded in the audit log.
              </p>
            </Confirm>
          )}
        </>
      )}
    </section>
  );
}

function CorrelationData(props: { b64: string }) {
  const data = useMemo(() => {
    try {
      return payloadBytes(null, props.b64);
    } catch {
      return null;
    }
  }, [props.b64]);
  if (!data) return <span class="mono">{props.b64}</span>;
  return (
    <span class="mono" title={`base64: ${props.b64}`}>
      {preview(data, 60)}
    </span>
  );
}
