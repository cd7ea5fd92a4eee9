// The wllama anchor (llama.cpp in WASM, @wllama/wllama) on a GGUF file served under /gguf/:
// load, one warm-up completion, one timed completion of newTokens tokens (greedy, eos ignored),
// streamed; time to first token and decode tokens/s measured as bench.mjs measures them.
// Query: threads, newTokens, text, gguf (file name). Batch 1 only: wllama decodes one sequence.
import { Wllama } from "/vendor/wllama/index.js";

const q = new URLSearchParams(location.search);
const threads = Number(q.get("threads") ?? 2), newTokens = Number(q.get("newTokens") ?? 32);
const text = q.get("text") ?? "the quick brown fox";

async function timed(w) {
  const start = performance.now();
  let first = null, last = null, chunks = 0;
  const stream = await w.createCompletion({ prompt: `${text}\nAnswer:`, max_tokens: newTokens, temperature: 0,
                                            ignore_eos: true, stream: true });
  for await (const _ of stream) {
    const now = performance.now();
    first ??= now;
    chunks++;
    last = now;
  }
  // one chunk per token: the first comes with the prompt step
  return { ttft_s: (first - start) / 1000, decode_tps: (1000 * (chunks - 1)) / (last - first), tokens: chunks };
}

try {
  const w = new Wllama({ default: "/vendor/wllama/wasm/wllama.wasm" }, { logger: { debug() {}, log() {}, warn() {}, error: console.error } });
  const t0 = performance.now();
  await w.loadModelFromUrl(`/gguf/${q.get("gguf")}`, { n_threads: threads, n_ctx: 512, useCache: false });
  const load_s = (performance.now() - t0) / 1000;
  await timed(w);
  const r = await timed(w);
  window.__result = { engine: `wllama-${threads}t`, batch: 1, new_tokens: newTokens, threads, graph: q.get("gguf"),
                      load_s, ...r, crossOriginIsolated };
} catch (e) {
  window.__result = { error: String(e?.message ?? e) };
}
document.getElementById("out").textContent = JSON.stringify(window.__result, null, 1);
