// DOM helpers. Everything the page shows is built with createElement and
// text nodes, never innerHTML: service names, tags, meta and check output
// come from whoever registered them and must never become markup.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style") Object.assign(el.style, value); // CSSOM: allowed by the CSP, attributes are not
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
}

export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

// The status as a word and a colour (never colour alone).
export function badge(status) {
  const word = status || "unknown";
  return h("span", { class: `badge ${word}` }, word);
}

export function clock(date) {
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
}

export function link(path, ...children) {
  return h("a", { href: path }, ...children);
}

// Paths inside the UI: each segment percent-encoded, so a service named
// "a/b" or "q?x" is one segment of the URL and survives a reload.
export function uiPath(...segments) {
  return "/ui/" + segments.map((s) => encodeURIComponent(s)).join("/");
}

export const servicePath = (name) => uiPath("services", name);
export const instancePath = (name, node, id) => uiPath("services", name, "instances", node, id);
export const nodePath = (name) => uiPath("nodes", name);
