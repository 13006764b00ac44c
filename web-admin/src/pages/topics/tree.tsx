// The topic tree: GET /api/v1/topics polled every 5 s, rates computed between polls, shown as a
// table whose rows are indented by level, with toggle buttons (aria-expanded) and arrow keys.

import type { JSX } from "preact";
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { api, type RetainedPage, type TopicList } from "../../api/client";
import { Empty, ErrorBanner, Facts, Field, Loading, Notice } from "../../components";
import { useAsync } from "../../hooks";
import { ago, bytes, compact, when } from "../../lib/format";
import { href, go } from "../../lib/router";
import { buildTopicTree, flatten, subtreeFilter, topicRates, type TopicNode } from "../../lib/topicTree";

const POLL_MS = 5000;
/** The API's most per request. */
const LIMIT = 1000;
/** Trees up to this many nodes open fully at first; bigger ones show their first level. */
const EXPAND_ALL_UP_TO = 200;

interface Reading {
  list: TopicList;
  /** Per-topic msg/s since the previous reading (null: this is the first). */
  rates: Map<string, number> | null;
}

/** A topic (or level path) for people: the empty string is shown as such. */
export function showTopic(path: string): string {
  return path === "" ? "(empty level)" : path;
}

function countNodes(ns: TopicNode[]): number {
  return ns.reduce((n, c) => n + 1 + countNodes(c.children), 0);
}

/** The paths of every node with children. */
function allParents(ns: TopicNode[], into = new Set<string>()): Set<string> {
  for (const n of ns) {
    if (n.children.length) {
      into.add(n.path);
      allParents(n.children, into);
    }
  }
  return into;
}

function findNode(ns: TopicNode[], path: string): TopicNode | null {
  for (const n of ns) {
    if (n.path === path) return n;
    if (path.startsWith(n.path + "/")) {
      const f = findNode(n.children, path);
      if (f) return f;
    }
  }
  return null;
}

export function TreeTab(props: { canOperate: boolean }) {
  const [prefix, setPrefix] = useState("");
  const [draft, setDraft] = useState("");
  const prev = useRef<{ at: number; counts: Map<string, number> } | null>(null);
  const reading = useAsync<Reading>(
    async () => {
      const list = await api.get<TopicList>("/api/v1/topics", { limit: LIMIT, prefix: prefix || undefined });
      const at = Date.now();
      const p = prev.current;
      const rates = p ? topicRates(p.counts, list.items, (at - p.at) / 1000) : null;
      prev.current = { at, counts: new Map(list.items.map((t) => [t.topic, t.messages])) };
      return { list, rates };
    },
    [prefix],
    POLL_MS,
  );
  const data = reading.data;
  const roots = useMemo(
    () =>
      data
        ? buildTopicTree(
            data.list.items.map((t) => ({
              topic: t.topic,
              messages: t.messages,
              bytes: t.bytes,
              lastMessageAt: t.last_message_at,
              rate: data.rates?.get(t.topic),
              error: t.error,
            })),
          )
        : [],
    [data],
  );

  const [expanded, setExpanded] = useState<Set<string>>(new Set());
  // Until the user opens or closes a level, a small tree stays fully open (new topics included).
  const touched = useRef(false);
  useEffect(() => {
    if (touched.current || roots.length === 0 || countNodes(roots) > EXPAND_ALL_UP_TO) return;
    setExpanded(allParents(roots));
  }, [roots]);
  const [selected, setSelected] = useState<string | null>(null);
  const rows = flatten(roots, (p) => expanded.has(p));
  // Roving tab stop: one topic button is in the tab order (the last focused, else the selected,
  // else the first); arrow keys move between them.
  const [focusPath, setFocusPath] = useState<string | null>(null);
  const at = (p: string | null) => (p === null ? -1 : rows.findIndex((r) => r.node.path === p));
  const rovingIndex = at(focusPath) >= 0 ? at(focusPath) : at(selected) >= 0 ? at(selected) : 0;
  const selectedNode = selected === null ? null : findNode(roots, selected);

  const toggle = (path: string, open?: boolean) => {
    touched.current = true;
    setExpanded((s) => {
      const n = new Set(s);
      if (open ?? !n.has(path)) n.add(path);
      else n.delete(path);
      return n;
    });
  };
  const expandAll = () => {
    touched.current = true;
    setExpanded(allParents(roots));
  };
  const collapseAll = () => {
    touched.current = true;
    setExpanded(new Set());
  };

  const body = useRef<HTMLTableSectionElement>(null);
  const focusRow = (i: number) => {
    const buttons = body.current?.querySelectorAll<HTMLButtonElement>("button.topic-name");
    if (!buttons || buttons.length === 0) return;
    buttons[Math.max(0, Math.min(buttons.length - 1, i))]?.focus();
  };
  /** Tree keys on the topic buttons: ↑/↓ move, → opens or goes to the first child, ← closes or goes to the parent. */
  const onKey = (e: JSX.TargetedKeyboardEvent<HTMLButtonElement>, i: number) => {
    const row = rows[i];
    if (!row) return;
    const n = row.node;
    const open = expanded.has(n.path);
    let handled = true;
    if (e.key === "ArrowDown") focusRow(i + 1);
    else if (e.key === "ArrowUp") focusRow(i - 1);
    else if (e.key === "Home") focusRow(0);
    else if (e.key === "End") focusRow(rows.length - 1);
    else if (e.key === "ArrowRight") {
      if (n.children.length && !open) toggle(n.path, true);
      else if (n.children.length) focusRow(i + 1);
    } else if (e.key === "ArrowLeft") {
      if (n.children.length && open) toggle(n.path, false);
      else if (row.depth > 0) {
        for (let j = i - 1; j >= 0; j--) {
          if (rows[j]!.depth === row.depth - 1) {
            focusRow(j);
            break;
          }
        }
      }
    } else handled = false;
    if (handled) e.preventDefault();
  };

  const applyPrefix = (e: Event) => {
    e.preventDefault();
    prev.current = null;
    setPrefix(draft.trim());
  };

  if (reading.loading && !data) return <Loading label="Loading topics…" />;
  if (!data) return <ErrorBanner error={reading.error} />;
  const { list } = data;

  if (list.capacity === 0) return <StatsOff />;

  return (
    <div>
      <ErrorBanner error={reading.error} />
      <form class="toolbar" onSubmit={applyPrefix} role="search" aria-label="Filter the topic tree">
        <Field id="tree-prefix" label="Only topics starting with">
          <input id="tree-prefix" value={draft} onInput={(e) => setDraft(e.currentTarget.value)} placeholder="e.g. home/" spellcheck={false} />
        </Field>
        <button type="submit">Apply</button>
        <button type="button" onClick={expandAll} disabled={rows.length === 0}>
          Expand all
        </button>
        <button type="button" onClick={collapseAll} disabled={expanded.size === 0}>
          Collapse all
        </button>
        <span class="muted small">
          {list.items.length < list.tracked
            ? `The ${compact(list.items.length)} busiest of ${compact(list.tracked)} tracked topics`
            : `${compact(list.tracked)} tracked topic${list.tracked === 1 ? "" : "s"}`}{" "}
          (at most {compact(list.capacity)}); refreshed every 5 s.
        </span>
      </form>
      {list.tracked >= list.capacity && (
        <p class="muted small">
          The broker tracks the {compact(list.capacity)} busiest topics only (limits.topic_stats_capacity): a topic that entered after
          another was evicted may be overcounted, by at most the “±” shown.
        </p>
      )}
      {list.items.length === 0 ? (
        <Empty>
          {prefix
            ? `No topic starting with “${prefix}” has had a message since the broker started.`
            : "No messages have been published since the broker started."}
        </Empty>
      ) : (
        <div class="topics-split">
          <div class="topics-scroll">
            <table class="tree" aria-label="Topic tree">
              <thead>
                <tr>
                  <th scope="col">Topic</th>
                  <th scope="col" class="num">
                    Messages
                  </th>
                  <th scope="col" class="num">
                    msg/s
                  </th>
                  <th scope="col" class="num">
                    Bytes
                  </th>
                  <th scope="col">Last message</th>
                </tr>
              </thead>
              <tbody ref={body}>
                {rows.map(({ node: n, depth }, i) => {
                  const open = expanded.has(n.path);
                  return (
                    <tr key={n.path} class={n.path === selected ? "selected" : undefined}>
                      <td>
                        <div class="tree-cell" style={{ paddingLeft: `${depth * 1.25}rem` }}>
                          {n.children.length ? (
                            <button
                              type="button"
                              class="toggle"
                              aria-expanded={open}
                              aria-label={`Subtopics of ${showTopic(n.path)}`}
                              onClick={() => toggle(n.path)}
                              tabIndex={-1}
                            >
                              <span aria-hidden="true">{open ? "▾" : "▸"}</span>
                            </button>
                          ) : (
                            <span class="toggle-space" aria-hidden="true" />
                          )}
                          <button
                            type="button"
                            class="link topic-name"
                            aria-label={showTopic(n.path)}
                            aria-current={n.path === selected ? "true" : undefined}
                            tabIndex={i === rovingIndex ? 0 : -1}
                            onFocus={() => setFocusPath(n.path)}
                            onClick={() => setSelected(n.path === selected ? null : n.path)}
                            onKeyDown={(e) => onKey(e, i)}
                          >
                            {n.name === "" ? <em class="muted">(empty)</em> : n.name}
                          </button>
                        </div>
                      </td>
                      <td class="num">
                        {compact(n.messages)}
                        {n.error > 0 && <span class="muted small" title="Upper bound of the overcount">{` ±${compact(n.error)}`}</span>}
                      </td>
                      <td class="num">{data.rates ? compact(n.rate) : "–"}</td>
                      <td class="num">{bytes(n.bytes)}</td>
                      <td title={when(n.lastMessageAt)}>{ago(n.lastMessageAt)}</td>
                    </tr>
                  );
                })}
              </tbody>
            </table>
            <p class="muted small">
              Select a topic for its details. Keys: ↑ ↓ move, → opens a level, ← closes it or goes up. msg/s is measured between
              refreshes.
            </p>
          </div>
          {selectedNode && (
            <TopicDetails node={selectedNode} hasRates={data.rates !== null} canOperate={props.canOperate} onClose={() => setSelected(null)} />
          )}
        </div>
      )}
    </div>
  );
}

function TopicDetails(props: { node: TopicNode; hasRates: boolean; canOperate: boolean; onClose: () => void }) {
  const n = props.node;
  const filter = subtreeFilter(n);
  const retained = useAsync(() => api.get<RetainedPage>("/api/v1/retained", { filter, limit: 1 }), [filter]);
  const hasRetained = (retained.data?.items.length ?? 0) > 0;
  return (
    <aside class="card topic-details" aria-labelledby="topic-details-title">
      <div class="topic-details-head">
        <h2 id="topic-details-title" class="mono">
          {showTopic(n.path)}
        </h2>
        <button type="button" class="link" onClick={props.onClose} aria-label="Close topic details">
          ×
        </button>
      </div>
      <Facts
        items={[
          [n.children.length ? "Messages (with subtopics)" : "Messages", `${n.messages.toLocaleString()}${n.error ? ` (overcount ≤ ${n.error})` : ""}`],
          ["Rate", props.hasRates ? `${compact(n.rate)} msg/s` : "measuring…"],
          ["Payload bytes", bytes(n.bytes)],
          ["Last message", n.lastMessageAt ? `${when(n.lastMessageAt)} (${ago(n.lastMessageAt)})` : "–"],
        ]}
      />
      <div class="toolbar">
        {props.canOperate && (
          <button type="button" class="primary" onClick={() => go(href(["topics"], { tab: "live", filter }))}>
            Watch live
          </button>
        )}
        {hasRetained && (
          <button
            type="button"
            onClick={() => go(href(["topics"], n.children.length ? { tab: "retained", filter } : { tab: "retained", filter, topic: n.path }))}
          >
            Retained
          </button>
        )}
      </div>
      <p class="muted small">
        {props.canOperate ? (
          <>
            Watch live and Retained use the filter <code>{filter}</code>.{" "}
          </>
        ) : null}
        {retained.loading ? "Looking for retained messages…" : hasRetained ? "" : retained.error ? `Retained messages: ${retained.error}` : "No retained message here."}
      </p>
    </aside>
  );
}

/** What to do when the broker keeps no topic statistics (the default). */
function StatsOff() {
  return (
    <Notice>
      <div>
        <strong>Topic statistics are off on this broker.</strong> The tree needs per-topic message counts, which the broker keeps only
        when <code>limits.topic_stats_capacity</code> is above 0; it is 0 by default. To turn them on, set
        <pre class="inline-pre">
          [limits]{"\n"}topic_stats_capacity = 1024
        </pre>
        in the configuration file, or start tern with <code>TERN_LIMITS__TOPIC_STATS_CAPACITY=1024</code>, and restart it. The broker
        then counts the 1024 busiest topics (memory stays bounded whatever the number of topics).
        <p class="small">
          What it costs: the counting runs on every publish, about 70 ns of broker CPU per message, which is 6–12% less QoS 0/1
          throughput when a CPU core is saturated (docs/benchmarks.md, admin API section, “nostats”). Fan-out, retained messages
          and latency are not affected.
        </p>
        <p class="small">Retained messages, publishing and the live view work without it.</p>
      </div>
    </Notice>
  );
}
