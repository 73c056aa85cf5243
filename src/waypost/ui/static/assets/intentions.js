// The mesh's intentions: the list (/ui/intentions), a matrix of which service
// may call which, and on each service's page who may call it and whom it may
// call. Every decision comes from the agent (/v1/internal/ui/intentions asks
// the same function the proxies are configured from), so the page never
// re-derives Consul's precedence rules: what it draws is what is enforced.
// A decision is always written (✓ allow / ✕ deny, and in words for screen
// readers), never shown by colour alone. Changing intentions: intention_edit.js.

import { h, replace, link, servicePath } from "./dom.js";
import { poll } from "./live.js";
import { deleteButton, intentionForm } from "./intention_edit.js";

const ENDPOINT = "/v1/internal/ui/intentions";

function serviceLink(name) {
  return name === "*" ? h("span", { class: "wildcard" }, "* (any service)") : link(servicePath(name), name);
}

function actionWord(allowed) {
  return h("span", { class: `action ${allowed ? "allow" : "deny"}` }, allowed ? "allow" : "deny");
}

export function defaultPolicy(data) {
  if (data.DefaultAllow === null) return "never applies: the intention * → * decides every pair";
  return data.DefaultAllow ? "allow" : "deny";
}

function why(data, cell) {
  const [, , , by] = cell;
  if (by < 0) return "the default policy";
  const i = data.Intentions[by];
  return `the intention ${i.SourceName} → ${i.DestinationName}`;
}

function pairs(obj) {
  const entries = Object.entries(obj || {});
  return entries.length ? entries.map(([k, v]) => h("code", { class: "meta" }, `${k}=${v}`)) : "";
}

function listTable(data, shown, report) {
  return h("table", { class: "intentions", id: "intentions-table" },
    h("caption", { class: "visually-hidden" }, "Intentions, most precise first"),
    h("thead", {}, h("tr", {}, ["Source", "Destination", "Action", "Precedence", "Description", "Meta", "Change"]
      .map((c) => h("th", { scope: "col", class: c === "Precedence" ? "num" : "" }, c)))),
    h("tbody", {}, shown.map((i) => h("tr", { class: "intention", dataset: { id: i.ID, source: i.SourceName, destination: i.DestinationName } },
      h("td", {}, serviceLink(i.SourceName)),
      h("td", {}, serviceLink(i.DestinationName)),
      h("td", {}, actionWord(i.Action === "allow")),
      h("td", { class: "num" }, i.Precedence),
      h("td", {}, i.Description || h("span", { class: "muted" }, "none")),
      h("td", {}, pairs(i.Meta)),
      h("td", {}, deleteButton(i, report))))));
}

// The matrix: a row per caller, a column per service called. Cells decided by
// an intention are drawn solid; those the default decided, plain.
function matrix(data) {
  if (data.TooMany) {
    return h("p", { class: "empty", id: "matrix-too-many" },
      `${data.Services.length} services are too many to draw as a matrix; each service's page lists who may call it and whom it may call.`);
  }
  if (data.Services.length < 2) {
    return h("p", { class: "muted", id: "matrix-empty" }, "The matrix needs at least two services.");
  }
  const at = new Map(data.Cells.map((c) => [`${c[0]}/${c[1]}`, c]));
  const names = data.Services;
  const cell = (s, d) => {
    if (s === d) return h("td", { class: "self", "aria-label": "itself" }, h("span", { "aria-hidden": "true" }, "·"));
    const c = at.get(`${s}/${d}`);
    if (!c) return h("td", { class: "hidden", title: "not visible with this token" }, "?");
    const allowed = c[2] === 1;
    const text = `${names[s]} → ${names[d]}: ${allowed ? "allowed" : "denied"} by ${why(data, c)}`;
    return h("td", { class: `decision ${allowed ? "allow" : "deny"} ${c[3] < 0 ? "by-default" : "by-intention"}`,
      title: text, dataset: { source: names[s], destination: names[d] } },
      h("span", { "aria-hidden": "true" }, allowed ? "✓" : "✕"),
      h("span", { class: "visually-hidden" }, text));
  };
  return h("div", { class: "matrix-scroll", tabindex: "0", role: "region", "aria-labelledby": "matrix-h" },
    h("table", { class: "matrix", id: "matrix" },
      h("caption", { class: "visually-hidden" }, "A row is the caller (source), a column the service it calls (destination)"),
      h("thead", {}, h("tr", {},
        h("th", { scope: "col", class: "corner" }, "caller ↓ calls →"),
        names.map((n) => h("th", { scope: "col", class: "dest" }, h("span", {}, link(servicePath(n), n)))))),
      h("tbody", {}, names.map((n, s) => h("tr", {},
        h("th", { scope: "row" }, link(servicePath(n), n)),
        names.map((_, d) => cell(s, d)))))));
}

function legend() {
  return h("p", { class: "legend muted" },
    h("span", { class: "decision allow by-intention", "aria-hidden": "true" }, "✓"), " allowed by an intention · ",
    h("span", { class: "decision deny by-intention", "aria-hidden": "true" }, "✕"), " denied by an intention · ",
    h("span", { class: "decision allow by-default", "aria-hidden": "true" }, "✓"), " / ",
    h("span", { class: "decision deny by-default", "aria-hidden": "true" }, "✕"), " the default policy decided");
}

function readFilter() {
  return new URLSearchParams(location.search).get("filter") || "";
}

export function intentionsView(main, _route, { signal, connection }) {
  document.title = "Intentions · waypost";
  let data = null;
  const filter = h("input", { id: "intention-filter", type: "search", value: readFilter(), placeholder: "service name", autocomplete: "off" });
  const policy = h("p", { id: "default-policy" }, "loading…");
  const count = h("p", { id: "intention-count", class: "muted", "aria-live": "polite" });
  const list = h("div", { id: "intentions" });
  const picture = h("div", { id: "matrix-holder" });
  const editor = intentionForm([]);
  const listHeading = h("h2", { id: "list-h", tabindex: "-1" }, "Intentions, most precise first");
  const changed = h("p", { id: "intention-changed", role: "status" });
  const report = (text, failed) => {
    changed.textContent = text;
    changed.className = failed ? "error" : "muted";
    listHeading.focus(); // the row (and its button) is about to go
  };
  const render = () => {
    const needle = filter.value.trim().toLowerCase();
    history.replaceState(null, "", `/ui/intentions${needle ? `?${new URLSearchParams({ filter: filter.value.trim() })}` : ""}`);
    if (data === null) return;
    policy.replaceChildren("When no intention matches a pair: ", h("strong", {}, defaultPolicy(data)), ".");
    editor.setNames(data.Services);
    const shown = data.Intentions.filter((i) => !needle
      || i.SourceName.toLowerCase().includes(needle) || i.DestinationName.toLowerCase().includes(needle));
    count.textContent = `${shown.length} of ${data.Intentions.length} intentions`;
    if (!data.Intentions.length) {
      replace(list, h("div", { class: "empty", id: "empty" },
        h("p", {}, "No intentions: every service may call every other as the default policy says. Create one below, or with"),
        h("pre", {}, h("code", {}, `curl -X PUT '${location.origin}/v1/connect/intentions/exact?source=web&destination=db' -d '{"Action": "deny"}'`))));
    } else if (!shown.length) replace(list, h("p", { class: "empty", id: "empty" }, `No intention names “${filter.value.trim()}”.`));
    else replace(list, listTable(data, shown, report));
    replace(picture, legend(), matrix(data));
  };
  filter.addEventListener("input", render);
  replace(main,
    h("h1", { tabindex: "-1" }, "Intentions"),
    policy,
    h("section", { "aria-labelledby": "list-h" },
      listHeading,
      h("form", { class: "controls", role: "search", onsubmit: (ev) => ev.preventDefault() },
        h("label", { for: "intention-filter" }, "Filter by source or destination"), filter),
      count, changed, list),
    h("section", { "aria-labelledby": "matrix-h" },
      h("h2", { id: "matrix-h" }, "Who may call whom"), picture),
    h("section", { "aria-labelledby": "new-h" },
      h("h2", { id: "new-h" }, "New intention"),
      h("p", { class: "muted" }, "Saving a pair that has an intention replaces it. With ACLs on, this needs intentions:write on the destination."),
      editor.form));
  render();
  poll(ENDPOINT, {}, (d) => { data = d; render(); }, { signal, connection });
}

// "Who may call NAME" (or "whom NAME may call"): the services an intention
// decides, each with its action and the intention; the rest in one line,
// decided by the default policy.
function side(data, name, cells, other, heading, id) {
  const byIntention = cells.filter((c) => c[3] >= 0);
  const byDefault = cells.filter((c) => c[3] < 0);
  const items = byIntention.map((c) => h("li", { class: "peer", dataset: { peer: data.Services[other(c)], action: c[2] ? "allow" : "deny" } },
    actionWord(c[2] === 1), " ", link(servicePath(data.Services[other(c)]), data.Services[other(c)]),
    h("span", { class: "muted" }, ` by ${why(data, c)}`)));
  const rest = byDefault.length ? h("li", { class: "peer default", dataset: { action: data.DefaultAllow ? "allow" : "deny" } },
    actionWord(data.DefaultAllow), " ",
    h("details", {}, h("summary", {}, `${byDefault.length} other service${byDefault.length === 1 ? "" : "s"}, by the default policy`),
      h("p", {}, byDefault.map((c, k) => [k ? ", " : "", link(servicePath(data.Services[other(c)]), data.Services[other(c)])])))) : null;
  return h("div", { class: "mesh-side", id },
    h("h3", {}, heading),
    items.length || rest ? h("ul", { class: "peers" }, items, rest) : h("p", { class: "muted" }, "No other service is known."));
}

export function serviceMesh(name, ctx) {
  const holder = h("div", { id: "mesh" }, h("p", { class: "muted" }, "loading…"));
  poll(ENDPOINT, { service: name }, (data) => {
    const me = data.Services.indexOf(name);
    if (me < 0) { // left out by ACLs
      replace(holder, h("p", { class: "muted" }, "This token may not read this service's intentions."));
      return;
    }
    const callers = data.Cells.filter((c) => c[1] === me);
    const callees = data.Cells.filter((c) => c[0] === me);
    replace(holder,
      h("p", { class: "muted" }, `With no intention for a pair, the default policy decides: ${defaultPolicy(data)}. `,
        link("/ui/intentions", "All intentions"), "."),
      h("div", { class: "mesh-sides" },
        side(data, name, callers, (c) => c[0], `Who may call ${name}`, "callers"),
        side(data, name, callees, (c) => c[1], `Whom ${name} may call`, "callees")));
  }, ctx);
  return holder;
}
