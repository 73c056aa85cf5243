// The nodes view (/ui/nodes, and /ui/nodes/NAME for one): each node's health
// (its own checks: the agent's serfHealth, node maintenance), address, meta,
// and the instances it runs with their status. One long-poll covers all.

import { h, replace, badge, link, nodePath, servicePath, instancePath } from "./dom.js";
import { poll } from "./live.js";

function nodeSection(n) {
  const own = n.Checks.filter((c) => !c.ServiceID);
  return h("section", { class: "node", dataset: { node: n.Node, status: n.Status }, "aria-label": `Node ${n.Node}` },
    h("h2", {}, link(nodePath(n.Node), n.Node), " ", badge(n.Status)),
    h("p", { class: "muted" }, `address ${n.Address || "none"} · datacenter ${n.Datacenter}`,
      Object.keys(n.Meta || {}).length ? ` · meta ${Object.entries(n.Meta).map(([k, v]) => `${k}=${v}`).join(", ")}` : ""),
    own.length ? h("ul", { class: "node-checks" }, own.map((c) => h("li", {}, badge(c.Status), " ", c.Name,
      c.Output ? h("span", { class: "muted" }, `: ${c.Output}`) : "", c.Notes ? h("span", { class: "muted" }, ` (${c.Notes})`) : "")))
      : h("p", { class: "muted" }, "No node-level checks (registered through the catalog API, not by an agent)."),
    n.Services.length ? h("table", { class: "node-services" },
      h("caption", {}, `Instances on ${n.Node}`),
      h("thead", {}, h("tr", {}, ["Instance", "Service", "Port", "Status"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, n.Services.map((s) => h("tr", { class: "node-service", dataset: { id: s.ID } },
        h("th", { scope: "row" }, link(instancePath(s.Service, n.Node, s.ID), s.ID)),
        h("td", {}, link(servicePath(s.Service), s.Service)),
        h("td", { class: "num" }, s.Port),
        h("td", {}, badge(s.Status))))))
      : h("p", { class: "muted" }, "No services on this node."));
}

export function nodesView(main, route, { signal, connection }) {
  const one = route.name;
  document.title = one ? `${one} · nodes · waypost` : "Nodes · waypost";
  const list = h("div", { id: "nodes" }, h("p", { class: "muted" }, "loading…"));
  const filter = h("input", { id: "node-filter", type: "search", placeholder: "name or address", autocomplete: "off" });
  let nodes = null;
  const render = () => {
    if (nodes === null) return;
    const needle = filter.value.trim().toLowerCase();
    const shown = nodes.filter((n) => (one ? n.Node === one
      : !needle || n.Node.toLowerCase().includes(needle) || (n.Address || "").includes(needle)));
    if (shown.length) replace(list, shown.map(nodeSection));
    else replace(list, h("p", { class: "empty", id: "empty" }, one ? `No node named “${one}” is registered. ` : "No node matches. ",
      link("/ui/nodes", "All nodes"), "."));
  };
  filter.addEventListener("input", render);
  replace(main,
    one ? h("nav", { "aria-label": "Breadcrumb", class: "crumbs" }, link("/ui/nodes", "Nodes"), " › ", one) : null,
    h("h1", { tabindex: "-1" }, one || "Nodes"),
    one ? null : h("form", { class: "controls", role: "search", onsubmit: (ev) => ev.preventDefault() },
      h("label", { for: "node-filter" }, "Filter by name or address"), filter),
    list);
  poll("/v1/internal/ui/nodes", {}, (data) => { nodes = data; render(); }, { signal, connection });
}
