// Builds the topic tree of the Topics page from flat topic statistics.

/** Per-topic figures (from GET /api/v1/topics). */
export interface TopicFigures {
  topic: string;
  messages: number;
  bytes: number;
  /** RFC 3339 time of the last message, if any. */
  lastMessageAt?: string | null;
  /** Messages per second over the last refresh interval, if known. */
  rate?: number;
  /** Upper bound of the overcount in `messages` (a bounded top-N estimates; 0 or absent: exact). */
  error?: number;
}

/** A node of the tree: one topic level. Totals include every descendant. */
export interface TopicNode {
  /** This level's name (`""` is a valid, empty level). */
  name: string;
  /** The full topic of this node. */
  path: string;
  /** Whether a message was published to exactly this topic. */
  leaf: boolean;
  messages: number;
  bytes: number;
  rate: number;
  /** Upper bound of the overcount in `messages` (summed over the subtree). */
  error: number;
  lastMessageAt: string | null;
  children: TopicNode[];
}

function node(name: string, path: string): TopicNode {
  return { name, path, leaf: false, messages: 0, bytes: 0, rate: 0, error: 0, lastMessageAt: null, children: [] };
}

function later(a: string | null, b: string | null | undefined): string | null {
  if (!b) return a;
  if (!a) return b;
  return Date.parse(b) > Date.parse(a) ? b : a;
}

/**
 * The tree of `topics`: levels split on `/` (MQTT keeps empty levels, so `a//b` has an empty
 * middle level and `/a` an empty first one), totals summed up the tree, children sorted by
 * name. Returns the roots.
 */
export function buildTopicTree(topics: TopicFigures[]): TopicNode[] {
  const root = node("", "");
  // Children by name while building (a linear search per level is quadratic in wide trees).
  const index = new Map<TopicNode, Map<string, TopicNode>>();
  const childOf = (parent: TopicNode, name: string): TopicNode => {
    let byName = index.get(parent);
    if (!byName) index.set(parent, (byName = new Map()));
    let child = byName.get(name);
    if (!child) {
      child = node(name, parent === root ? name : `${parent.path}/${name}`);
      byName.set(name, child);
      parent.children.push(child);
    }
    return child;
  };
  for (const t of topics) {
    let cur = root;
    const chain: TopicNode[] = [];
    for (const level of t.topic.split("/")) {
      cur = childOf(cur, level);
      chain.push(cur);
    }
    cur.leaf = true;
    for (const n of chain) {
      n.messages += t.messages;
      n.bytes += t.bytes;
      n.rate += t.rate ?? 0;
      n.error += t.error ?? 0;
      n.lastMessageAt = later(n.lastMessageAt, t.lastMessageAt);
    }
  }
  const sort = (n: TopicNode): void => {
    n.children.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    n.children.forEach(sort);
  };
  sort(root);
  return root.children;
}

/** The topic filter matching a node and everything under it (`a/b` → `a/b/#`; a leaf alone → `a/b`). */
export function subtreeFilter(n: TopicNode): string {
  return n.children.length ? `${n.path}/#` : n.path;
}

/** Messages per second per topic between two readings taken `seconds` apart. */
export function topicRates(
  before: Map<string, number>,
  after: { topic: string; messages: number }[],
  seconds: number,
): Map<string, number> {
  const rates = new Map<string, number>();
  if (seconds <= 0) return rates;
  for (const t of after) {
    const prev = before.get(t.topic);
    // A topic new to the list (or one whose count restarted) has no rate yet.
    if (prev !== undefined && t.messages >= prev) rates.set(t.topic, (t.messages - prev) / seconds);
  }
  return rates;
}

/** Every node of the tree, depth first, with its depth (for rendering a flat list). */
export function flatten(nodes: TopicNode[], expanded: (path: string) => boolean, depth = 0): { node: TopicNode; depth: number }[] {
  const out: { node: TopicNode; depth: number }[] = [];
  for (const n of nodes) {
    out.push({ node: n, depth });
    if (n.children.length && expanded(n.path)) out.push(...flatten(n.children, expanded, depth + 1));
  }
  return out;
}
