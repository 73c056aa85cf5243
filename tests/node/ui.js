// The web UI in a real browser (Debian's Chromium, driven by playwright-core).
// Usage: node ui.js AGENT_URL SERVICE SCREENSHOT. The service must have two
// instances, `<svc>-1` passing and `<svc>-2` with a TTL check. Prints one JSON
// line of what the page showed; the pytest wrapper asserts on it.
const { chromium } = require("playwright-core");

const [base, name, screenshot] = process.argv.slice(2);
const row = (page) => page.locator(`tr.service[data-name="${name}"]`);
const cells = async (page) => (await row(page).locator("td").allInnerTexts()).map((t) => t.trim());

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const out = {};
  try {
    const page = await browser.newPage();
    await page.goto(`${base}/ui/`);
    await row(page).waitFor({ timeout: 10000 });
    out.title = await page.locator("h1").innerText();
    out.before = await cells(page);
    // Live update: the TTL check passes through the API; the page must follow without a reload.
    await fetch(`${base}/v1/agent/check/pass/service:${name}-2`, { method: "PUT" });
    await page.waitForFunction(
      (n) => document.querySelector(`tr.service[data-name="${n}"] td:nth-child(3)`)?.textContent === "2",
      name, { timeout: 10000 });
    out.after = await cells(page);
    await row(page).click();
    await page.locator("tr.instances").first().waitFor({ timeout: 5000 });
    out.instances = (await page.locator("tr.instances td:first-child").allInnerTexts()).map((t) => t.trim());
    await page.screenshot({ path: screenshot, fullPage: true });
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(out));
}

main().catch((err) => { console.error(err); process.exit(1); });
