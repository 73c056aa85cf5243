// Live data: one blocking-query loop per resource a view shows.
//
// Recovery is the point. An agent that restarts comes back with its own
// index, which can be lower than the one the page holds; a long-poll sent
// with the old index would then wait its whole `wait` before anything moved.
// So after any failed request the next one asks with index 0 (answered at
// once, by whichever agent is there now), an answer whose index went
// backwards is taken as a reset (as Consul's docs tell clients to do), and
// every request has its own deadline, so a half-open connection cannot hang
// the page. Retries back off from 0.5 s to 2 s: the page resumes within a
// couple of seconds of the agent coming back. Until then it says that what it
// shows is stale, and since when.

import { clock } from "./dom.js";

export const WAIT_SECONDS = 30;
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 2000;

// ACL tokens (docs/security.md, "The web UI's token"): the token the operator
// gave is kept for this tab only (sessionStorage: it dies with the tab, and no
// other site can read it) and sent as X-Consul-Token on every request, long-polls
// included. A 403 anywhere means the token is missing, unknown or too weak: the
// page asks for one (app.js) and every poll waits for it, then resumes at once.
// A list the agent filtered (X-Consul-Results-Filtered-By-ACLs) while the page
// has no token offers the form too, without stopping the polls.
const TOKEN_KEY = "waypost.token";
let tokenGiven = null; // resolves the polls waiting for a token
export const tokens = new EventTarget(); // "needed" events, with the agent's message

export function requestHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Accept: "application/json", "X-Consul-Token": token } : { Accept: "application/json" };
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  if (tokenGiven) tokenGiven.resolve();
  tokenGiven = null;
}

function waitForToken(message, signal) {
  if (!tokenGiven) {
    let resolve;
    const promise = new Promise((r) => { resolve = r; });
    tokenGiven = { promise, resolve };
  }
  tokens.dispatchEvent(new CustomEvent("needed", { detail: message }));
  return Promise.race([tokenGiven.promise, sleep(60000, signal)]);
}

export class HttpError extends Error {
  constructor(status, text) {
    super(`HTTP ${status}${text ? `: ${text.trim().slice(0, 200)}` : ""}`);
    this.status = status;
  }
}

// The page-wide "live or stale" line. It changes its (announced) text only
// when the state changes; the time of the last update is a separate line.
export class Connection {
  constructor(statusEl, updatedEl) {
    this.statusEl = statusEl;
    this.updatedEl = updatedEl;
    this.failing = new Map(); // path -> {since, message}
    this.noLeader = false;
    this.lastData = null;
  }

  ok(path, knownLeader) {
    this.failing.delete(path);
    this.noLeader = !knownLeader;
    this.lastData = new Date();
    this.render();
  }

  failed(path, err) {
    if (!this.failing.has(path)) this.failing.set(path, { since: new Date(), message: err.message });
    this.render();
  }

  forget(path) {
    this.failing.delete(path);
  }

  render() {
    const shown = this.lastData ? `showing data from ${clock(this.lastData)}` : "nothing loaded yet";
    let state = "live";
    let text = "Live: updates as the catalog changes";
    if (this.failing.size) {
      const first = [...this.failing.values()].sort((a, b) => a.since - b.since)[0];
      state = "stale";
      text = `Stale: the agent is unreachable since ${clock(first.since)} (${first.message}); ` +
        `retrying, ${shown}`;
    } else if (this.noLeader) {
      state = "stale";
      text = `Stale: the agent has lost contact with its store; ${shown}`;
    }
    if (this.statusEl.dataset.state !== state || this.statusEl.textContent !== text) {
      this.statusEl.textContent = text; // moves with the state, not with every retry
      this.statusEl.dataset.state = state;
    }
    this.updatedEl.textContent = this.lastData ? `Last update ${clock(this.lastData)}` : "";
  }
}

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

async function fetchOnce(path, params, index, signal) {
  const query = new URLSearchParams(params);
  if (index > 0) {
    query.set("index", String(index));
    query.set("wait", `${WAIT_SECONDS}s`);
  }
  const deadline = new AbortController();
  const stop = () => deadline.abort();
  signal.addEventListener("abort", stop, { once: true });
  const timer = setTimeout(stop, (WAIT_SECONDS * 17 / 16 + 5) * 1000);
  try {
    const url = query.size ? `${path}?${query}` : path;
    const r = await fetch(url, { signal: deadline.signal, headers: requestHeaders(), cache: "no-store" });
    if (!r.ok) throw new HttpError(r.status, await r.text());
    const next = Number(r.headers.get("X-Consul-Index"));
    if (!Number.isInteger(next) || next < 1) throw new Error("the answer had no X-Consul-Index");
    const knownLeader = r.headers.get("X-Consul-KnownLeader") !== "false";
    return { data: await r.json(), next, knownLeader, headers: r.headers };
  } catch (err) {
    if (err.name === "AbortError" && !signal.aborted) throw new Error("no answer in time");
    throw err;
  } finally {
    clearTimeout(timer);
    signal.removeEventListener("abort", stop);
  }
}

// Calls onData(data, headers) with every answer until `signal` aborts.
export function poll(path, params, onData, { signal, connection }) {
  run(path, params, onData, signal, connection).finally(() => connection.forget(path));
}

async function run(path, params, onData, signal, connection) {
  let index = 0;
  let delay = RETRY_MIN_MS;
  while (!signal.aborted) {
    const started = Date.now();
    try {
      const { data, next, knownLeader, headers } = await fetchOnce(path, params, index, signal);
      if (signal.aborted) return;
      const unchanged = next === index;
      index = next; // lower than before: a reset, and this answer is the new truth
      delay = RETRY_MIN_MS;
      connection.ok(path, knownLeader);
      onData(data, headers);
      if (headers.get("X-Consul-Results-Filtered-By-ACLs") === "true" && !sessionStorage.getItem(TOKEN_KEY)) {
        // Default deny lists nothing to a page without a token: offer to give one.
        tokens.dispatchEvent(new CustomEvent("needed", { detail: "ACLs hide some of what this page would show" }));
      }
      // A read that does not block would otherwise spin: never more than once a second.
      if (unchanged && Date.now() - started < 100) await sleep(1000, signal);
    } catch (err) {
      if (signal.aborted) return;
      index = 0;
      connection.failed(path, err);
      if (err instanceof HttpError && err.status === 403) {
        await waitForToken(err.message, signal); // ACLs: ask, then retry at once
        continue;
      }
      await sleep(delay, signal);
      delay = Math.min(delay * 2, RETRY_MAX_MS);
    }
  }
}
