/**
 * An ONNX Runtime session in a worker thread (tagger-thread.ts), driven from the main thread:
 * batches go there and back without copies, one at a time.
 */
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { InferenceSession } from 'onnxruntime-node';

/** What the model declares, as `InferenceSession` reports it. */
export interface ModelIo {
  inputNames: readonly string[];
  outputNames: readonly string[];
  inputMetadata: readonly InferenceSession.ValueMetadata[];
  outputMetadata: readonly InferenceSession.ValueMetadata[];
}

export interface RunResult {
  /** The output tensor's element type (`float32` for a tagger). */
  dtype: string;
  data: unknown;
  /** Time inside `session.run`, measured in the worker. */
  ms: number;
}

/** What the thread is started with. */
export interface SessionThreadData {
  modelPath: string;
  options: InferenceSession.SessionOptions;
}

export type ToThread = { type: 'run'; id: number; inputName: string; outputName: string; data: Float32Array; dims: number[] } | { type: 'release' };

export type FromThread =
  | ({ type: 'ready' } & ModelIo)
  | { type: 'failed'; message: string }
  | ({ type: 'result'; id: number } & RunResult)
  | { type: 'error'; id: number; message: string }
  | { type: 'released' };

/**
 * The thread runs tagger-thread.ts as it is, TypeScript: a worker thread does not inherit the
 * module hooks of the thread that starts it (tsx's, or vitest's), so it loads the module through
 * tsx's require hook, which works in any thread. Production runs under tsx too (`npm start`), so
 * tests and production start the same module the same way.
 */
const THREAD_MODULE = fileURLToPath(new URL('./tagger-thread.ts', import.meta.url));
const TSX_API = createRequire(import.meta.url).resolve('tsx/cjs/api');
const THREAD_LOADER = "const { workerData } = require('node:worker_threads'); require(workerData.tsx).require(workerData.entry, workerData.entry);";

interface ThreadLoaderData {
  tsx: string;
  entry: string;
}

/** An ONNX Runtime session living in a worker thread; batches go there and back without copies. */
export class SessionThread {
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (r: RunResult) => void; reject: (e: Error) => void }>();
  private dead: Error | undefined;
  private released: (() => void) | undefined;

  private constructor(
    private readonly worker: Worker,
    readonly model: ModelIo,
  ) {
    worker.on('message', (msg: FromThread) => this.onMessage(msg));
    worker.on('error', (err) => this.fail(err));
    worker.on('exit', (code) => this.fail(new Error(`the tagger's worker thread exited (code ${code})`)));
    worker.unref();
  }

  static start(modelPath: string, options: InferenceSession.SessionOptions): Promise<SessionThread> {
    const workerData: SessionThreadData & ThreadLoaderData = { modelPath, options, tsx: TSX_API, entry: THREAD_MODULE };
    const worker = new Worker(THREAD_LOADER, { eval: true, execArgv: [], workerData });
    return new Promise((resolve, reject) => {
      const onError = (err: Error) => {
        cleanup();
        reject(err);
      };
      const onExit = (code: number) => {
        cleanup();
        reject(new Error(`the tagger's worker thread exited while loading (code ${code})`));
      };
      const onMessage = (msg: FromThread) => {
        cleanup();
        if (msg.type === 'ready') {
          const { inputNames, outputNames, inputMetadata, outputMetadata } = msg;
          resolve(new SessionThread(worker, { inputNames, outputNames, inputMetadata, outputMetadata }));
        } else {
          void worker.terminate();
          reject(new Error(msg.type === 'failed' ? msg.message : `unexpected message ${msg.type}`));
        }
      };
      const cleanup = () => {
        worker.off('error', onError);
        worker.off('exit', onExit);
        worker.off('message', onMessage);
      };
      worker.on('error', onError);
      worker.on('exit', onExit);
      worker.on('message', onMessage);
    });
  }

  /** Runs one batch; `data` is handed over to the worker (detached here). */
  run(inputName: string, outputName: string, data: Float32Array, dims: number[]): Promise<RunResult> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    return new Promise<RunResult>((resolve, reject) => {
      // Keep the process alive while a batch is out; an idle tagger does not hold it open.
      if (this.pending.size === 0) this.worker.ref();
      this.pending.set(id, { resolve, reject });
      const msg: ToThread = { type: 'run', id, inputName, outputName, data, dims };
      this.worker.postMessage(msg, [data.buffer as ArrayBuffer]);
    });
  }

  async close(): Promise<void> {
    if (!this.dead) {
      this.worker.ref();
      await new Promise<void>((resolve) => {
        this.released = resolve;
        // A worker that does not answer is terminated all the same.
        setTimeout(resolve, 5_000).unref();
        this.worker.postMessage({ type: 'release' } satisfies ToThread);
      });
    }
    this.dead ??= new Error('The tagger is closed.');
    await this.worker.terminate();
  }

  private settle(id: number): { resolve: (r: RunResult) => void; reject: (e: Error) => void } | undefined {
    const entry = this.pending.get(id);
    this.pending.delete(id);
    if (this.pending.size === 0) this.worker.unref();
    return entry;
  }

  private onMessage(msg: FromThread): void {
    if (msg.type === 'result') this.settle(msg.id)?.resolve({ dtype: msg.dtype, data: msg.data, ms: msg.ms });
    else if (msg.type === 'error') this.settle(msg.id)?.reject(new Error(msg.message));
    else if (msg.type === 'released') this.released?.();
  }

  private fail(err: Error): void {
    this.dead ??= err;
    this.released?.();
    for (const [id, entry] of [...this.pending]) {
      this.settle(id);
      entry.reject(err);
    }
  }
}
