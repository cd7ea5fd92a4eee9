// Times the steps of one bundle graph in onnxruntime-web (WASM) and, with ?profile=1, collects
// onnxruntime's own per-node profile (printed to the console by the WASM build).
//
//   /bench/profile.html?graph=model.int8.onnx&threads=2&prompt=32&steps=16&profile=1
//   /bench/profile.html?micro=mm-nbits8.onnx&threads=2&rows=1&runs=50     (a one-op graph)
//   &blob=1: external data passed as a Blob instead of a Uint8Array
//
// The result lands in window.__result (read by benchmarks/js_bench/profile.mjs via puppeteer).
import * as ort from "/vendor/ort/ort.wasm.min.mjs";

const q = new URLSearchParams(location.search);
const out = document.getElementById("out");
const threads = Number(q.get("threads") ?? 2);
ort.env.wasm.numThreads = threads;
ort.env.wasm.wasmPaths = "/vendor/ort/";
ort.env.logLevel = q.get("profile") ? "verbose" : "warning";

async function bytes(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return new Uint8Array(await r.arrayBuffer());
}

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length ? s[(s.length - 1) >> 1] : NaN; };

async function open(graphUrl, externals) {
  const externalData = [];
  // ?blob=1: the weights as a Blob (as the demo page passes them from Cache Storage), else bytes
  for (const [path, url] of externals) {
    externalData.push({ path, data: q.get("blob") ? await (await fetch(url)).blob() : await bytes(url) });
  }
  const t0 = performance.now();
  const session = await ort.InferenceSession.create(await bytes(graphUrl), {
    executionProviders: ["wasm"], graphOptimizationLevel: "all", externalData,
    enableProfiling: Boolean(q.get("profile")), logSeverityLevel: q.get("profile") ? 0 : 2,
  });
  return { session, loadMs: performance.now() - t0 };
}

async function bundleSteps() {
  const manifest = JSON.parse(new TextDecoder().decode(await bytes("/bundle/manifest.json")));
  const g = manifest.graphs.find((x) => x.path === q.get("graph"));
  if (!g) throw new Error(`no graph ${q.get("graph")} in the bundle`);
  const { session, loadMs } = await open(`/bundle/${g.path}`, (g.external_data ?? []).map((e) => [e, `/bundle/${e}`]));
  const kv = manifest.kv_cache;
  const batch = Number(q.get("batch") ?? 1), promptLen = Number(q.get("prompt") ?? 32), steps = Number(q.get("steps") ?? 16);
  const i64 = (n, f, dims) => new ort.Tensor("int64", BigInt64Array.from({ length: n }, (_, i) => BigInt(f(i))), dims);
  const names = (p) => Array.from({ length: kv.num_layers }, (_, i) => p.replaceAll("{i}", i));
  const pk = names(kv.past_key), pv = names(kv.past_value), ck = names(kv.present_key), cv = names(kv.present_value);
  let past = [...pk, ...pv].map((n) => [n, new ort.Tensor("float32", new Float32Array(0), [batch, kv.num_kv_heads, 0, kv.head_dim])]);
  const multi = session.inputNames.includes("task_ids");
  let n = promptLen, ids = i64(batch * promptLen, (i) => 100 + (i * 37) % 5000, [batch, promptLen]);
  const times = [];
  for (let s = 0; s <= steps; s++) {
    const feeds = Object.fromEntries(past);
    feeds.input_ids = ids;
    feeds.attention_mask = i64(batch * n, () => 1, [batch, n]);
    if (multi) feeds.task_ids = i64(batch, (i) => i % Math.max(1, (manifest.tasks ?? []).length || 1), [batch]);
    const t0 = performance.now();
    const o = await session.run(feeds);
    times.push(performance.now() - t0);
    past = pk.map((x, i) => [x, o[ck[i]]]).concat(pv.map((x, i) => [x, o[cv[i]]]));
    ids = i64(batch, () => 200 + s, [batch, 1]);
    n += 1;
  }
  if (q.get("profile")) await session.endProfiling();
  const decode = times.slice(1);
  return { graph: g.path, threads, batch, promptLen, loadMs, promptMs: times[0], decodeMedianMs: median(decode),
           tokensPerSecond: (1000 * batch) / median(decode), crossOriginIsolated, times };
}

async function micro() {
  const { session, loadMs } = await open(`/bench/micro/${q.get("micro")}`, []);
  const rows = Number(q.get("rows") ?? 1), runs = Number(q.get("runs") ?? 30);
  const meta = session.inputMetadata?.[0];
  const k = Number(q.get("k"));
  const x = new ort.Tensor("float32", Float32Array.from({ length: rows * k }, (_, i) => Math.sin(i)), [rows, k]);
  const times = [];
  for (let r = 0; r < runs + 3; r++) {
    const t0 = performance.now();
    await session.run({ [session.inputNames[0]]: x });
    if (r >= 3) times.push(performance.now() - t0);
  }
  if (q.get("profile")) await session.endProfiling();
  return { micro: q.get("micro"), threads, rows, loadMs, medianMs: median(times), crossOriginIsolated, meta: String(meta?.name ?? "") };
}

try {
  window.__result = q.get("micro") ? await micro() : await bundleSteps();
  out.textContent = JSON.stringify(window.__result, null, 1);
} catch (e) {
  window.__result = { error: String(e?.message ?? e) };
  out.textContent = `error: ${window.__result.error}`;
}
