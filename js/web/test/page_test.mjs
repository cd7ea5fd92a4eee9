// Drives the demo page (served by `alter-edge web`) in headless Chromium as a user would:
// waits for the bundle to load, types each row's task and text, clicks "generate" and
// "score labels", reads what the page shows, tries a bad input, then loads the page again in
// the same browser profile and counts the requests for bundle files. Prints one JSON object.
//
//   node page_test.mjs --url http://127.0.0.1:PORT/ --spec spec.json [--screenshot out.png]
//
// spec.json: {"batches": [[{"task": "echo", "text": "..."}, ...], ...], "maxNewTokens": 8,
//             "threads": 2, "timeout": 300}
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import puppeteer from "puppeteer-core";

const { values } = parseArgs({
  options: {
    url: { type: "string" },
    spec: { type: "string" },
    screenshot: { type: "string" },
    chromium: { type: "string", default: process.env.CHROMIUM ?? "/usr/bin/chromium" },
  },
});
const spec = JSON.parse(readFileSync(values.spec, "utf8"));
const timeout = (spec.timeout ?? 300) * 1000;
const pageUrl = `${values.url}?threads=${spec.threads ?? 2}&maxNewTokens=${spec.maxNewTokens ?? 8}` +
  (spec.precision ? `&precision=${spec.precision}` : "");

const browser = await puppeteer.launch({
  executablePath: values.chromium, headless: true, protocolTimeout: timeout,
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
const out = { console: [], pageErrors: [] };

async function openPage() {
  const page = await browser.newPage();
  await page.setViewport({ width: 1280, height: 900 });
  const requests = [];
  page.on("request", (r) => requests.push(new URL(r.url()).pathname));
  page.on("console", (m) => out.console.push(`${m.type()}: ${m.text()}`.slice(0, 500)));
  page.on("pageerror", (e) => out.pageErrors.push(String(e?.message ?? e)));
  await page.goto(pageUrl, { waitUntil: "load" });
  await page.waitForFunction("['ready', 'error'].includes(document.body.dataset.state)", { timeout });
  return { page, requests };
}

const state = (page) => page.evaluate("document.body.dataset.state");
const errorText = (page) => page.evaluate("document.getElementById('error').hidden ? null : document.getElementById('error').textContent");

// replace the page's rows with `rows`, through the page's own controls
async function setRows(page, rows) {
  await page.evaluate(() => { for (const b of document.querySelectorAll("#rows tbody button")) b.click(); });
  for (const r of rows) {
    await page.click("#add-row");
    const tr = `#rows tbody tr:last-child`;
    await page.select(`${tr} select.task`, r.task);
    await page.click(`${tr} input.text`, { clickCount: 3 });
    await page.$eval(`${tr} input.text`, (el) => { el.value = ""; });
    if (r.text) await page.type(`${tr} input.text`, r.text);
  }
}

async function clickAndWait(page, button) {
  await page.click(button);
  await page.waitForFunction("document.body.dataset.state !== 'running'", { timeout, polling: 50 });
}

const readRows = (page) => page.$$eval("#rows tbody tr", (trs) => trs.map((tr) => {
  const o = tr.querySelector("td.out"), l = tr.querySelector("td.labels");
  return { task: tr.querySelector("select.task").value, text: o.textContent, tokenIds: JSON.parse(o.dataset.tokenIds ?? "null"),
           finishReason: o.dataset.finish ?? null, scores: l.dataset.scores ? JSON.parse(l.dataset.scores) : null };
}));

try {
  // 1. first visit: download, generate each batch, score labels
  const first = await openPage();
  const p = first.page;
  out.firstLoad = { state: await state(p), error: await errorText(p), ...(await p.evaluate("window.__page.load ?? {}")) };
  out.tasksListed = await p.$$eval("#tasks tbody tr td:nth-child(2)", (tds) => tds.map((td) => td.textContent));
  if (spec.loadOnly) { // a bundle that must not load: what the page shows, and that it still answers
    out.firstLoad.error = await errorText(p);
    out.buttons = await p.$$eval("button", (bs) => Object.fromEntries(bs.map((b) => [b.id || b.textContent, b.disabled])));
    out.alive = await p.evaluate("1 + 1");
    if (values.screenshot) await p.screenshot({ path: values.screenshot, fullPage: true });
    throw Object.assign(new Error("done"), { done: true });
  }
  out.batches = [];
  for (const rows of spec.batches) {
    await setRows(p, rows);
    await clickAndWait(p, "#run");
    const gen = { state: await state(p), error: await errorText(p), rows: await readRows(p),
                  figures: await p.evaluate("window.__page.run && {ttftMs: window.__page.run.ttftMs, tokensPerSecond: window.__page.run.tokensPerSecond}") };
    await clickAndWait(p, "#classify");
    gen.scores = (await readRows(p)).map((r) => r.scores);
    gen.classifyError = await errorText(p);
    out.batches.push(gen);
  }
  out.metricsShown = await p.$$eval("#metrics dd", (dds) => Object.fromEntries(dds.map((d) => [d.id, d.textContent])));
  if (values.screenshot) await p.screenshot({ path: values.screenshot, fullPage: true });
  // 2. bad input: an empty row, then an over-long one; the page says so and keeps working
  const good = spec.batches[0];
  out.bad = [];
  for (const bad of [{ task: good[0].task, text: "" }, { task: good[0].task, text: "word ".repeat(spec.longWords ?? 2000) }]) {
    await setRows(p, [good[0], bad]);
    await clickAndWait(p, "#run");
    out.bad.push({ state: await state(p), error: await errorText(p),
                   marked: await p.$$eval("#rows tbody tr", (trs) => trs.map((tr) => tr.classList.contains("bad"))) });
  }
  await setRows(p, [good[0]]);
  await clickAndWait(p, "#run");
  out.afterBad = { state: await state(p), error: await errorText(p), rows: await readRows(p) };
  out.firstRequests = first.requests;
  await p.close();
  // 3. second visit, same profile: the bundle's files come from Cache Storage
  const second = await openPage();
  out.secondLoad = { state: await state(second.page), error: await errorText(second.page),
                     ...(await second.page.evaluate("window.__page.load")) };
  await setRows(second.page, spec.batches[0]);
  await clickAndWait(second.page, "#run");
  out.secondRows = await readRows(second.page);
  out.secondRequests = second.requests;
} catch (e) {
  if (!e?.done) out.driverError = String(e?.stack ?? e);
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
