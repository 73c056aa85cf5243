// The web UI in a real browser (Debian's Chromium, driven by playwright-core).
//
// Usage: node ui.js SCENARIO AGENT_URL [ARGS...]; prints one JSON line of
// what the page showed (the pytest wrapper, tests/ui/test_ui_browser.py,
// asserts on it). Scenarios:
//   views SERVICE DECOY        every view on the services the wrapper registered
//   screenshots SERVICE NODE INSTANCE DIR   the main views as PNGs (scripts/ui-screenshots.py)
//   empty                      a fresh agent: the empty state
//   restart                    the agent restarts under the page; the wrapper
//                              drives it through stdin/stdout lines
//   token SERVICE BAD GOOD     ACLs deny by default: the page asks for a token
//   mesh                       the intentions view and a service's callers/callees
//   meshToken READ WRITE       ACLs on: a read token sees the intentions, saving one
//                              asks for a token with intentions:write
// Every wait is bounded (WAIT_MS); nothing here sleeps for a fixed time.
const { chromium } = require("playwright-core");
const readline = require("readline");

const WAIT_MS = 10000;
const [scenario, base, ...args] = process.argv.slice(2);

async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}

async function newPage(browser, errors) {
  const page = await browser.newPage({ viewport: { width: 1100, height: 760 } });
  page.on("pageerror", (err) => errors.push(`pageerror: ${err.message}`));
  page.on("console", (msg) => {
    // A failed long-poll while the agent is down is expected; anything else is not.
    if (msg.type() === "error" && !/Failed to load resource|ERR_CONNECTION_REFUSED/.test(msg.text())) {
      errors.push(`console: ${msg.text()}`);
    }
  });
  return page;
}

const texts = async (loc) => (await loc.allInnerTexts()).map((t) => t.trim().replace(/\s+/g, " "));
const waitFor = (page, fn, arg) => page.waitForFunction(fn, arg, { timeout: WAIT_MS });
const put = (path) => fetch(`${base}${path}`, { method: "PUT" }).then((r) => { if (!r.ok) throw new Error(`${path}: ${r.status}`); });

// Runs in the page: inputs without a label, the number of h1s, and the WCAG
// contrast of the text of every element matching the selectors against the
// first opaque background behind it.
function pageA11y(selectors) {
  const rgb = (s) => (s.match(/[\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (let e = el; e; e = e.parentElement) {
      const c = rgb(getComputedStyle(e).backgroundColor);
      if (c.length === 3 || (c.length === 4 && c[3] > 0.9)) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const out = [];
  for (const sel of selectors) {
    for (const el of document.querySelectorAll(sel)) {
      if (!el.textContent.trim() || !el.getClientRects().length) continue;
      const a = lum(rgb(getComputedStyle(el).color).slice(0, 3));
      const b = lum(background(el));
      out.push({ sel, ratio: Math.round(((Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05)) * 100) / 100 });
    }
  }
  return {
    unlabelled: [...document.querySelectorAll("input, select, textarea")].filter((e) => !e.labels.length).map((e) => e.id || e.outerHTML),
    contrast: out,
    h1: document.querySelectorAll("h1").length,
  };
}
const CONTRAST_SELECTORS = ["body", "h1", ".muted", "a", ".badge", "td.passing", "td.warning", "td.critical",
  "td.maintenance", "#connection", "#updated", "thead th", "button", "label", ".tag", ".event time", "dt",
  ".action", "td.decision", "td.self", "summary"];

async function a11y(page) {
  return page.evaluate(pageA11y, CONTRAST_SELECTORS);
}

// Press Tab until `selector` has the focus; fails after `max` presses.
async function tabTo(page, selector, max = 40) {
  for (let i = 0; i < max; i++) {
    await page.keyboard.press("Tab");
    if (await page.evaluate((s) => document.activeElement?.matches(s), selector)) return i + 1;
  }
  throw new Error(`Tab never reached ${selector}`);
}

async function views(browser, out, errors) {
  const [name, decoy] = args;
  const page = await newPage(browser, errors);
  const row = page.locator(`tr.service[data-name="${name}"]`);
  const cells = async () => texts(row.locator("th, td"));

  // -- the services list, live ------------------------------------------------
  await page.goto(`${base}/ui/`);
  await row.waitFor({ timeout: WAIT_MS });
  out.brand = await page.locator("header .brand").innerText();
  out.before = await cells();
  await put(`/v1/agent/check/pass/service:${name}-2`);
  await waitFor(page, (n) => document.querySelector(`tr.service[data-name="${n}"] td:nth-child(4)`)?.textContent === "2", name);
  out.after = await cells();
  out.listA11y = await a11y(page);

  // -- filter, status, sort: by keyboard, kept in the URL -----------------------
  out.tabsToFilter = await tabTo(page, "#filter");
  await page.keyboard.type(name);
  await waitFor(page, () => document.querySelectorAll("tr.service").length >= 1 && location.search.includes("filter="));
  out.filtered = await texts(page.locator("tr.service th"));
  await page.fill("#filter", `tag-${name}`); // a tag matches too
  await waitFor(page, () => document.querySelectorAll("tr.service").length === 1);
  out.filteredByTag = await texts(page.locator("tr.service th"));
  await page.fill("#filter", name);
  out.filterUrl = await page.evaluate(() => location.search);
  await page.reload();
  await row.waitFor({ timeout: WAIT_MS });
  out.filterAfterReload = [await page.locator("#filter").inputValue(), await texts(page.locator("tr.service th"))];
  await page.selectOption("#status-filter", "critical");
  await page.locator("#empty").waitFor({ timeout: WAIT_MS });
  out.noMatch = (await page.locator("#empty").innerText()).trim();
  await page.locator("#empty button").press("Enter");
  await row.waitFor({ timeout: WAIT_MS });
  out.afterClear = [await page.locator("#filter").inputValue(), await page.locator("#status-filter").inputValue()];
  out.focusAfterClear = await page.evaluate(() => document.activeElement.id);
  const sortButton = page.locator('button[data-sort="instances"]');
  await sortButton.focus();
  await page.keyboard.press("Enter");
  await page.keyboard.press("Enter");
  out.sortState = [await page.locator(`th:has(button[data-sort="instances"])`).getAttribute("aria-sort"), await page.evaluate(() => location.search)];
  const counts = await page.evaluate(() => [...document.querySelectorAll("tr.service td:nth-child(3)")].map((t) => Number(t.textContent)));
  out.sortedDescending = counts.every((c, i) => i === 0 || counts[i - 1] >= c);
  const order = await page.locator("tr.service").evaluateAll((rows) => rows.map((r) => r.dataset.name));
  out.sortedOrder = order.filter((n) => n === name || n === decoy);

  // -- keyboard to the service's page; deep link survives a reload -------------
  // Filtered by a deep link: the shared agent holds every other test's
  // services, and how many rows come before this one must not matter.
  await page.goto(`${base}/ui/services?filter=${encodeURIComponent(name)}`);
  await row.waitFor({ timeout: WAIT_MS });
  await tabTo(page, `tr.service[data-name="${name}"] a`);
  await page.keyboard.press("Enter");
  const instance = page.locator(`section.instance[data-id="${name}-1"]`);
  await instance.waitFor({ timeout: WAIT_MS });
  out.detailPath = new URL(page.url()).pathname;
  out.focusAfterNavigation = await page.evaluate(() => document.activeElement.tagName);
  await page.reload();
  await instance.waitFor({ timeout: WAIT_MS });
  out.detailAfterReload = await page.locator("h1").innerText();
  out.instances = await page.locator("section.instance").evaluateAll((els) => els.map((e) => e.dataset.id));
  out.fields = await texts(instance.locator("dl.fields dd"));
  out.fieldNames = await texts(instance.locator("dl.fields dt"));
  out.checks = await instance.locator("tr.check").evaluateAll((rows) => rows.map((r) => [...r.children].map((c) => c.textContent.trim())));
  out.tagsHtml = await instance.locator("dl.fields dd").nth(2).innerHTML();
  out.instanceStatuses = await page.locator("section.instance").evaluateAll((els) => els.map((e) => e.dataset.status));
  out.maintenanceReason = await texts(page.locator(`section.instance[data-id="${name}-3"] .maintenance-reason`));

  // -- the timeline follows live ----------------------------------------------
  await put(`/v1/agent/check/fail/service:${name}-2?note=connection%20refused`);
  await waitFor(page, () => document.querySelector("#events li")?.dataset.kind === "check" &&
    document.querySelector("#events li").textContent.includes("connection refused"));
  out.events = await texts(page.locator("#events li .what"));
  out.eventOutputs = await texts(page.locator("#events li .output"));
  out.strips = await page.locator(".strip").evaluateAll((els) => els.map((e) => e.getAttribute("aria-label")));
  out.detailA11y = await a11y(page);

  // -- one instance: its own timeline ----------------------------------------------
  await page.locator(`section.instance[data-id="${name}-2"] h3 a`).click();
  await page.locator("#events li").first().waitFor({ timeout: WAIT_MS });
  out.instancePath = new URL(page.url()).pathname;
  out.instanceSections = await page.locator("section.instance").count();
  out.instanceEventsFor = await page.locator("#events li").evaluateAll((els) => [...new Set(els.map((e) => e.dataset.instance))]);

  // -- nodes -----------------------------------------------------------------
  await page.locator('nav a[data-section="nodes"]').click();
  const node = page.locator('section.node[data-node="test-node"]');
  await node.waitFor({ timeout: WAIT_MS });
  out.nodesCurrent = await page.locator('nav a[aria-current="page"]').innerText();
  out.node = { status: await node.getAttribute("data-status"), checks: await texts(node.locator(".node-checks li")) };
  out.nodeServices = await node.locator("tr.node-service").evaluateAll((rows) => rows.map((r) => r.dataset.id));
  out.nodesA11y = await a11y(page);
  out.externalNode = await texts(page.locator(`section.node[data-node^="ext-"] p.muted`));
  await node.locator("h2 a").click();
  await page.waitForURL("**/ui/nodes/test-node", { timeout: WAIT_MS });
  await page.reload();
  await node.waitFor({ timeout: WAIT_MS });
  out.oneNode = [await page.locator("h1").innerText(), await page.locator("section.node").count()];
  out.nodeCount = await page.evaluate(() => fetch("/v1/internal/ui/nodes").then((r) => r.json()).then((n) => n.length));

  // -- an address the UI does not have ---------------------------------------------
  await page.goto(`${base}/ui/nowhere`);
  out.notFound = await page.locator("h1").innerText();
}

async function screenshots(browser, out, errors) {
  const [name, node, instance, dir] = args;
  const page = await newPage(browser, errors);
  const shoot = async (path, ready, file, fullPage = false) => {
    await page.goto(`${base}${path}`);
    await page.locator(ready).first().waitFor({ timeout: WAIT_MS });
    await waitFor(page, () => document.querySelector("#connection").dataset.state === "live");
    await page.screenshot({ path: `${dir}/${file}`, fullPage });
    return file;
  };
  out.files = [
    await shoot("/ui/services", "tr.service", "ui-services.png"),
    await shoot(`/ui/services/${encodeURIComponent(name)}`, "#events li", "ui-service.png"),
    await shoot(`/ui/services/${encodeURIComponent(name)}/instances/${encodeURIComponent(node)}/${encodeURIComponent(instance)}`,
      "#events li", "ui-instance.png", true),
    await shoot("/ui/nodes", "section.node", "ui-nodes.png"),
    await shoot("/ui/intentions", "#matrix", "ui-intentions.png", true),
  ];
}

async function empty(browser, out, errors) {
  const page = await newPage(browser, errors);
  await page.goto(`${base}/ui`);
  await page.locator("#empty").waitFor({ timeout: WAIT_MS });
  out.path = new URL(page.url()).pathname;
  out.empty = (await page.locator("#empty").innerText()).trim();
  out.emptyRows = await page.locator("tr.service").evaluateAll((rows) => rows.map((r) => r.dataset.name));
  out.a11y = await a11y(page);
}

// The wrapper restarts the agent; lines on stdin say what it did, lines on
// stdout what the page showed.
async function restart(browser, out, errors) {
  const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();
  const next = async () => (await lines.next()).value;
  const say = (obj) => console.log(JSON.stringify(obj));
  const page = await newPage(browser, errors);
  await page.goto(`${base}/ui/services`);
  await page.locator("tr.service").first().waitFor({ timeout: WAIT_MS });
  say({ step: "loaded", rows: await page.locator("tr.service").count() });
  if ((await next()) !== "stopped") throw new Error("expected: stopped");
  await waitFor(page, () => document.querySelector("#connection").dataset.state === "stale");
  out.staleText = await page.locator("#connection").innerText();
  out.rowsWhileStale = await page.locator("tr.service").count();
  say({ step: "stale" });
  const [word, name] = (await next()).split(" ");
  if (word !== "started") throw new Error("expected: started NAME");
  const started = Date.now();
  await waitFor(page, (n) => document.querySelector("#connection").dataset.state === "live" &&
    document.querySelector(`tr.service[data-name="${n}"]`) !== null, name);
  out.recoveredMs = Date.now() - started;
  out.liveText = await page.locator("#connection").innerText();
  // And it keeps following: a change after the restart arrives through the blocking query.
  await put(`/v1/agent/check/pass/service:${name}-1`);
  await waitFor(page, (n) => document.querySelector(`tr.service[data-name="${n}"]`)?.dataset.status === "passing", name);
  out.followedAfterRestartMs = Date.now() - started;
}

// ACLs on: the page must ask for a token, say why, ask again for a bad one,
// and show the catalog once a good one is given (kept for the tab only).
async function token(browser, out, errors) {
  const [name, bad, good] = args;
  const page = await newPage(browser, errors);
  await page.goto(`${base}/ui/services`);
  const form = page.locator("#token");
  await form.waitFor({ state: "visible", timeout: WAIT_MS });
  out.firstWhy = (await page.locator("#token-why").innerText()).trim();
  out.focused = await page.evaluate(() => document.activeElement?.id);
  await page.fill("#token-secret", bad);
  await page.click("#token button");
  await waitFor(page, () => !document.querySelector("#token").hidden &&
    /ACL not found/.test(document.querySelector("#token-why").textContent));
  out.badWhy = (await page.locator("#token-why").innerText()).trim();
  await page.fill("#token-secret", good);
  await page.keyboard.press("Enter");
  await waitFor(page, (n) => document.querySelector(`tr.service[data-name="${n}"]`) !== null, name);
  out.formHidden = await form.isHidden();
  out.rows = await page.locator("tr.service").evaluateAll((rows) => rows.map((r) => r.dataset.name));
  out.stored = await page.evaluate(() => sessionStorage.getItem("waypost.token"));
  out.url = page.url();
  out.a11y = await a11y(page);
}

// The mesh: the list, the matrix (checked against the agent's own
// /v1/connect/intentions/check for every pair), live changes, the filter kept
// in the URL, and a service's callers and callees.
async function mesh(browser, out, errors) {
  const page = await newPage(browser, errors);
  const rows = () => page.locator("tr.intention").evaluateAll((trs) => trs.map((r) => [...r.children].map((c) => c.textContent.trim())));
  const cells = () => page.locator("td.decision").evaluateAll((tds) => tds.map((t) => [t.dataset.source, t.dataset.destination,
    t.classList.contains("allow") ? "allow" : "deny", t.classList.contains("by-intention") ? "intention" : "default", t.textContent.trim()]));
  await page.goto(`${base}/ui/intentions`);
  await page.locator("tr.intention").first().waitFor({ timeout: WAIT_MS });
  out.current = await page.locator('nav a[aria-current="page"]').innerText();
  out.policy = (await page.locator("#default-policy").innerText()).trim();
  out.rows = await rows();
  out.cells = await cells();
  out.checked = await page.evaluate(async (pairs) => Promise.all(pairs.map(([s, d]) =>
    fetch(`/v1/connect/intentions/check?source=${encodeURIComponent(s)}&destination=${encodeURIComponent(d)}`)
      .then((r) => r.json()).then((j) => [s, d, j.Allowed ? "allow" : "deny"]))), out.cells.map((c) => c.slice(0, 2)));
  out.headers = await texts(page.locator("#matrix th.dest"));
  out.a11y = await a11y(page);
  out.tabsToFilter = await tabTo(page, "#intention-filter");

  // live: an intention made through the API appears, and its cell turns
  const before = out.rows.length;
  await fetch(`${base}/v1/connect/intentions/exact?source=cache&destination=web`, { method: "PUT", body: JSON.stringify({ Action: "deny", Description: "no" }) });
  await waitFor(page, (n) => document.querySelectorAll("tr.intention").length === n + 1, before);
  out.liveCell = await page.locator('td.decision[data-source="cache"][data-destination="web"]').getAttribute("class");

  // the filter, typed, kept in the URL and across a reload
  await page.keyboard.type("cache");
  await waitFor(page, () => document.querySelectorAll("tr.intention").length === 1);
  out.filterUrl = await page.evaluate(() => location.search);
  await page.reload();
  await page.locator("tr.intention").first().waitFor({ timeout: WAIT_MS });
  out.filteredAfterReload = [await page.locator("#intention-filter").inputValue(), await rows()];

  // creating one from the form (keyboard), then a bad one, then deleting one (two presses)
  await page.fill("#intention-filter", "");
  await waitFor(page, () => location.search === "");
  await page.fill("#new-source", "cache");
  await page.fill("#new-destination", "api");
  await page.selectOption("#new-action", "deny");
  await page.fill("#new-description", "made in the UI");
  await page.press("#new-description", "Enter");
  await waitFor(page, () => document.querySelector('tr.intention[data-source="cache"][data-destination="api"]') !== null &&
    document.querySelector("#intention-form-status").textContent.startsWith("Saved"));
  out.created = [await page.locator("#intention-form-status").innerText(),
    await texts(page.locator('tr.intention[data-source="cache"][data-destination="api"] td'))];
  await page.fill("#new-source", "ca*che");
  await page.fill("#new-destination", "api");
  await page.press("#new-destination", "Enter");
  await waitFor(page, () => document.querySelector("#intention-form-status").className === "error");
  out.refused = await page.locator("#intention-form-status").innerText();
  const del = page.locator('tr.intention[data-source="cache"][data-destination="web"] button.delete');
  await del.focus();
  await page.keyboard.press("Enter");
  out.armed = [await del.innerText(), await del.getAttribute("aria-label")];
  out.stillThere = await page.locator('tr.intention[data-source="cache"][data-destination="web"]').count();
  await page.keyboard.press("Enter");
  await waitFor(page, () => document.querySelector('tr.intention[data-source="cache"][data-destination="web"]') === null &&
    document.querySelector("#intention-changed").textContent.startsWith("Deleted"));
  out.deleted = [await page.locator("#intention-changed").innerText(), await page.evaluate(() => document.activeElement.id)];
  out.editA11y = await a11y(page);

  // a service's page: who may call it, whom it may call
  await page.goto(`${base}/ui/services/db`);
  await page.locator("#callers li").first().waitFor({ timeout: WAIT_MS });
  const peers = (id) => page.locator(`#${id} li`).evaluateAll((lis) => lis.map((l) => [l.dataset.peer || "(default)", l.dataset.action, l.textContent.trim().replace(/\s+/g, " ")]));
  out.callers = await peers("callers");
  out.callees = await peers("callees");
  out.serviceA11y = await a11y(page);
  await fetch(`${base}/v1/connect/intentions/exact?source=db&destination=cache`, { method: "PUT", body: JSON.stringify({ Action: "deny" }) });
  await waitFor(page, () => document.querySelector('#callees li[data-peer="cache"]') !== null);
  out.calleesAfter = await peers("callees");
}

async function meshToken(browser, out, errors) {
  const [readToken, writeToken] = args;
  const page = await newPage(browser, errors);
  await page.goto(`${base}/ui/intentions`);
  await page.locator("#token").waitFor({ state: "visible", timeout: WAIT_MS });
  await page.fill("#token-secret", readToken);
  await page.press("#token-secret", "Enter");
  await page.locator("tr.intention").first().waitFor({ timeout: WAIT_MS });
  out.rows = await page.locator("tr.intention").count();
  await page.fill("#new-source", "web");
  await page.fill("#new-destination", "db");
  await page.press("#new-destination", "Enter");
  await waitFor(page, () => !document.querySelector("#token").hidden &&
    document.querySelector("#intention-form-status").className === "error");
  out.why = (await page.locator("#token-why").innerText()).trim();
  out.refused = await page.locator("#intention-form-status").innerText();
  await page.fill("#token-secret", writeToken);
  await page.press("#token-secret", "Enter");
  await page.click("#intention-form button[type=submit]");
  await waitFor(page, () => document.querySelector('tr.intention[data-source="web"][data-destination="db"]') !== null &&
    document.querySelector("#intention-form-status").textContent.startsWith("Saved"));
  out.saved = await page.locator("#intention-form-status").innerText();
}

async function main() {
  const run = { views, empty, restart, screenshots, token, mesh, meshToken }[scenario];
  if (!run) throw new Error(`unknown scenario ${scenario}`);
  const browser = await launch();
  const out = { errors: [] };
  try {
    await run(browser, out, out.errors);
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(out));
}

main().catch((err) => { console.error(err); process.exit(1); });
