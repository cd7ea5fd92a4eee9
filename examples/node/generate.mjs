// Generate or classify with an alter-edge bundle from Node.js, through the alter-edge package
// (js/ in this repository; docs/javascript.md): no Python, no torch.
//
//   node generate.mjs BUNDLE_DIR --task NAME [--graph task|multi] [--precision fp32|int8|int4]
//                     [--max-new-tokens N] [--temperature T] [--seed S] [--stop STR]
//                     [--threads N] [--truncate] [--stream] [--classify] [--json] TEXT...
//
// Several TEXTs run as one batch. --graph task loads only the task's own graph (what an app
// doing one task ships and holds in memory); multi (the default) the multi-task graph.
// --json prints one JSON object per text (tests/test_node_example.py reads it).

import { parseArgs } from "node:util";

import { AlterEdgeError, EdgeModel } from "alter-edge";

const USAGE = "usage: node generate.mjs BUNDLE_DIR --task NAME [--graph task|multi] [--precision fp32|int8|int4] " +
  "[--max-new-tokens N] [--temperature T] [--seed S] [--stop STR] [--threads N] [--truncate] [--stream] " +
  "[--classify] [--json] TEXT...";

const number = (v) => (v === undefined ? undefined : Number(v));

async function main() {
  const { values: o, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      task: { type: "string" }, graph: { type: "string", default: "multi" }, precision: { type: "string" },
      "max-new-tokens": { type: "string" }, temperature: { type: "string" }, seed: { type: "string" },
      stop: { type: "string", multiple: true }, threads: { type: "string" }, truncate: { type: "boolean" },
      stream: { type: "boolean" }, classify: { type: "boolean" }, json: { type: "boolean" },
    },
  });
  const [dir, ...texts] = positionals;
  if (!dir || !texts.length || !o.task || !["task", "multi"].includes(o.graph)) throw new AlterEdgeError(USAGE);

  const model = await EdgeModel.load(dir, {
    precision: o.precision, threads: number(o.threads), tasks: o.graph === "task" ? [o.task] : undefined,
  });
  const graph = model.graphForRequest([o.task]);
  if (o.classify) {
    const out = await model.classify(texts, { task: o.task, truncate: o.truncate });
    for (const c of out) console.log(o.json ? JSON.stringify({ ...c, graph: graph.path }) : c.label);
    return;
  }
  const options = {
    task: o.task, maxNewTokens: number(o["max-new-tokens"]), temperature: number(o.temperature),
    seed: number(o.seed), stop: o.stop, truncate: o.truncate,
  };
  for (const k of Object.keys(options)) if (options[k] === undefined) delete options[k];
  if (o.stream) { // each row's text as it comes
    for await (const ev of model.stream(texts, options)) {
      if (ev.text) process.stdout.write(texts.length > 1 ? `[${ev.row}] ${ev.text}\n` : ev.text);
      if (ev.finishReason && texts.length === 1) process.stdout.write("\n");
    }
    return;
  }
  const out = await model.generate(texts, options);
  out.forEach((g, i) => {
    if (o.json) {
      const prompt = model.promptIds(texts[i], o.task, { truncate: o.truncate ?? false });
      console.log(JSON.stringify({
        task: g.task, graph: graph.path, precision: graph.precision, prompt_ids: prompt.ids, truncated: g.truncated,
        token_ids: g.tokenIds, text: g.text, finish_reason: g.finishReason,
      }));
    } else {
      console.log(g.text);
      console.error(`[${graph.path}] token ids: ${JSON.stringify(g.tokenIds)} (${g.finishReason})`);
    }
  });
}

try {
  await main();
} catch (e) {
  // one line for a bad bundle, request or argument; a full trace for anything unexpected
  console.error(e instanceof AlterEdgeError || e?.code?.startsWith?.("ERR_PARSE_ARGS") ? `error: ${e.message}` : e);
  process.exit(1);
}
