// The page: a router over /ui/... paths, the header, and one view at a time.
//
// Every view is a function mount(main, route, ctx) that starts its own
// blocking queries on ctx.signal; leaving the view aborts them, so the page
// never holds more than two long-polls (a browser keeps six connections to
// a host). Links are ordinary <a href> elements: they work with the keyboard,
// open in a new tab, and the router only takes over plain same-page clicks.
//
// With ACLs on, a 403 shows the token form (live.js keeps the token for the
// tab and resumes every poll once it is given). The mesh's intentions are a
// section of their own (/ui/intentions) and a part of each service's page.

import { Connection, requestHeaders, setToken, tokens } from "./live.js";
import { servicesView } from "./services.js";
import { serviceView, instanceView } from "./service.js";
import { nodesView } from "./nodes.js";
import { intentionsView } from "./intentions.js";
import { h, replace } from "./dom.js";

const main = document.getElementById("view");
const connection = new Connection(document.getElementById("connection"), document.getElementById("updated"));
let current = null;

// Path segments after /ui/, each decoded once.
function segments() {
  const rest = location.pathname.replace(/^\/ui\/?/, "");
  return rest.split("/").filter(Boolean).map((s) => decodeURIComponent(s));
}

function route() {
  const [section = "services", name, sub, node, id] = segments();
  if (section === "services" && name === undefined) return { section, view: servicesView };
  if (section === "services" && sub === undefined) return { section, view: serviceView, name };
  if (section === "services" && sub === "instances" && id !== undefined) {
    return { section, view: instanceView, name, node, id };
  }
  if (section === "nodes") return { section, view: nodesView, name };
  if (section === "intentions" && name === undefined) return { section, view: intentionsView };
  return { section: "", view: notFound };
}

function notFound(el) {
  replace(el, h("h1", {}, "Not found"),
    h("p", {}, "The UI has no page at this address. ", h("a", { href: "/ui/services" }, "Go to the services"), "."));
}

function show(focus) {
  if (current) current.abort();
  current = new AbortController();
  const r = route();
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.section === r.section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  main.replaceChildren();
  r.view(main, r, { signal: current.signal, connection, navigate });
  // After a navigation, a screen reader or keyboard user starts at the new view.
  if (focus) main.querySelector("h1")?.focus({ preventScroll: false });
}

export function navigate(path, { replaceState = false } = {}) {
  if (replaceState) history.replaceState(null, "", path);
  else history.pushState(null, "", path);
  show(true);
}

document.addEventListener("click", (ev) => {
  const a = ev.target.closest("a[href]");
  if (!a || ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith("/ui/") || a.target) return;
  ev.preventDefault();
  if (url.pathname + url.search !== location.pathname + location.search) navigate(url.pathname + url.search);
});
window.addEventListener("popstate", () => show(true));

// The token form: shown when the agent refuses the page's token (or its lack).
const tokenForm = document.getElementById("token");
tokens.addEventListener("needed", (ev) => {
  document.getElementById("token-why").textContent =
    `The agent needs an ACL token to show this: ${ev.detail}`;
  if (tokenForm.hidden) {
    tokenForm.hidden = false;
    document.getElementById("token-secret").focus();
  }
});
tokenForm.addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = document.getElementById("token-secret");
  setToken(input.value.trim());
  input.value = "";
  tokenForm.hidden = true;
  showAgent();
  show(false); // the view's long-polls start again, with the token
});

function showAgent() {
  fetch("/v1/agent/self", { headers: requestHeaders() })
    .then((r) => (r.ok ? r.json() : null))
    .then((self) => {
      if (self) document.getElementById("agent").textContent = `node ${self.Config.NodeName} · ${self.Config.Datacenter}`;
    })
    .catch(() => {}); // the views' own polls report an unreachable agent
}

showAgent();
show(false);
