// One timed run of the JavaScript runtime on onnxruntime-node (benchmarks/js_bench/js_bench.py
// starts it in a fresh process per round, beside the Python runtime on the same graph):
//
//   node node_bench.mjs BUNDLE --batch B --new-tokens N --threads T [--precision P] [--text TEXT]
//                     [--kv-mode auto|shared|copy]
//
// Rows take the bundle's tasks in turn (batch 1: the first task; batch > 1: mixed tasks, so the
// multi-task graph), every row the same text; eos is ignored so each row decodes N tokens. After
// one warm-up request it times one request and prints one JSON line: load seconds, time to first
// token, decode tokens/s (all rows' tokens after the first step, over the time after it), peak RSS.

import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";

import { EdgeModel } from "../../js/src/node.js"; // the package's Node.js entry, from this checkout

const { values: o, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    batch: { type: "string", default: "1" }, "new-tokens": { type: "string", default: "32" },
    threads: { type: "string", default: "2" }, precision: { type: "string" }, "kv-mode": { type: "string", default: "auto" },
    text: { type: "string", default: "the quick brown fox jumps over the lazy dog while the answer waits ." },
  },
});
const [bundle] = positionals;
const batch = Number(o.batch), newTokens = Number(o["new-tokens"]), threads = Number(o.threads);

function peakRssMb() {
  try {
    const m = /VmHWM:\s+(\d+)/.exec(readFileSync("/proc/self/status", "utf8"));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

const t0 = performance.now();
const model = await EdgeModel.load(bundle, { threads, precision: o.precision, kvMode: o["kv-mode"] });
const loadS = (performance.now() - t0) / 1000;
const names = model.tasks.map((t) => t.name);
const tasks = Array.from({ length: batch }, (_, i) => names[i % names.length]);
const texts = tasks.map(() => o.text);

// The first step gives every row one token (eos is ignored): time to first token is the time to
// the first event; decode is every later token over the time from the first step's last event.
async function timed() {
  const start = performance.now();
  let first = null, stepEnd = null, last = null, tokens = 0;
  for await (const ev of model.stream(texts, { tasks, maxNewTokens: newTokens, ignoreEos: true })) {
    if (ev.tokenId === null) continue;
    const now = performance.now();
    tokens += 1;
    if (tokens === 1) first = now;
    if (tokens === batch) stepEnd = now;
    last = now;
  }
  return { ttft_s: (first - start) / 1000, decode_tps: (tokens - batch) / ((last - stepEnd) / 1000), tokens };
}

await timed(); // warm-up
const r = await timed();
const graphs = await model.openGraphs();
console.log(JSON.stringify({
  engine: "node", batch, new_tokens: newTokens, threads, graph: graphs.map((g) => g.path).join(","),
  kv_mode: graphs.map((g) => g.kvMode).join(","), load_s: loadS, ...r, peak_rss_mb: peakRssMb(),
}));
