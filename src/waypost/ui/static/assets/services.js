// The services list: health counts, tags, a filter box, a status filter,
// sortable columns, and an empty state that says what to do. The filter,
// status and sort live in the URL's query, so a link or a reload keeps them.

import { h, replace, badge, servicePath } from "./dom.js";
import { poll } from "./live.js";

const STATUSES = ["critical", "warning", "maintenance", "passing"];
const COLUMNS = [
  { key: "name", label: "Service", value: (s) => s.Name.toLowerCase() },
  { key: "status", label: "Status", value: (s) => STATUSES.indexOf(serviceStatus(s)) },
  { key: "instances", label: "Instances", value: (s) => s.InstanceCount },
  { key: "passing", label: "Passing", value: (s) => s.InstancesPassing },
  { key: "warning", label: "Warning", value: (s) => s.InstancesWarning },
  { key: "critical", label: "Critical", value: (s) => s.InstancesCritical },
  { key: "maintenance", label: "Maintenance", value: (s) => s.InstancesMaintenance },
  { key: "tags", label: "Tags", value: null },
];

// One word for a service: its worst instance (critical, then warning, then maintenance).
export function serviceStatus(s) {
  if (s.InstancesCritical > 0) return "critical";
  if (s.InstancesWarning > 0) return "warning";
  if (s.InstancesMaintenance > 0) return "maintenance";
  return "passing";
}

function readQuery() {
  const q = new URLSearchParams(location.search);
  const sort = COLUMNS.some((c) => c.key === q.get("sort") && c.value) ? q.get("sort") : "name";
  return { filter: q.get("filter") || "", status: q.get("status") || "", sort, desc: q.get("order") === "desc" };
}

function writeQuery(view) {
  const q = new URLSearchParams();
  if (view.filter) q.set("filter", view.filter);
  if (view.status) q.set("status", view.status);
  if (view.sort !== "name") q.set("sort", view.sort);
  if (view.desc) q.set("order", "desc");
  history.replaceState(null, "", `/ui/services${q.size ? `?${q}` : ""}`);
}

function matches(s, view) {
  const needle = view.filter.trim().toLowerCase();
  if (view.status && serviceStatus(s) !== view.status) return false;
  if (!needle) return true;
  return s.Name.toLowerCase().includes(needle) || s.Tags.some((t) => t.toLowerCase().includes(needle));
}

function sorted(services, view) {
  const column = COLUMNS.find((c) => c.key === view.sort);
  const out = [...services].sort((a, b) => {
    const x = column.value(a);
    const y = column.value(b);
    return (x < y ? -1 : x > y ? 1 : 0) || a.Name.localeCompare(b.Name);
  });
  return view.desc ? out.reverse() : out;
}

function row(s) {
  const status = serviceStatus(s);
  return h("tr", { class: "service", dataset: { name: s.Name, status } },
    h("th", { scope: "row" }, h("a", { href: servicePath(s.Name) }, s.Name)),
    h("td", {}, badge(status)),
    h("td", { class: "num" }, s.InstanceCount),
    h("td", { class: "num passing" }, s.InstancesPassing),
    h("td", { class: "num warning" }, s.InstancesWarning),
    h("td", { class: "num critical" }, s.InstancesCritical),
    h("td", { class: "num maintenance" }, s.InstancesMaintenance),
    h("td", { class: "tags" }, s.Tags.map((t) => h("span", { class: "tag" }, t))));
}

function emptyCatalog() {
  return h("div", { class: "empty", id: "empty" },
    h("h2", {}, "No services registered yet"),
    h("p", {}, "(Besides ", h("code", {}, "consul"), ", the agents' own service, which Consul clients expect.)"),
    h("p", {}, "Register an instance with this agent and it shows up here at once, with its health:"),
    h("pre", {}, h("code", {}, `curl -X PUT ${location.origin}/v1/agent/service/register -d '{
  "Name": "web", "ID": "web-1", "Port": 8080,
  "Check": {"HTTP": "http://127.0.0.1:8080/health", "Interval": "10s"}}'`)),
    h("p", {}, "Any Consul client works the same way (py-consul, the Node.js consul package), ",
      "or waypost's own client library: see the README's quickstart."));
}

function noMatch(view, clear) {
  const what = [view.filter && `“${view.filter}”`, view.status && `status ${view.status}`].filter(Boolean).join(" and ");
  return h("div", { class: "empty", id: "empty" },
    h("p", {}, `No service matches ${what}. `,
      h("button", { type: "button", onclick: clear }, "Clear the filters")));
}

export function servicesView(main, _route, { signal, connection }) {
  document.title = "Services · waypost";
  const view = readQuery();
  let services = null;
  const filter = h("input", { id: "filter", type: "search", value: view.filter, placeholder: "name or tag", autocomplete: "off" });
  const status = h("select", { id: "status-filter" },
    h("option", { value: "" }, "any"),
    STATUSES.map((s) => h("option", { value: s, selected: view.status === s }, s)));
  const count = h("p", { id: "count", class: "muted", "aria-live": "polite" });
  const head = h("tr");
  const body = h("tbody", { id: "services" });
  const table = h("table", { class: "services" }, h("caption", { class: "visually-hidden" }, "Services and the health of their instances"), h("thead", {}, head), body);
  const holder = h("div", { id: "services-body" });

  const render = () => {
    writeQuery(view);
    renderHead(head, view, render);
    if (services === null) return;
    const shown = sorted(services.filter((s) => matches(s, view)), view);
    count.textContent = `${shown.length} of ${services.length} services`;
    replace(body, shown.map(row));
    // Every agent registers its own `consul` service (as Consul servers do): a
    // catalog with nothing else is empty to the operator, and says what to do.
    if (services.every((s) => s.Name === "consul")) replace(holder, emptyCatalog(), services.length ? table : null);
    else if (!shown.length) replace(holder, noMatch(view, () => {
      view.filter = ""; view.status = ""; filter.value = ""; status.value = ""; render(); filter.focus();
    }));
    else replace(holder, table);
  };
  filter.addEventListener("input", () => { view.filter = filter.value; render(); });
  status.addEventListener("change", () => { view.status = status.value; render(); });

  replace(main,
    h("h1", { tabindex: "-1" }, "Services"),
    h("form", { class: "controls", role: "search", onsubmit: (ev) => ev.preventDefault() },
      h("label", { for: "filter" }, "Filter by name or tag"), filter,
      h("label", { for: "status-filter" }, "Status"), status),
    count, holder);
  render();
  poll("/v1/internal/ui/services", {}, (data) => { services = data; render(); }, { signal, connection });
}

function renderHead(head, view, render) {
  replace(head, COLUMNS.map((c) => {
    if (!c.value) return h("th", { scope: "col" }, c.label);
    const active = view.sort === c.key;
    const sort = active ? (view.desc ? "descending" : "ascending") : "none";
    return h("th", { scope: "col", "aria-sort": sort, class: ["name", "status"].includes(c.key) ? "" : "num" },
      h("button", { type: "button", class: "sort", dataset: { sort: c.key },
        onclick: () => {
          view.desc = active ? !view.desc : false;
          view.sort = c.key;
          render();
          head.querySelector(`button[data-sort="${c.key}"]`).focus();
        } },
        c.label, h("span", { "aria-hidden": "true", class: "arrow" }, active ? (view.desc ? " ▼" : " ▲") : "")));
  }));
}
