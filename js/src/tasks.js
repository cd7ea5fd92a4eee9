// tasks.json: task names, ids, kinds, label sets and prompt templates, checked as the Python
// TaskRegistry checks them (alter_edge/tasks.py).

import { BundleError, TaskError, show } from "./errors.js";

/**
 * @typedef {{name: string, id: number, kind: "classify"|"generate", labels: string[],
 *            promptTemplate: string}} TaskSpec
 */

/**
 * @param {any} d tasks.json, parsed
 * @param {string} where how errors name the file
 * @returns {TaskSpec[]} in id order
 */
export function parseTasks(d, where) {
  const bad = (why) => new BundleError(`${where}: ${why}`);
  if (!d || typeof d !== "object" || !Array.isArray(d.tasks)) throw bad("must be an object with a 'tasks' list");
  if ((d.format_version ?? 1) !== 1) throw bad(`format_version ${show(d.format_version)} is not supported (this runtime reads 1)`);
  const tasks = d.tasks.map((t, i) => {
    if (!t || typeof t !== "object") throw bad(`tasks[${i}] must be an object`);
    const { name, id, kind } = t;
    const labels = t.labels ?? [];
    const promptTemplate = t.prompt_template ?? "{input}\nAnswer:";
    if (typeof name !== "string" || !name) throw bad(`tasks[${i}].name must be a non-empty string, got ${show(name)}`);
    if (!Number.isInteger(id)) throw bad(`task ${show(name)}: id must be an integer, got ${show(id)}`);
    if (kind !== "classify" && kind !== "generate") throw bad(`task ${show(name)}: kind ${show(kind)} is not one of classify, generate`);
    if (!Array.isArray(labels) || labels.some((l) => typeof l !== "string" || !l)) {
      throw bad(`task ${show(name)}: labels must be a list of non-empty strings, got ${show(labels)}`);
    }
    if (kind === "classify" && labels.length < 2) throw bad(`task ${show(name)}: a classify task needs at least 2 labels`);
    if (new Set(labels).size !== labels.length) throw bad(`task ${show(name)}: labels repeat`);
    if (typeof promptTemplate !== "string" || !promptTemplate.includes("{input}") ||
        /[{}]/.test(promptTemplate.replace(/\{\{|\}\}|\{input\}/g, ""))) {
      throw bad(`task ${show(name)}: prompt_template ${show(promptTemplate)} may hold only the field {input} ` +
                "(braces doubled as {{ }})");
    }
    return { name, id, kind, labels: [...labels], promptTemplate };
  });
  if (!tasks.length) throw bad("a task registry needs at least one task");
  tasks.sort((a, b) => a.id - b.id);
  if (tasks.some((t, i) => t.id !== i)) throw bad(`task ids must be 0..${tasks.length - 1} without gaps`);
  if (new Set(tasks.map((t) => t.name)).size !== tasks.length) throw bad("task names repeat");
  return tasks;
}

/** prompt_template.format(input=text) as Python does it: {input} is the text, {{ and }} braces. */
export function renderPrompt(template, text) {
  return template.replace(/\{\{|\}\}|\{input\}/g, (m) => (m === "{input}" ? text : m[0]));
}

/** alter_edge.prompts.truncate_middle: keep the first and last halves. */
export function truncateMiddle(ids, maxTokens) {
  if (ids.length <= maxTokens) return ids;
  const head = Math.floor(maxTokens / 2);
  return [...ids.slice(0, head), ...ids.slice(ids.length - (maxTokens - head))];
}

/** The task named `name`, or a TaskError listing the known ones. */
export function taskNamed(tasks, name) {
  const t = tasks.find((x) => x.name === name);
  if (!t) throw new TaskError(`unknown task ${show(name)}; known tasks: ${tasks.map((x) => x.name).join(", ")}`);
  return t;
}
