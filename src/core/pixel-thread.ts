/**
 * Runs one image decoder that sharp does not have (bmp.ts, heic.ts) in a worker thread of its own:
 * decoding in JavaScript or WebAssembly is synchronous, and a large picture would hold up the bot's
 * thread (every interaction) for seconds. A thread per decode also makes the timeout real: one that
 * runs too long is ended by terminating its thread.
 */
import { Worker } from 'node:worker_threads';

export type PixelThreadMessage = { type: 'pixels'; width: number; height: number; channels: 3 | 4; data: Uint8Array } | { type: 'refused'; reason: string };

/**
 * Starts `code` (CommonJS, evaluated) with `workerData`, waits for its one message, and ends it.
 * @throws Error when the thread fails or `timeoutSeconds` pass (its message: `timeout`).
 */
export async function runPixelThread(
  code: string,
  workerData: Record<string, unknown>,
  transfer: ArrayBuffer[],
  timeoutSeconds: number,
): Promise<PixelThreadMessage> {
  const worker = new Worker(code, {
    eval: true,
    execArgv: [],
    workerData,
    transferList: transfer,
    // Decoders may print their own diagnostics; they would land between the log's JSON lines.
    stdout: true,
    stderr: true,
  });
  worker.stdout.resume();
  worker.stderr.resume();
  let timer: NodeJS.Timeout | undefined;
  try {
    return await new Promise<PixelThreadMessage>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new Error(`the decoder's thread stopped (exit ${code})`)));
      timer = setTimeout(() => reject(new Error(`timeout: the image took too long to decode (over ${timeoutSeconds} s)`)), timeoutSeconds * 1000);
    });
  } finally {
    clearTimeout(timer);
    await worker.terminate();
  }
}

/** The pixels of a 'pixels' message as a Buffer (no copy). */
export function pixelsOf(msg: Extract<PixelThreadMessage, { type: 'pixels' }>): Buffer {
  return Buffer.from(msg.data.buffer, msg.data.byteOffset, msg.data.byteLength);
}
