// Drives Debian's chromium (headless, through playwright-core) against a
// running linegate console. Run by tests/console_browser.rs, which owns the
// demo line and talks to this script over stdin/stdout:
//   argv: BASE_URL SCREENSHOT_DIR MACHINE_ID...
//   -> "line-shown N"     the line page shows every machine
//   <- "pulled M"         the test silenced machine M on the simulated line
//   -> "offline-shown M"  M turned offline on the page, without a reload
//   -> "timeline-drawn K" the machine page drew K timeline spans
//   -> "done"
// Any failure: a message on stderr and exit code 1.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [base, shots, ...machines] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const PATIENCE_MS = 30000;

const lines = createInterface({ input: process.stdin });
const incoming = [];
let waiting = null;
lines.on("line", l => { if (waiting) { const w = waiting; waiting = null; w(l); } else incoming.push(l); });
function nextLine() {
  return incoming.length ? Promise.resolve(incoming.shift()) : new Promise(r => { waiting = r; });
}
function say(l) { process.stdout.write(l + "\n"); }

const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  const failures = [];
  page.on("pageerror", e => failures.push("page error: " + e.message));
  // A poll cut short by leaving the page is aborted; any other failure counts.
  page.on("requestfailed", r => {
    const why = r.failure()?.errorText || "";
    if (!why.includes("ERR_ABORTED")) failures.push("request failed: " + r.url() + " " + why);
  });
  // Nothing may leave the gateway: every request goes to the console itself.
  page.on("request", r => { if (!r.url().startsWith(base)) failures.push("outside request: " + r.url()); });

  await page.goto(base + "/");
  // Every machine, each with a state badge.
  await page.waitForFunction(ids => ids.every(id => {
    const row = document.querySelector(`#line tr[data-machine="${id}"]`);
    return row && row.dataset.state && row.dataset.state !== "unknown";
  }), machines, { timeout: PATIENCE_MS });
  const shown = await page.$$eval("#line tbody tr", rows => rows.map(r => r.dataset.machine));
  if (JSON.stringify(shown) !== JSON.stringify(machines)) throw new Error("line shows " + shown + ", not " + machines);
  // A reload would wipe this mark.
  await page.evaluate(() => { window.__linegateNoReload = true; });
  await page.screenshot({ path: shots + "/line.png", fullPage: true });
  say("line-shown " + shown.length);

  const pulled = (await nextLine()).replace(/^pulled /, "");
  await page.waitForFunction(id => document.querySelector(`#line tr[data-machine="${id}"]`)?.dataset.state === "offline",
    pulled, { timeout: PATIENCE_MS });
  const kept = await page.evaluate(() => window.__linegateNoReload === true);
  if (!kept) throw new Error("the page reloaded to show the change");
  const badge = await page.$eval(`#line tr[data-machine="${pulled}"] .state`, e => [e.textContent, getComputedStyle(e).backgroundColor]);
  if (badge[0] !== "offline") throw new Error("badge says " + badge[0]);
  await page.screenshot({ path: shots + "/line-offline.png", fullPage: true });
  say("offline-shown " + pulled);

  await page.goto(base + "/machine/" + machines[0]);
  await page.waitForFunction(() => document.querySelectorAll("#timeline-day svg rect[data-state]").length > 0 && document.querySelectorAll("#timeline-shift svg rect[data-state]").length > 0
    && document.querySelectorAll("#signals tbody tr").length > 0, null, { timeout: PATIENCE_MS });
  const spans = await page.$$eval("#timeline-day svg rect[data-state]", rs => rs.map(r => ({ w: r.getBBox().width, s: r.dataset.state })));
  if (!spans.every(s => s.w > 0 && s.s)) throw new Error("timeline spans without width or state: " + JSON.stringify(spans));
  await page.screenshot({ path: shots + "/machine.png", fullPage: true });
  say("timeline-drawn " + spans.length);

  for (const p of ["orders", "gateway"]) {
    await page.goto(base + "/" + p);
    await page.waitForFunction(() => document.getElementById("status").textContent.startsWith("live"), null, { timeout: PATIENCE_MS });
    await page.screenshot({ path: shots + "/" + p + ".png", fullPage: true });
  }
  if (failures.length) throw new Error(failures.join("; "));
  say("done");
} catch (e) {
  process.stderr.write("browser test: " + e.message + "\n");
  process.exitCode = 1;
} finally {
  await browser.close();
  lines.close();
}
