/**
 * HEIC photos (iPhones' default), decoded with libheif compiled to WebAssembly (heic-decode):
 * sharp's prebuilt libvips reads HEIF headers but has no HEVC decoder.
 *
 * libheif decodes synchronously, and a 12-megapixel photo takes a noticeable while; on the bot's
 * thread that would stall every interaction. So each decode runs in its own worker thread, which is
 * also what makes the timeout real: a decode that runs too long is ended by terminating the thread.
 * The image's size is checked against the pixel limit before its pixels are decoded.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

export class HeicError extends Error {
  constructor(readonly reason: string) {
    super(reason);
    this.name = 'HeicError';
  }
}

const HEIC_DECODE = createRequire(import.meta.url).resolve('heic-decode');

// Plain JavaScript, evaluated in the thread: nothing to compile, no loader hooks needed there.
const THREAD = `
const { parentPort, workerData } = require('node:worker_threads');
const decode = require(workerData.module);
(async () => {
  let images;
  try {
    images = await decode.all({ buffer: new Uint8Array(workerData.bytes) });
  } catch (err) {
    parentPort.postMessage({ type: 'corrupt', message: String(err && err.message || err) });
    return;
  }
  try {
    const primary = images[0];
    if (primary.width * primary.height > workerData.maxPixels) {
      parentPort.postMessage({ type: 'too-large', width: primary.width, height: primary.height });
      return;
    }
    const { width, height, data } = await primary.decode();
    parentPort.postMessage({ type: 'pixels', width, height, images: images.length, data }, [data.buffer]);
  } catch (err) {
    parentPort.postMessage({ type: 'corrupt', message: String(err && err.message || err) });
  } finally {
    images.dispose();
  }
})();
`;

type FromThread =
  | { type: 'pixels'; width: number; height: number; images: number; data: Uint8ClampedArray }
  | { type: 'too-large'; width: number; height: number }
  | { type: 'corrupt'; message: string };

export interface DecodedHeic {
  /** RGBA, 8 bits a channel, rotated and mirrored as the file says (libheif applies irot/imir). */
  data: Buffer;
  width: number;
  height: number;
  /** Top-level images in the file (a burst or a collection); the primary one was decoded. */
  images: number;
}

/**
 * Decodes the primary image of a HEIC file to RGBA.
 * @throws HeicError with a reason for the contributor (corrupt, over the pixel limit, too slow).
 */
export async function decodeHeic(bytes: Buffer, opts: { maxPixels: number; timeoutSeconds: number }): Promise<DecodedHeic> {
  const copy = new Uint8Array(bytes).buffer;
  const worker = new Worker(THREAD, {
    eval: true,
    execArgv: [],
    workerData: { module: HEIC_DECODE, bytes: copy, maxPixels: opts.maxPixels },
    transferList: [copy],
    // libheif prints its own diagnostics; they would land between the log's JSON lines. Dropped.
    stdout: true,
    stderr: true,
  });
  worker.stdout.resume();
  worker.stderr.resume();
  let timer: NodeJS.Timeout | undefined;
  try {
    const msg = await new Promise<FromThread>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
      worker.once('exit', (code) => reject(new Error(`the HEIC decoder stopped (exit ${code})`)));
      timer = setTimeout(() => reject(new HeicError(`the image took too long to decode (over ${opts.timeoutSeconds} s)`)), opts.timeoutSeconds * 1000);
    });
    if (msg.type === 'too-large') throw new HeicError(`the HEIC photo is ${msg.width}×${msg.height}, larger than the limit`);
    if (msg.type === 'corrupt') throw new HeicError(`corrupt HEIC photo (${msg.message.slice(0, 100)})`);
    return { data: Buffer.from(msg.data.buffer, msg.data.byteOffset, msg.data.byteLength), width: msg.width, height: msg.height, images: msg.images };
  } finally {
    clearTimeout(timer);
    await worker.terminate();
  }
}
