// Opens pages in headless Chromium (the system browser, through puppeteer-core) and prints
// what they leave in window.__result, one JSON line per URL.
//
//   node drive.mjs [--chromium /usr/bin/chromium] [--timeout 600] [--console FILE] URL...
//
// All URLs open in one browser profile, one after another (so Cache Storage persists between
// them); the requests each page made are counted per path and returned with its result.
import { writeFileSync, appendFileSync } from "node:fs";
import { parseArgs } from "node:util";

import puppeteer from "puppeteer-core";

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    chromium: { type: "string", default: process.env.CHROMIUM ?? "/usr/bin/chromium" },
    timeout: { type: "string", default: "600" },
    console: { type: "string" },
  },
});

const browser = await puppeteer.launch({
  executablePath: values.chromium,
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--js-flags=--max-old-space-size=4096"],
});
if (values.console) writeFileSync(values.console, "");
try {
  for (const url of positionals) {
    const page = await browser.newPage();
    const requests = {};
    page.on("request", (r) => {
      const p = new URL(r.url()).pathname;
      requests[p] = (requests[p] ?? 0) + 1;
    });
    if (values.console) page.on("console", (m) => appendFileSync(values.console, m.text() + "\n"));
    await page.goto(url, { waitUntil: "load" });
    await page.waitForFunction("window.__result !== undefined", { timeout: Number(values.timeout) * 1000, polling: 200 });
    const result = await page.evaluate("window.__result");
    console.log(JSON.stringify({ url, ...result, requests }));
    await page.close();
  }
} finally {
  await browser.close();
}
