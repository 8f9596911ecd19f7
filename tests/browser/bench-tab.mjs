// One browser tab on the line page, for scripts/bench-console: Debian's
// chromium (headless, through playwright-core) opens BASE_URL/ and keeps it
// open, so the page's own console.js does its live updates (it fetches
// /api/v1/line once a second) as a technician's tab would.
//   argv: BASE_URL
//   -> "open N"      the page shows N machines, each with a state
//   (SIGTERM or SIGINT: the tab closes)
//   -> "closed R F"  R /api/v1/line responses while it was open, F failures
// Any failure: a message on stderr and exit code 1.
import { chromium } from "playwright-core";

const [base] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const PATIENCE_MS = 60000;

const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ["--no-sandbox"] });
let exit = 0;
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  let responses = 0;
  const failures = [];
  page.on("pageerror", e => failures.push("page error: " + e.message));
  page.on("response", r => {
    if (!r.url().startsWith(base + "/api/v1/line")) return;
    if (r.status() === 200) responses++;
    else failures.push("GET /api/v1/line: " + r.status());
  });
  page.on("requestfailed", r => {
    const why = r.failure()?.errorText || "";
    if (!why.includes("ERR_ABORTED")) failures.push("request failed: " + r.url() + " " + why);
  });
  await page.goto(base + "/");
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll("#line tbody tr")];
    return rows.length > 0 && rows.every(r => r.dataset.state && r.dataset.state !== "unknown");
  }, null, { timeout: PATIENCE_MS });
  const shown = await page.$$eval("#line tbody tr", rows => rows.length);
  responses = 0;
  process.stdout.write("open " + shown + "\n");
  // Open until the bench says so.
  await new Promise(done => {
    process.on("SIGTERM", done);
    process.on("SIGINT", done);
  });
  process.stdout.write("closed " + responses + " " + failures.length + "\n");
  if (failures.length) {
    console.error(failures.slice(0, 5).join("\n"));
    exit = 1;
  }
} catch (e) {
  console.error(String(e && e.stack || e));
  exit = 1;
} finally {
  await browser.close();
}
process.exit(exit);
