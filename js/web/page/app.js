// The demo page: load a bundle (Cache Storage keyed by its manifest), list its tasks, run one
// batch mixing them with each row's text streamed, and show load time, time to first token and
// tokens/s. Query parameters: bundle (URL, default /bundle/), threads (WASM threads, default
// min(4, cores)), precision (fp32|int8|int4), maxNewTokens, cache=0 (fetch every file).
//
// State for tests and tools: document.body.dataset.state is loading | ready | running | error,
// window.__page holds the figures of the last load, run and scoring.

import { EdgeModel } from "/js/web/src/index.js";

const $ = (id) => document.getElementById(id);
const q = new URLSearchParams(location.search);
const page = (window.__page = { load: null, run: null, classify: null, error: null });
const SAMPLES = [
  "The film was a delight from start to finish.",
  "Is the sky green?",
  "The service was slow and the food was cold.",
  "Translate the word 'cat' into French.",
];

let model = null;
let controller = null;

function setState(s) {
  document.body.dataset.state = s;
  const busy = s === "running" || s === "loading";
  $("run").disabled = busy || !model;
  $("classify").disabled = busy || !model || !model.tasks.some((t) => t.kind === "classify");
  $("stop").disabled = s !== "running";
}

function showError(message) {
  page.error = message;
  $("error").textContent = message;
  $("error").hidden = false;
  setState("error");
}

function clearError() {
  page.error = null;
  $("error").hidden = true;
  $("error").textContent = "";
  for (const tr of $("rows").tBodies[0].rows) tr.classList.remove("bad");
}

const fmtBytes = (n) => (n >= 1e6 ? `${(n / 1e6).toFixed(1)} MB` : `${(n / 1e3).toFixed(1)} kB`);
const fmtMs = (ms) => (ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${ms.toFixed(0)} ms`);

// -- rows ----------------------------------------------------------------------------------------

function addRow(task, text) {
  const tr = document.createElement("tr");
  const sel = document.createElement("select");
  sel.className = "task";
  for (const t of model.tasks) sel.add(new Option(t.name, t.name, false, t.name === task));
  const input = Object.assign(document.createElement("input"), { type: "text", className: "text", value: text });
  const out = Object.assign(document.createElement("td"), { className: "out" });
  const labels = Object.assign(document.createElement("td"), { className: "labels" });
  const del = Object.assign(document.createElement("button"), { type: "button", textContent: "×", title: "remove this row" });
  del.addEventListener("click", () => tr.remove());
  const cell = (el) => { const td = document.createElement("td"); td.append(el); return td; };
  tr.append(cell(sel), cell(input), out, labels, cell(del));
  $("rows").tBodies[0].append(tr);
  return tr;
}

function readRows() {
  return [...$("rows").tBodies[0].rows].map((tr) => ({
    tr, task: tr.querySelector("select.task").value, text: tr.querySelector("input.text").value,
    out: tr.querySelector("td.out"), labels: tr.querySelector("td.labels"),
  }));
}

// Each row's prompt checked before the batch starts: a bad row is marked and named.
function checkRows(rows) {
  if (!rows.length) throw new Error("add a row first");
  rows.forEach((r, i) => {
    try {
      model.promptIds(r.text, r.task);
    } catch (e) {
      r.tr.classList.add("bad");
      throw new Error(`row ${i + 1} (${r.task}): ${e.message}`);
    }
  });
}

// -- actions -------------------------------------------------------------------------------------

async function generate() {
  clearError();
  const rows = readRows();
  const maxNewTokens = Number($("max-new").value);
  try {
    checkRows(rows);
    for (const r of rows) {
      r.out.textContent = "";
      delete r.out.dataset.finish;
      r.out.dataset.tokenIds = "[]";
    }
    setState("running");
    controller = new AbortController();
    const ids = rows.map(() => []);
    const t0 = performance.now();
    let tFirst = null, tokens = 0, firstStepTokens = 0;
    const events = model.stream(rows.map((r) => r.text), { tasks: rows.map((r) => r.task), maxNewTokens,
                                                              signal: controller.signal });
    for await (const ev of events) {
      const r = rows[ev.row];
      if (ev.tokenId !== null) {
        if (tFirst === null) tFirst = performance.now();
        if (ids[ev.row].length === 0) firstStepTokens++;
        ids[ev.row].push(ev.tokenId);
        r.out.dataset.tokenIds = JSON.stringify(ids[ev.row]);
        tokens++;
      }
      r.out.textContent += ev.text;
      if (ev.finishReason) r.out.dataset.finish = ev.finishReason;
    }
    const tEnd = performance.now();
    const decodeTokens = tokens - firstStepTokens;
    const tps = decodeTokens > 0 ? (1000 * decodeTokens) / (tEnd - tFirst) : NaN;
    page.run = { rows: rows.map((r, i) => ({ task: r.task, text: r.out.textContent, tokenIds: ids[i],
                                             finishReason: r.out.dataset.finish ?? null })),
                 ttftMs: tFirst === null ? null : tFirst - t0, tokensPerSecond: tps, tokens, totalMs: tEnd - t0 };
    $("m-ttft").textContent = tFirst === null ? "–" : fmtMs(tFirst - t0);
    $("m-tps").textContent = Number.isFinite(tps) ? tps.toFixed(1) : "–";
    $("m-tokens").textContent = `${tokens} in ${fmtMs(tEnd - t0)}`;
    setState("ready");
  } catch (e) {
    showError(e?.name === "AbortError" ? "stopped" : String(e?.message ?? e));
  } finally {
    controller = null;
  }
}

async function classify() {
  clearError();
  const rows = readRows();
  try {
    checkRows(rows);
    setState("running");
    const results = [];
    for (const r of rows) {
      const spec = model.tasks.find((t) => t.name === r.task);
      if (spec.kind !== "classify") {
        r.labels.textContent = "(not a classify task)";
        results.push(null);
        continue;
      }
      const [c] = await model.classify([r.text], { task: r.task });
      r.labels.textContent = Object.entries(c.scores).map(([l, s]) => `${l} ${s.toFixed(3)}`).join(" · ") +
        ` → ${c.label} (${(100 * c.probability).toFixed(1)}%)`;
      r.labels.dataset.scores = JSON.stringify(c.scores);
      results.push(c);
    }
    page.classify = results;
    setState("ready");
  } catch (e) {
    showError(String(e?.message ?? e));
  }
}

// -- load ----------------------------------------------------------------------------------------

async function load() {
  setState("loading");
  const bundle = q.get("bundle") ?? "/bundle/";
  const threads = Number(q.get("threads") ?? Math.min(4, navigator.hardwareConcurrency || 1));
  const got = new Map();
  const onProgress = (e) => {
    got.set(e.file, e);
    const loaded = [...got.values()].reduce((a, x) => a + (x.loaded || 0), 0);
    const total = [...got.values()].reduce((a, x) => a + (x.total || x.loaded || 0), 0);
    $("progress").value = total ? loaded / total : 0;
    $("progress-text").textContent = `${e.cached ? "cache" : "download"}: ${e.file} ${fmtBytes(e.loaded)}` +
      (e.total ? ` / ${fmtBytes(e.total)}` : "");
  };
  const t0 = performance.now();
  try {
    if (threads > 1 && !crossOriginIsolated) {
      throw new Error("this page is not cross-origin isolated, so WASM runs one thread: serve it with " +
                      "Cross-Origin-Opener-Policy: same-origin and Cross-Origin-Embedder-Policy: require-corp " +
                      "(alter-edge web does), or pass ?threads=1");
    }
    model = await EdgeModel.load(bundle, { threads, precision: q.get("precision") ?? undefined, onProgress,
                                           cache: q.get("cache") !== "0", wasmPaths: "/vendor/ort/" });
  } catch (e) {
    showError(`the bundle could not be loaded: ${String(e?.message ?? e)}`);
    $("bundle-info").textContent = `${bundle}: not loaded`;
    $("add-row").disabled = true;
    return;
  }
  const loadMs = performance.now() - t0;
  const stats = model.cacheStats ?? { network: [], cached: [] };
  page.load = { ms: loadMs, threads, crossOriginIsolated, network: stats.network, cached: stats.cached,
                tasks: model.tasks.map((t) => t.name) };
  $("progress").value = 1;
  $("progress-text").textContent = "loaded";
  $("m-load").textContent = fmtMs(loadMs);
  $("m-threads").textContent = `${threads}${crossOriginIsolated ? " (cross-origin isolated)" : ""}`;
  $("m-cache").textContent = `${stats.network.length} downloaded, ${stats.cached.length} from cache`;
  const graphs = model.graphs.map((g) => `${g.path}`).join(", ");
  $("bundle-info").textContent = `${bundle} · ${model.manifest.base_model?.model_type ?? ""} · graphs: ${graphs}`;
  const tbody = $("tasks").tBodies[0];
  for (const t of model.tasks) {
    const tr = tbody.insertRow();
    for (const v of [t.id, t.name, t.kind, (t.labels ?? []).join(", ") || "–"]) tr.insertCell().textContent = String(v);
  }
  const maxNew = Number(q.get("maxNewTokens") ?? Math.min(16, model.maxNewTokens));
  $("max-new").value = String(maxNew);
  model.tasks.forEach((t, i) => addRow(t.name, SAMPLES[i % SAMPLES.length]));
  setState("ready");
}

$("run").addEventListener("click", generate);
$("classify").addEventListener("click", classify);
$("stop").addEventListener("click", () => controller?.abort());
$("add-row").addEventListener("click", () => model && addRow(model.tasks[0].name, ""));
window.addEventListener("unhandledrejection", (e) => showError(`unexpected: ${String(e.reason?.message ?? e.reason)}`));
load();
