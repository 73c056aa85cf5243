// Creating, replacing and deleting intentions from the intentions page, as
// Consul's UI does. Every change goes through Consul's own endpoint
// (PUT or DELETE /v1/connect/intentions/exact?source=&destination=), with the
// page's token; the list and the matrix then follow through their blocking
// query like any other change. With ACLs on, a 403 shows the token form (the
// agent's message says which permission is missing: intentions:write on the
// destination) and the error stays next to the form until the next try.

import { h } from "./dom.js";
import { requestHeaders, tokens } from "./live.js";

async function write(method, source, destination, body) {
  const query = new URLSearchParams({ source, destination });
  const headers = { ...requestHeaders(), "Content-Type": "application/json" };
  const r = await fetch(`/v1/connect/intentions/exact?${query}`,
    { method, headers, body: body ? JSON.stringify(body) : undefined });
  if (r.ok) return null;
  const text = (await r.text()).trim().slice(0, 300);
  if (r.status === 403) tokens.dispatchEvent(new CustomEvent("needed", { detail: text }));
  return `The agent refused (HTTP ${r.status}): ${text}`;
}

function nameInput(id, label, listId) {
  return [h("label", { for: id }, label),
    h("input", { id, name: id, required: true, autocomplete: "off", spellcheck: "false", list: listId, placeholder: "service or *" })];
}

// What was typed and not saved yet: giving a token rebuilds the view (every
// poll restarts), and the operator should not have to type it all again.
let draft = {};
const FIELDS = ["new-source", "new-destination", "new-action", "new-description"];

// The form: source, destination, action, description. Saving a pair that has
// an intention already replaces it (Consul's PUT .../exact does the same).
export function intentionForm(names) {
  const list = h("datalist", { id: "service-names" }, ["*", ...names].map((n) => h("option", { value: n })));
  const status = h("p", { id: "intention-form-status", role: "status" });
  const form = h("form", { id: "intention-form", class: "controls edit" },
    nameInput("new-source", "Source", "service-names"),
    nameInput("new-destination", "Destination", "service-names"),
    h("label", { for: "new-action" }, "Action"),
    h("select", { id: "new-action" }, h("option", { value: "allow" }, "allow"), h("option", { value: "deny" }, "deny")),
    h("label", { for: "new-description" }, "Description"),
    h("input", { id: "new-description", autocomplete: "off" }),
    h("button", { type: "submit" }, "Save intention"),
    list, status);
  for (const id of FIELDS) {
    const el = form.querySelector(`#${id}`);
    if (draft[id] !== undefined) el.value = draft[id];
    el.addEventListener("input", () => { draft[id] = el.value; });
  }
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const value = (id) => form.querySelector(`#${id}`).value.trim();
    const [source, destination] = [value("new-source"), value("new-destination")];
    status.textContent = "Saving…";
    const failed = await write("PUT", source, destination,
      { Action: value("new-action"), Description: value("new-description") });
    status.textContent = failed || `Saved: ${source} → ${destination}, ${value("new-action")}.`;
    status.className = failed ? "error" : "muted";
    if (!failed) { form.reset(); draft = {}; }
  });
  return { form, setNames: (next) => list.replaceChildren(...["*", ...next].map((n) => h("option", { value: n }))) };
}

// A row's delete button: the first press asks, the second deletes (no modal
// dialog; the focus stays on the button, and Escape or leaving it cancels).
export function deleteButton(i, report) {
  const label = `Delete the intention ${i.SourceName} → ${i.DestinationName}`;
  const button = h("button", { type: "button", class: "delete", "aria-label": label }, "Delete");
  const reset = () => { delete button.dataset.armed; button.textContent = "Delete"; button.setAttribute("aria-label", label); };
  button.addEventListener("click", async () => {
    if (!button.dataset.armed) {
      button.dataset.armed = "1";
      button.textContent = "Confirm delete";
      button.setAttribute("aria-label", `Confirm: ${label}`);
      return;
    }
    button.disabled = true;
    const failed = await write("DELETE", i.SourceName, i.DestinationName);
    button.disabled = false;
    reset();
    report(failed || `Deleted: ${i.SourceName} → ${i.DestinationName}.`, !!failed);
  });
  button.addEventListener("blur", reset);
  button.addEventListener("keydown", (ev) => { if (ev.key === "Escape") reset(); });
  return button;
}
