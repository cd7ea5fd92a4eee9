// Seeded sampling repeats itself; an AbortSignal stops a request.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { AbortError, EdgeModel, RowRandom } from "alter-edge";

import { bundle, expected, needs } from "../test-support/fixtures.js";

describe("sampling and abort", needs, () => {
  test("a row's random stream draws numpy's default_rng([seed, row]) numbers, exactly", () => {
    for (const { seed, row, draws } of expected.rng) {
      const r = new RowRandom(seed, row);
      assert.deepEqual(draws.map(() => r.random()), draws, `seed ${seed} row ${row}`);
    }
  });

  for (const precision of ["fp32", "int8"]) {
    test(`${precision}: seeded sampled tokens equal the Python runtime's (temperature, top-k, top-p)`, async () => {
      const model = await EdgeModel.load(bundle, { threads: 1, precision });
      const { texts, tasks } = expected.precisions[precision].mixed;
      for (const { options: o, out } of expected.precisions[precision].sampled) {
        const got = await model.generate(texts, {
          tasks, maxNewTokens: expected.max_new_tokens, temperature: o.temperature, seed: o.seed,
          ...(o.top_k ? { topK: o.top_k } : {}), ...(o.top_p ? { topP: o.top_p } : {}),
        });
        assert.deepEqual(got.map((g) => g.tokenIds), out.map((g) => g.token_ids), JSON.stringify(o));
        assert.deepEqual(got.map((g) => g.text), out.map((g) => g.text));
        assert.deepEqual(got.map((g) => g.finishReason), out.map((g) => g.finish_reason));
      }
    });
  }

  test("a seeded sampled run repeats itself, row for row; other seeds differ", async () => {
    const model = await EdgeModel.load(bundle, { threads: 1 });
    const { texts, tasks } = expected.precisions.int8.mixed;
    const opts = { tasks, maxNewTokens: 10, temperature: 1.5, topK: 20, topP: 0.95, seed: 1234, ignoreEos: true };
    const a = await model.generate(texts, opts);
    const b = await model.generate(texts, opts);
    assert.deepEqual(a.map((g) => g.tokenIds), b.map((g) => g.tokenIds));
    assert.ok(a.every((g) => g.tokenIds.length === 10));
    const greedy = await model.generate(texts, { tasks, maxNewTokens: 10, ignoreEos: true });
    assert.notDeepEqual(a.map((g) => g.tokenIds), greedy.map((g) => g.tokenIds), "sampling at temperature 1.5 is not greedy");
    const others = [];
    for (const seed of [1, 2, 3]) others.push((await model.generate(texts, { ...opts, seed })).map((g) => g.tokenIds));
    assert.ok(others.some((o) => JSON.stringify(o) !== JSON.stringify(a.map((g) => g.tokenIds))));
    // row r draws from its own stream (seed, r): the first row alone draws what it drew in the batch
    const [alone] = await model.generate(texts[0], { ...opts, tasks: [tasks[0]] });
    assert.deepEqual(alone.tokenIds, a[0].tokenIds);
    // topK 1 is greedy whatever the seed
    const k1 = await model.generate(texts, { tasks, maxNewTokens: 10, temperature: 1, topK: 1, seed: 9, ignoreEos: true });
    assert.deepEqual(k1.map((g) => g.tokenIds), greedy.map((g) => g.tokenIds));
  });

  test("two requests at once each get what they get alone; load reports each file read", async () => {
    const events = [];
    const model = await EdgeModel.load(bundle, { threads: 1, precision: "int8", onProgress: (e) => events.push(e) });
    assert.deepEqual(events.map((e) => e.file),
                     ["manifest.json", "tasks.json", "tokenizer.json", "model.int8.onnx", "weights.int8.bin"]);
    assert.ok(events.every((e) => e.done && e.loaded > 0 && e.loaded === e.total));
    const { texts, tasks, out } = expected.precisions.int8.mixed;
    const [a, b, c] = await Promise.all([
      model.generate(texts, { tasks, maxNewTokens: expected.max_new_tokens }),
      model.generate(texts.slice(0, 2), { tasks: tasks.slice(0, 2), maxNewTokens: expected.max_new_tokens }),
      model.classify(expected.precisions.int8.classify.colour.texts, { task: "colour" }),
    ]);
    assert.deepEqual(a.map((g) => g.tokenIds), out.map((g) => g.token_ids));
    assert.deepEqual(b.map((g) => g.tokenIds), out.slice(0, 2).map((g) => g.token_ids));
    assert.deepEqual(c.map((x) => x.label), expected.precisions.int8.classify.colour.out.map((x) => x.label));
  });

  test("an aborted signal stops generate, classify and a stream with an AbortError", async () => {
    const model = await EdgeModel.load(bundle, { threads: 1 });
    const done = new AbortController();
    done.abort();
    await assert.rejects(model.generate("swap red blue", { task: "echo", signal: done.signal }), AbortError);
    await assert.rejects(model.classify("is red a colour", { task: "colour", signal: done.signal }), AbortError);
    const ctl = new AbortController();
    const seen = [];
    await assert.rejects(async () => {
      for await (const ev of model.stream(["swap red blue", "swap cat dog"], { task: "echo", maxNewTokens: 20, ignoreEos: true, signal: ctl.signal })) {
        seen.push(ev);
        if (seen.length === 3) ctl.abort(new Error("user left"));
      }
    }, (e) => e instanceof AbortError && /aborted \(user left\)/.test(e.message));
    assert.ok(seen.length >= 3 && seen.length < 40, `events before the abort took effect: ${seen.length}`);
    // the model serves the next request
    const [g] = await model.generate("swap red blue", { task: "echo", maxNewTokens: 3 });
    assert.ok(g.finishReason);
  });
});
