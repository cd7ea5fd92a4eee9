// Type declarations of the alter-edge package (the sources are plain JavaScript with JSDoc).

import type { InferenceSession } from "onnxruntime-common";

/** The onnxruntime module of the platform: onnxruntime-node, onnxruntime-web or onnxruntime-react-native. */
export type Backend = typeof import("onnxruntime-common");

export type Precision = "fp32" | "int8" | "int4";
export type KvMode = "auto" | "shared" | "copy";
export type FinishReason = "eos" | "stop" | "length";

export interface ProgressEvent {
  /** The bundle file being read. */
  file: string;
  /** Bytes read so far. */
  loaded: number;
  /** The file's size, when known. */
  total: number | null;
  /** Whether the file has been read whole. */
  done: boolean;
  /** A URL source with a cache: read from Cache Storage, not downloaded. */
  cached?: boolean;
}

/** Where a bundle's files come from (the platform layer). */
export interface BundleSource {
  /** How errors name the bundle (a directory, a URL). */
  label: string;
  /** A file's bytes; null when it is missing. */
  read(name: string): Promise<Uint8Array | null>;
  /** The file's sha256 (hex) without keeping its bytes; null when it is missing. */
  sha256?(name: string): Promise<string | null>;
  /** A path the backend opens itself (its weight files found beside it). */
  modelPath?(name: string): string;
  /** Every file name in the bundle ("/"-separated): unlisted files are refused when hashes are checked. */
  list?(): Promise<string[]>;
  /** What the backend may take as external data unread (a Blob, a URL) when hashes are not checked. */
  raw?(name: string): Promise<unknown>;
  /** A file's size in bytes (for progress events of files the backend opens by path). */
  size?(name: string): Promise<number | null>;
  /** Drop a cached copy that failed its hash check (the file is then read once more). */
  evict?(name: string): Promise<void>;
  /** Whether the source calls onProgress itself. */
  reportsProgress?: boolean;
}

/** A map of file names to contents: files a user picked, or an app's assets. */
export type FileMap = Map<string, Blob | ArrayBuffer | ArrayBufferView | string> |
  Record<string, Blob | ArrayBuffer | ArrayBufferView | string>;

/** What urlSource needs of Cache Storage. */
export interface CacheStorageLike {
  open(name: string): Promise<{
    match(url: string): Promise<Response | undefined>;
    put(url: string, response: Response): Promise<void>;
    delete?(url: string): Promise<boolean>;
  }>;
  keys?(): Promise<string[]>;
  delete?(name: string): Promise<boolean>;
}

export interface LoadOptions {
  /** The onnxruntime module (default in Node.js: onnxruntime-node). */
  backend?: Backend;
  /** fp32 | int8 | int4; default: the bundle's best (int8, then int4, then fp32). */
  precision?: Precision | null;
  /** Open only the graphs serving these tasks (each task's own graph where the bundle has one). */
  tasks?: string[];
  /** onnxruntime intra-op threads (onnxruntime-web: env.wasm.numThreads). */
  threads?: number | null;
  /** Check the sha256 of every file read against manifest.json (default true). */
  verify?: boolean;
  /** Called as bundle files are read (for a URL: as bytes arrive). */
  onProgress?: (event: ProgressEvent) => void;
  /** How the KV cache is kept: "auto" (default) writes it in place where the backend can. */
  kvMode?: KvMode;
  /**
   * A URL source: keep the files in Cache Storage (true: globalThis.caches, or a CacheStorage),
   * keyed by the base URL and the manifest's sha256, so a second load fetches only manifest.json.
   */
  cache?: boolean | CacheStorageLike;
  /** Extra onnxruntime session options (e.g. executionProviders: ["webgpu"]). */
  sessionOptions?: InferenceSession.SessionOptions;
}

export interface GenerateOptions {
  /** One task for every row ... */
  task?: string;
  /** ... or one task per row (rows of different tasks share one batch on the multi-task graph). */
  tasks?: string[];
  /** Default: the bundle's generation.max_new_tokens. */
  maxNewTokens?: number;
  /** 0 (default) = greedy; else 0.001..100. */
  temperature?: number;
  /** Nucleus sampling, in (0, 1]; 1 = off. */
  topP?: number;
  /** Keep the k most likely tokens; 0 = off. */
  topK?: number;
  /** Sampling seed: row r draws from numpy's default_rng([seed, r]), as the Python runtime. */
  seed?: number | null;
  /** A row ends when its text contains one of these (its text ends before it). */
  stop?: string | string[];
  /** Cut an over-long input in the middle to max_prompt_tokens (else a DataError). */
  truncate?: boolean;
  /** Stops the request with an AbortError. */
  signal?: AbortSignal;
  /** Benchmarks: run maxNewTokens steps whatever the model says. */
  ignoreEos?: boolean;
}

export interface ClassifyOptions {
  task: string;
  truncate?: boolean;
  signal?: AbortSignal;
}

export interface Generation {
  text: string;
  tokenIds: number[];
  task: string;
  finishReason: FinishReason;
  /** The prompt was cut in the middle to max_prompt_tokens. */
  truncated: boolean;
}

export interface TokenEvent {
  row: number;
  /** The token this event is for; null on a row's last event (unless a stop string ended it on a token). */
  tokenId: number | null;
  /** New text of the row, safe to show (may be empty). */
  text: string;
  finishReason: FinishReason | null;
}

export interface Classification {
  label: string;
  probability: number;
  /** Each label's log-likelihood after the prompt. */
  scores: Record<string, number>;
  task: string;
  truncated: boolean;
}

export interface TaskSpec {
  name: string;
  id: number;
  kind: "classify" | "generate";
  labels: string[];
  promptTemplate: string;
}

export interface GraphInfo {
  path: string;
  task: string | null;
  precision: Precision;
  sha256: string;
  externalData: string[];
}

export declare class EdgeModel {
  /**
   * Check and open a bundle: a BundleSource, a base URL, a map of file names to contents, or
   * (Node.js) a directory.
   */
  static load(source: BundleSource | string | URL | FileMap, options?: LoadOptions): Promise<EdgeModel>;
  readonly tasks: TaskSpec[];
  readonly graphs: GraphInfo[];
  readonly manifest: Record<string, any>;
  readonly precision: Precision | null;
  readonly maxNewTokens: number;
  readonly maxPromptTokens: number;
  readonly eosId: number;
  readonly padId: number;
  /** Seconds load() took. */
  readonly loadSeconds: number;
  readonly hasMultiTaskGraph: boolean;
  generate(texts: string | string[], options: GenerateOptions): Promise<Generation[]>;
  stream(texts: string | string[], options: GenerateOptions): AsyncGenerator<TokenEvent, void, undefined>;
  classify(texts: string | string[], options: ClassifyOptions): Promise<Classification[]>;
  promptIds(text: string, task: string, options?: { truncate?: boolean }): { ids: number[]; truncated: boolean };
  labelIds(task: string): number[][];
  /** The graph a request of these tasks runs on; null when rows must run task by task. */
  graphForRequest(taskNames: string[]): GraphInfo | null;
  openGraphs(): Promise<{ path: string; task: string | null; precision: Precision; kvMode: "shared" | "copy" }[]>;
  release(): Promise<void>;
}

export declare class AlterEdgeError extends Error {}
export declare class BundleError extends AlterEdgeError {}
export declare class ConfigError extends AlterEdgeError {}
export declare class TaskError extends AlterEdgeError {}
export declare class DataError extends AlterEdgeError {}
export declare class AbortError extends AlterEdgeError {}

export declare function urlSource(base: string | URL, options?: {
  fetch?: typeof fetch; init?: RequestInit; onProgress?: (event: ProgressEvent) => void;
  cache?: boolean | CacheStorageLike; label?: string;
}): BundleSource & { stats: { network: string[]; cached: string[] } };
/** The prefix of the Cache Storage caches URL sources keep. */
export declare const CACHE_PREFIX: string;
export declare function fileMapSource(files: FileMap, options?: { label?: string }): BundleSource;
export declare function resolveSource(source: unknown,
  options?: { onProgress?: (event: ProgressEvent) => void; cache?: boolean | CacheStorageLike },
  directory?: (path: string) => BundleSource): BundleSource;

export interface Tokenizer {
  encode(text: string): number[];
  decode(ids: number[]): string;
  vocabSize: number;
}
export declare function loadTokenizer(json: string, where: string): Tokenizer;

export declare class RowText {
  constructor(tokenizer: { decode(ids: number[]): string }, stop: string[]);
  readonly text: string;
  readonly stopped: boolean;
  readonly ids: number[];
  push(tokenId: number): string;
  finish(): string;
}

/** numpy's default_rng([seed, row]) (SeedSequence + PCG64): a row's sampling stream. */
export declare class RowRandom {
  constructor(seed: number, row: number);
  random(): number;
  next64(): bigint;
}

export interface SamplingParams {
  maxNewTokens: number; temperature: number; topK: number; topP: number; seed: number | null;
  stop: string[]; ignoreEos: boolean;
}
export declare function samplingParams(options: GenerateOptions, defaultMaxNewTokens: number): SamplingParams;
export declare class TokenPicker {
  constructor(params: SamplingParams);
  pick(logits: Float32Array, row: number, vocab: number, stream: number): number;
}

export declare const PRECISIONS: Precision[];
export declare const PRECISION_PREFERENCE: Precision[];
/** Why a name is not a plain relative file name inside a bundle, or null. */
export declare function pathProblem(name: unknown): string | null;

export declare class Sha256 {
  update(bytes: Uint8Array): this;
  hex(): string;
}
export declare function sha256Hex(bytes: Uint8Array): Promise<string>;
