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

// The seam for ACL tokens (a later issue): every request's extra headers.
// The token prompt will put `X-Consul-Token` here; nothing else changes.
export function requestHeaders() {
  return { Accept: "application/json" };
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
      // A read that does not block would otherwise spin: never more than once a second.
      if (unchanged && Date.now() - started < 100) await sleep(1000, signal);
    } catch (err) {
      if (signal.aborted) return;
      index = 0;
      connection.failed(path, err);
      await sleep(delay, signal);
      delay = Math.min(delay * 2, RETRY_MAX_MS);
    }
  }
}
