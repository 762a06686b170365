/**
 * The tagger's worker thread (started by tagger-session.ts): it owns the ONNX Runtime session.
 * onnxruntime-node runs a model synchronously on the thread that calls `run`; on the main thread
 * that would block everything else — sharp's callbacks, timers, queue lock renewals — for a whole
 * batch. The only module that loads onnxruntime-node.
 */
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import * as ort from 'onnxruntime-node';
import type { FromThread, SessionThreadData, ToThread } from './tagger-session.ts';

function threadPort(): MessagePort {
  if (!parentPort) throw new Error('tagger-thread.ts runs in a worker thread started by tagger-session.ts');
  return parentPort;
}
const port = threadPort();
const { modelPath, options } = workerData as SessionThreadData;

const post = (msg: FromThread, transfer: ArrayBuffer[] = []) => port.postMessage(msg, transfer);
const message = (err: unknown) => (err instanceof Error ? err.message : String(err));

function serve(session: ort.InferenceSession): void {
  post({
    type: 'ready',
    inputNames: session.inputNames,
    outputNames: session.outputNames,
    inputMetadata: session.inputMetadata,
    outputMetadata: session.outputMetadata,
  });
  const run = async (msg: Extract<ToThread, { type: 'run' }>) => {
    try {
      const input = new ort.Tensor('float32', msg.data, msg.dims);
      const started = performance.now();
      const out = await session.run({ [msg.inputName]: input }, [msg.outputName]);
      const ms = performance.now() - started;
      const tensor = out[msg.outputName];
      if (!tensor) throw new Error(`the model gave no output named ${msg.outputName}`);
      const data: unknown = tensor.data;
      const transfer = ArrayBuffer.isView(data) ? [data.buffer as ArrayBuffer] : [];
      post({ type: 'result', id: msg.id, ms, dtype: tensor.type, data }, transfer);
    } catch (err) {
      post({ type: 'error', id: msg.id, message: message(err) });
    }
  };
  const release = async () => {
    await session.release().catch(() => undefined);
    post({ type: 'released' });
  };
  // One run at a time, in order, so that each one's time is its own.
  let queue = Promise.resolve();
  port.on('message', (msg: ToThread) => {
    queue = queue.then(() => (msg.type === 'release' ? release() : run(msg)));
  });
}

ort.InferenceSession.create(modelPath, options).then(serve, (err: unknown) => post({ type: 'failed', message: message(err) }));
