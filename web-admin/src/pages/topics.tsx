// Topics: the topic tree, retained messages, publishing a test message and the live view, as
// tabs whose state is in the URL (`#/topics?tab=live&filter=a/%23`).

import { useRef } from "preact/hooks";
import { useAuth } from "../auth";
import { Notice, Page, Tabs } from "../components";
import { useLocation } from "../hooks";
import { go, href } from "../lib/router";
import { LiveTab } from "./topics/live";
import { PublishTab } from "./topics/publish";
import { RetainedTab } from "./topics/retained";
import { TreeTab } from "./topics/tree";

type Tab = "tree" | "retained" | "publish" | "live";

export function Topics() {
  const loc = useLocation();
  const auth = useAuth();
  const q = loc.query;
  const tabs: [Tab, string][] = [["tree", "Topic tree"], ["retained", "Retained"]];
  if (auth.canOperate) tabs.push(["publish", "Publish"]);
  tabs.push(["live", "Live"]);
  const asked = q.get("tab");
  const tab: Tab = tabs.find(([t]) => t === asked)?.[0] ?? "tree";

  // Publish and Live stay mounted once opened (hidden when another tab shows): the form keeps
  // what was typed, and the live stream keeps running while you publish or browse the tree.
  const visited = useRef(new Set<Tab>());
  visited.current.add(tab);

  const label = (t: Tab) => tabs.find(([x]) => x === t)?.[1] ?? t;
  return (
    <Page title="Topics">
      <Tabs tabs={tabs} value={tab} onChange={(t) => go(href(["topics"], { tab: t }))} label="Topic views" />
      {tab === "tree" && (
        <div role="tabpanel" aria-label={label("tree")}>
          <TreeTab canOperate={auth.canOperate} />
        </div>
      )}
      {tab === "retained" && (
        <div role="tabpanel" aria-label={label("retained")}>
          <RetainedTab filter={q.get("filter") || "#"} topic={q.get("topic")} canOperate={auth.canOperate} />
        </div>
      )}
      {auth.canOperate && visited.current.has("publish") && (
        <div role="tabpanel" aria-label={label("publish")} hidden={tab !== "publish"}>
          <PublishTab />
        </div>
      )}
      {visited.current.has("live") && (
        <div role="tabpanel" aria-label={label("live")} hidden={tab !== "live"}>
          {auth.canOperate ? (
            <LiveTab urlFilter={tab === "live" ? q.get("filter") : null} urlSys={tab === "live" && q.get("sys") === "1"} />
          ) : (
            <Notice>
              <div>
                <strong>The live view needs the operator role.</strong> It shows the payloads of messages as they flow through the
                broker, which the admin API allows operators and admins only. You are signed in as a viewer: the Topic tree and
                Retained tabs show what you may see. Ask an admin for the operator role to watch live.
              </div>
            </Notice>
          )}
        </div>
      )}
    </Page>
  );
}
