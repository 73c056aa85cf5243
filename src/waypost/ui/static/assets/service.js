// A service's page (/ui/services/NAME) and an instance's (/ui/services/NAME/instances/NODE/ID):
// every instance with its address, port, node, tags, meta, weights and
// maintenance, every check by name, type, status, output and notes, and the
// health timeline of the last hour. Two long-polls: the service's health and
// its timeline; a service's page also shows who may call it in the mesh
// and whom it may call (a third long-poll, intentions.js).

import { h, replace, badge, link, servicePath, instancePath, nodePath } from "./dom.js";
import { poll } from "./live.js";
import { eventList, strips } from "./timeline.js";
import { serviceMesh } from "./intentions.js";

const RANK = { passing: 0, warning: 1, critical: 2 };

export function instanceStatus(checks) {
  if (checks.some((c) => c.Type === "maintenance")) return "maintenance";
  return checks.reduce((worst, c) => ((RANK[c.Status] ?? 2) > (RANK[worst] ?? 2) ? c.Status : worst), "passing");
}

function pairs(obj) {
  const entries = Object.entries(obj || {});
  if (!entries.length) return h("span", { class: "muted" }, "none");
  return h("ul", { class: "pairs" }, entries.map(([k, v]) => h("li", {}, h("code", {}, k), " = ", h("code", {}, v))));
}

function tags(list) {
  return list.length ? list.map((t) => h("span", { class: "tag" }, t)) : h("span", { class: "muted" }, "none");
}

function field(name, ...value) {
  return [h("dt", {}, name), h("dd", {}, ...value)];
}

function checksTable(entry) {
  const s = entry.Service;
  return h("table", { class: "checks" },
    h("caption", {}, `Checks of ${s.ID}`),
    h("thead", {}, h("tr", {}, ["Name", "Type", "Status", "Output", "Notes"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", {}, entry.Checks.map((c) => h("tr", { class: "check", dataset: { check: c.CheckID, status: c.Status } },
      h("th", { scope: "row" }, c.Name, c.ServiceID ? "" : h("span", { class: "muted" }, " (node)")),
      h("td", {}, c.Type || (c.CheckID === "serfHealth" ? "agent" : "")),
      h("td", {}, badge(c.Status)),
      h("td", {}, c.Output ? h("pre", { class: "output" }, c.Output) : h("span", { class: "muted" }, "none")),
      h("td", {}, c.Notes || "")))));
}

function instanceCard(entry, headingLevel) {
  const s = entry.Service;
  const status = instanceStatus(entry.Checks);
  const maintenance = entry.Checks.filter((c) => c.Type === "maintenance");
  const address = s.Address || entry.Node.Address || "";
  return h("section", { class: "instance", dataset: { id: s.ID, node: entry.Node.Node, status }, "aria-label": `Instance ${s.ID}` },
    h(headingLevel, {}, link(instancePath(s.Service, entry.Node.Node, s.ID), s.ID), " ", badge(status)),
    h("dl", { class: "fields" },
      field("Address", h("code", { class: "address" }, `${address}:${s.Port}`)),
      field("Node", link(nodePath(entry.Node.Node), entry.Node.Node)),
      field("Tags", tags(s.Tags)),
      field("Meta", pairs(s.Meta)),
      field("Weights", `passing ${s.Weights.Passing}, warning ${s.Weights.Warning}`),
      maintenance.length ? field("Maintenance", maintenance.map((c) => h("span", { class: "maintenance-reason" },
        c.CheckID === "_node_maintenance" ? "node: " : "", c.Notes || "no reason given"))) : null),
    checksTable(entry));
}

function counts(entries) {
  const by = {};
  for (const e of entries) {
    const st = instanceStatus(e.Checks);
    by[st] = (by[st] || 0) + 1;
  }
  const parts = ["passing", "warning", "critical", "maintenance"].filter((s) => by[s]).map((s) => `${by[s]} ${s}`);
  return `${entries.length} instance${entries.length === 1 ? "" : "s"}${parts.length ? `: ${parts.join(", ")}` : ""}`;
}

function layout(main, { title, crumbs, heading = "Instances", mesh = null }) {
  const parts = {
    summary: h("p", { id: "summary", class: "muted" }, "loading…"),
    instances: h("div", { id: "instances" }),
    timeline: h("div", { id: "timeline" }, h("p", { class: "muted" }, "loading…")),
  };
  replace(main,
    h("nav", { "aria-label": "Breadcrumb", class: "crumbs" }, crumbs),
    h("h1", { tabindex: "-1" }, title),
    parts.summary,
    h("section", { "aria-labelledby": "instances-h" }, h("h2", { id: "instances-h" }, heading), parts.instances),
    mesh ? h("section", { "aria-labelledby": "mesh-h" }, h("h2", { id: "mesh-h" }, "Mesh: who may call whom"), mesh) : null,
    h("section", { "aria-labelledby": "timeline-h" },
      h("h2", { id: "timeline-h" }, "Health timeline, last hour"), parts.timeline));
  return parts;
}

// Health and timeline polls for one service, drawn together whenever either moves.
function follow(name, timelineParams, ctx, draw) {
  const data = { health: null, events: null, since: 0 };
  const redraw = () => data.health !== null && draw(data.health, data.events || [], data.since);
  const path = encodeURIComponent(name);
  poll(`/v1/health/service/${path}`, {}, (d) => { data.health = d; redraw(); }, ctx);
  poll(`/v1/internal/ui/timeline/${path}`, timelineParams, (d, headers) => {
    data.events = d;
    data.since = Date.parse(headers.get("X-Waypost-Timeline-Start") || "") || 0;
    redraw();
  }, ctx);
  // The strips' "now" moves even when nothing happens.
  const timer = setInterval(redraw, 30000);
  ctx.signal.addEventListener("abort", () => clearInterval(timer), { once: true });
}

const asInstance = (e) => ({ id: e.Service.ID, node: e.Node.Node, status: instanceStatus(e.Checks) });

export function serviceView(main, route, ctx) {
  const name = route.name;
  document.title = `${name} · services · waypost`;
  const mesh = serviceMesh(name, ctx);
  const parts = layout(main, { title: name, crumbs: [link("/ui/services", "Services"), " › ", name], mesh });
  follow(name, {}, ctx, (health, events, since) => {
    parts.summary.textContent = health.length ? counts(health) : "No instance of this service is registered now.";
    replace(parts.instances, health.length ? health.map((e) => instanceCard(e, "h3"))
      : h("p", { class: "empty" }, `No instance of “${name}” is registered. If it was deregistered or reaped, the timeline below says when. `,
        link("/ui/services", "Back to the services"), "."));
    replace(parts.timeline, strips(health.map(asInstance), events, since), eventList(events, { withInstance: true }));
  });
}

export function instanceView(main, route, ctx) {
  const { name, node, id } = route;
  document.title = `${id} · ${name} · waypost`;
  const crumbs = [link("/ui/services", "Services"), " › ", link(servicePath(name), name), " › ", id];
  const parts = layout(main, { title: id, crumbs, heading: "Instance" });
  follow(name, { instance: id, node }, ctx, (health, events, since) => {
    const mine = health.filter((e) => e.Service.ID === id && e.Node.Node === node);
    parts.summary.textContent = mine.length ? `Instance of ${name} on node ${node}` : `Not registered now (on node ${node})`;
    replace(parts.instances, mine.length ? mine.map((e) => instanceCard(e, "h3"))
      : h("p", { class: "empty" }, `Instance “${id}” of ${name} is not registered on node ${node}. The timeline says what happened to it.`));
    replace(parts.timeline, strips(mine.map(asInstance), events, since), eventList(events, { withInstance: false }));
  });
}
