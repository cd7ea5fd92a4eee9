// Opens pages in headless Chromium (the system browser, through puppeteer-core) and prints
// what they leave in window.__result, one JSON line per URL.
//
//   node drive.mjs [--chromium /usr/bin/chromium] [--timeout 600] [--console FILE] URL...
//
// All URLs open in one browser profile, one after another (so Cache Storage persists between
// them); the requests each page made are counted per path and returned with its result.
import { appendFileSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
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

// Peak resident memory (VmHWM, MB) of the browser's renderer processes (Linux /proc; null elsewhere).
function rendererPeakMb(rootPid) {
  try {
    const parent = new Map(), cmd = new Map();
    for (const d of readdirSync("/proc")) {
      if (!/^\d+$/.test(d)) continue;
      try {
        const stat = readFileSync(`/proc/${d}/stat`, "utf8");
        parent.set(Number(d), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
        cmd.set(Number(d), readFileSync(`/proc/${d}/cmdline`, "utf8"));
      } catch { /* gone */ }
    }
    const under = (pid) => { for (let p = pid; p > 1; p = parent.get(p) ?? 0) if (p === rootPid) return true; return false; };
    let peak = null;
    for (const [pid, c] of cmd) {
      if (!c.includes("--type=renderer") || !under(pid)) continue;
      const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
      if (m) peak = Math.max(peak ?? 0, Number(m[1]) / 1024);
    }
    return peak;
  } catch {
    return null;
  }
}

const browser = await puppeteer.launch({
  executablePath: values.chromium,
  headless: true,
  protocolTimeout: Number(values.timeout) * 1000, // a busy page answers late
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
    const renderer_peak_mb = rendererPeakMb(browser.process()?.pid);
    console.log(JSON.stringify({ url, ...result, renderer_peak_mb, requests }));
    await page.close();
  }
} finally {
  await browser.close();
}
