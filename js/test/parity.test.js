// Greedy token ids and text, alone and in mixed-task batches, stop strings, streaming and label
// scores: the JavaScript runtime on onnxruntime-node against the Python runtime.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import { EdgeModel } from "alter-edge";

import { bundle, expected, needs } from "../test-support/fixtures.js";

const MAX_NEW = expected?.max_new_tokens;

for (const precision of ["fp32", "int8"]) {
  describe(`${precision} bundle on onnxruntime-node`, needs, () => {
    const want = expected?.precisions[precision];

    test("greedy ids and text equal Python's, each task alone, on its own graph and on the multi-task graph", async () => {
      const multi = await EdgeModel.load(bundle, { precision, threads: 1 });
      assert.deepEqual((await multi.openGraphs()).map((g) => g.kvMode), ["shared"]); // onnxruntime-node: in place
      for (const row of want.alone) {
        const model = row.graph === "task"
          ? await EdgeModel.load(bundle, { precision, threads: 1, tasks: [row.task] })
          : multi;
        assert.equal(model.graphForRequest([row.task]).path, row.path);
        assert.deepEqual(model.promptIds(row.input, row.task).ids, row.prompt_ids);
        const [g] = await model.generate(row.input, { task: row.task, maxNewTokens: MAX_NEW });
        assert.deepEqual(g.tokenIds, row.token_ids, `${row.task} on ${row.path}`);
        assert.equal(g.text, row.text);
        assert.equal(g.finishReason, row.finish_reason);
        assert.equal(g.task, row.task);
      }
    });

    test("a mixed-task batch on the multi-task graph gives Python's ids, text and finish reasons", async () => {
      const model = await EdgeModel.load(bundle, { precision, threads: 1 });
      const { texts, tasks, out } = want.mixed;
      assert.ok(new Set(tasks).size > 1);
      assert.equal(model.graphForRequest(tasks).task, null);
      const got = await model.generate(texts, { tasks, maxNewTokens: MAX_NEW });
      assert.deepEqual(got.map((g) => g.tokenIds), out.map((g) => g.token_ids));
      assert.deepEqual(got.map((g) => g.text), out.map((g) => g.text));
      assert.deepEqual(got.map((g) => g.finishReason), out.map((g) => g.finish_reason));
      assert.deepEqual(got.map((g) => g.task), tasks);
    });

    test("copy mode (a new present each step) gives the same mixed batch", async () => {
      const model = await EdgeModel.load(bundle, { precision, threads: 1, kvMode: "copy" });
      assert.deepEqual((await model.openGraphs()).map((g) => g.kvMode), ["copy"]);
      const { texts, tasks, out } = want.mixed;
      const got = await model.generate(texts, { tasks, maxNewTokens: MAX_NEW });
      assert.deepEqual(got.map((g) => g.tokenIds), out.map((g) => g.token_ids));
    });

    test("a stop string ends its row as in Python; the other rows go on", { skip: !want?.stop && "no stop case" }, async () => {
      const model = await EdgeModel.load(bundle, { precision, threads: 1 });
      const { texts, tasks } = want.mixed;
      const got = await model.generate(texts, { tasks, maxNewTokens: MAX_NEW, stop: [want.stop.stop] });
      assert.deepEqual(got.map((g) => g.tokenIds), want.stop.out.map((g) => g.token_ids));
      assert.deepEqual(got.map((g) => g.text), want.stop.out.map((g) => g.text));
      assert.deepEqual(got.map((g) => g.finishReason), want.stop.out.map((g) => g.finish_reason));
      assert.ok(got.some((g) => g.finishReason === "stop"));
    });

    test("stream: each row's deltas add up to its text, its last event carries the finish reason", async () => {
      const model = await EdgeModel.load(bundle, { precision, threads: 1 });
      const { texts, tasks, out } = want.mixed;
      const text = texts.map(() => "");
      const ids = texts.map(() => []);
      const finish = texts.map(() => null);
      for await (const ev of model.stream(texts, { tasks, maxNewTokens: MAX_NEW })) {
        assert.equal(finish[ev.row], null, "no event after a row's finish");
        text[ev.row] += ev.text;
        if (ev.tokenId !== null) ids[ev.row].push(ev.tokenId);
        finish[ev.row] = ev.finishReason;
      }
      assert.deepEqual(text, out.map((g) => g.text));
      assert.deepEqual(ids, out.map((g) => g.token_ids));
      assert.deepEqual(finish, out.map((g) => g.finish_reason));
    });

    test(`label scores equal Python's (within ${precision === "fp32" ? "1e-4" : "1e-3"})`, async () => {
      const model = await EdgeModel.load(bundle, { precision, threads: 1 });
      const tol = precision === "fp32" ? 1e-4 : 1e-3;
      for (const [task, { texts, out }] of Object.entries(want.classify)) {
        const got = await model.classify(texts, { task });
        assert.equal(got.length, out.length);
        got.forEach((c, i) => {
          assert.equal(c.label, out[i].label, `${task} row ${i}`);
          assert.ok(Math.abs(c.probability - out[i].probability) <= tol, `${task} probability ${c.probability} vs ${out[i].probability}`);
          assert.deepEqual(Object.keys(c.scores), Object.keys(out[i].scores));
          for (const [label, s] of Object.entries(out[i].scores)) {
            assert.ok(Math.abs(c.scores[label] - s) <= tol, `${task} ${label}: ${c.scores[label]} vs ${s}`);
          }
        });
      }
    });
  });
}

test("an over-long prompt is cut in the middle with truncate, as Python cuts it", needs, async () => {
  const { input, task, prompt_ids: ids, max_prompt_tokens: limit } = expected.truncate;
  const model = await EdgeModel.load(bundle, { threads: 1 });
  assert.deepEqual(model.promptIds(input, task, { truncate: true }), { ids, truncated: true });
  assert.equal(ids.length, limit);
  const [g] = await model.generate(input, { task, truncate: true, maxNewTokens: 2 });
  assert.equal(g.truncated, true);
});

test("a bundle without a multi-task graph runs a mixed batch task by task, each row on its task's graph", needs, async () => {
  const { cpSync, readFileSync, rmSync, writeFileSync } = await import("node:fs");
  const path = await import("node:path");
  const { scratch } = await import("../test-support/fixtures.js");
  const dir = path.join(scratch("no-multi"), "bundle");
  cpSync(bundle, dir, { recursive: true });
  const file = path.join(dir, "manifest.json");
  const m = JSON.parse(readFileSync(file, "utf8"));
  for (const g of m.graphs.filter((x) => x.task === null || x.task === undefined)) rmSync(path.join(dir, g.path));
  m.graphs = m.graphs.filter((x) => x.task !== null && x.task !== undefined);
  writeFileSync(file, JSON.stringify(m));
  const model = await EdgeModel.load(dir, { precision: "fp32", threads: 1 });
  const rows = expected.precisions.fp32.alone.filter((r) => r.graph === "task");
  assert.equal(model.graphForRequest(rows.map((r) => r.task)), null);
  const got = await model.generate(rows.map((r) => r.input), { tasks: rows.map((r) => r.task), maxNewTokens: MAX_NEW });
  assert.deepEqual(got.map((g) => g.tokenIds), rows.map((r) => r.token_ids));
  assert.deepEqual(got.map((g) => g.text), rows.map((r) => r.text));
  assert.deepEqual((await model.openGraphs()).map((g) => g.path).sort(), rows.map((r) => r.path).sort());
});
