// One timed run of the alter-edge JavaScript runtime in this page (onnxruntime-web, WASM), what
// node_bench.mjs and js_bench.py's Python worker do: load the bundle, one warm-up request, one
// timed request (the bundle's tasks in turn, one per row, the same text in every row, eos
// ignored). Query: threads, batch, newTokens, text, precision. Result in window.__result.
import { EdgeModel } from "/js/web/src/index.js";

const q = new URLSearchParams(location.search);
const threads = Number(q.get("threads") ?? 2), batch = Number(q.get("batch") ?? 1);
const newTokens = Number(q.get("newTokens") ?? 32), text = q.get("text") ?? "the quick brown fox";

async function timed(model, tasks) {
  const start = performance.now();
  let first = null, last = null, tokens = 0, firstStep = 0;
  const seen = new Array(batch).fill(0);
  for await (const ev of model.stream(new Array(batch).fill(text), { tasks, maxNewTokens: newTokens, ignoreEos: true })) {
    if (ev.tokenId === null) continue;
    const now = performance.now();
    first ??= now;
    if (seen[ev.row]++ === 0) firstStep++;
    tokens++;
    last = now;
  }
  return { ttft_s: (first - start) / 1000, decode_tps: (1000 * (tokens - firstStep)) / (last - first), tokens };
}

try {
  const t0 = performance.now();
  const model = await EdgeModel.load("/bundle/", { threads, precision: q.get("precision") || undefined, cache: false,
                                                   wasmPaths: "/vendor/ort/" });
  const load_s = (performance.now() - t0) / 1000;
  const names = model.tasks.map((t) => t.name);
  const tasks = Array.from({ length: batch }, (_, i) => names[i % names.length]);
  await timed(model, tasks); // warm-up
  const r = await timed(model, tasks);
  const graph = model.graphForRequest(tasks).path;
  window.__result = { engine: `chromium-${threads}t`, batch, new_tokens: newTokens, threads, graph, load_s, ...r,
                      crossOriginIsolated };
} catch (e) {
  window.__result = { error: String(e?.message ?? e) };
}
document.getElementById("out").textContent = JSON.stringify(window.__result, null, 1);
