// Typed errors, as the Python runtime's (alter_edge/errors.py): each carries one line that says
// what is wrong and what is allowed.

/** Base class of every error this package throws on purpose. */
export class AlterEdgeError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = new.target.name;
  }
}

/** A bundle that is missing, corrupt, tampered with or mismatched. */
export class BundleError extends AlterEdgeError {}

/** An option value outside what is allowed. */
export class ConfigError extends AlterEdgeError {}

/** An unknown task, or a request that does not fit the task. */
export class TaskError extends AlterEdgeError {}

/** An input text that cannot be a model input (empty, too long). */
export class DataError extends AlterEdgeError {}

/** A request stopped by its AbortSignal. */
export class AbortError extends AlterEdgeError {
  constructor(message = "the request was aborted") {
    super(message);
    this.name = "AbortError";
  }
}

/** A value shown in an error message: JSON where it can be, cut to `limit` characters. */
export function show(value, limit = 60) {
  let text;
  try {
    text = typeof value === "bigint" ? `${value}n` : JSON.stringify(value);
  } catch {
    text = String(value);
  }
  if (text === undefined) text = String(value);
  return text.length <= limit ? text : text.slice(0, limit) + "...";
}
