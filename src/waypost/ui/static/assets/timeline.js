// The health timeline of the last hour: a strip per instance (its status
// over time) and the list of transitions, newest first. The strip is a
// picture; the list says the same in words, and each strip carries a text
// summary for screen readers.

import { h, badge, clock, instancePath } from "./dom.js";

export const HOUR_MS = 3600 * 1000;
const LIST_LIMIT = 200;

function describe(e) {
  const check = e.CheckName ? `“${e.CheckName}”` : "";
  switch (e.Kind) {
    case "registered": return ["registered, ", badge(e.Status)];
    case "deregistered": return ["deregistered"];
    case "reaped": return ["reaped (removed by DeregisterCriticalServiceAfter)"];
    case "maintenance": return e.To ? ["maintenance on", e.CheckID === "_node_maintenance" ? " (node)" : ""] : ["maintenance off"];
    default:
      if (!e.From) return [`check ${check} added, `, badge(e.To)];
      if (!e.To) return [`check ${check} removed (was ${e.From})`];
      return [`check ${check} `, badge(e.From), " → ", badge(e.To)];
  }
}

export function eventList(events, { withInstance }) {
  if (!events.length) {
    return h("p", { class: "muted", id: "timeline-empty" },
      "No transitions in the last hour. (The agent keeps them in memory: a restarted agent starts a new timeline.)");
  }
  const newest = events.slice(-LIST_LIMIT).reverse();
  return h("ol", { class: "events", id: "events" }, newest.map((e) => {
    const when = new Date(e.Time);
    return h("li", { class: `event ${e.Kind}`, dataset: { kind: e.Kind, instance: e.ServiceID } },
      h("time", { datetime: e.Time, title: when.toString() }, clock(when)),
      withInstance ? h("a", { href: instancePath(e.Service, e.Node, e.ServiceID), class: "ev-instance" }, e.ServiceID) : null,
      h("span", { class: "what" }, describe(e)),
      e.Output ? h("code", { class: "output" }, e.Output) : null);
  }));
}

// Segments of one instance's status over [start, now]. Before the agent began
// recording (`since`) nothing is known (grey); after it, an instance with no
// event kept its current status, one whose first event is its registration
// did not exist before it, and any other first event leaves the time before
// it unknown (the status it moved from is the check's, not the instance's).
function segments(events, current, start, now, since) {
  const out = [];
  const known = Math.min(now, Math.max(start, since));
  if (known > start) out.push({ status: "unknown", from: start, to: known });
  let at = known;
  let status = current;
  if (events.length) status = events[0].Kind === "registered" ? "absent" : "unknown";
  for (const e of events) {
    const t = Math.max(known, Date.parse(e.Time));
    if (t > at) out.push({ status, from: at, to: t });
    at = t;
    status = e.Status || "absent";
  }
  if (now > at) out.push({ status, from: at, to: now });
  return out.filter((s) => s.to > s.from);
}

function minutes(ms) {
  return `${Math.max(1, Math.round(ms / 60000))} min`;
}

function summary(id, segs) {
  const total = {};
  for (const s of segs) total[s.status] = (total[s.status] || 0) + (s.to - s.from);
  const parts = Object.entries(total).filter(([k]) => k !== "absent")
    .map(([k, ms]) => `${k === "unknown" ? "not recorded" : k} ${minutes(ms)}`);
  return `${id}, last hour: ${parts.join(", ") || "not registered"}`;
}

// instances: [{id, node, status}] currently registered; events: oldest first;
// since: when the agent began recording (ms since the epoch).
export function strips(instances, events, since, now = Date.now()) {
  const start = now - HOUR_MS;
  const keys = new Map();
  for (const i of instances) keys.set(`${i.node}/${i.id}`, { ...i, events: [] });
  for (const e of events) {
    const key = `${e.Node}/${e.ServiceID}`;
    if (!keys.has(key)) keys.set(key, { id: e.ServiceID, node: e.Node, status: "absent", events: [] });
    keys.get(key).events.push(e);
  }
  const rows = [...keys.values()].map((i) => {
    const segs = segments(i.events, i.status, start, now, since);
    return h("div", { class: "strip-row" },
      h("span", { class: "strip-label" }, i.id),
      h("div", { class: "strip", role: "img", "aria-label": summary(i.id, segs), dataset: { instance: i.id } },
        segs.map((s) => h("span", {
          class: `seg ${s.status}`,
          title: `${s.status} ${clock(new Date(s.from))}–${clock(new Date(s.to))}`,
          style: { left: `${((s.from - start) / HOUR_MS) * 100}%`, width: `${((s.to - s.from) / HOUR_MS) * 100}%` },
        }))));
  });
  return h("div", { class: "strips" },
    rows,
    h("div", { class: "strip-axis", "aria-hidden": "true" },
      h("span", {}, clock(new Date(start))), h("span", {}, "30 min ago"), h("span", {}, "now")));
}
