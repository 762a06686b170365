/**
 * HEIC photos (iPhones' default), decoded with libheif compiled to WebAssembly (heic-decode):
 * sharp's prebuilt libvips reads HEIF headers but has no HEVC decoder. libheif decodes
 * synchronously (seconds for a 12-megapixel photo), so it runs in a thread of its own
 * (pixel-thread.ts). The image's size is checked against the pixel limit before its pixels are decoded.
 */
import { createRequire } from 'node:module';
import { pixelsOf, runPixelThread } from './pixel-thread.ts';

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
const refuse = (reason) => parentPort.postMessage({ type: 'refused', reason });
(async () => {
  let images;
  try {
    images = await decode.all({ buffer: new Uint8Array(workerData.bytes) });
  } catch (err) {
    refuse('corrupt HEIC photo (' + String(err && err.message || err).slice(0, 100) + ')');
    return;
  }
  try {
    const primary = images[0];
    if (primary.width * primary.height > workerData.maxPixels) {
      refuse('the HEIC photo is ' + primary.width + '×' + primary.height + ', larger than the limit');
      return;
    }
    const { width, height, data } = await primary.decode();
    parentPort.postMessage({ type: 'pixels', width, height, channels: 4, data }, [data.buffer]);
  } catch (err) {
    refuse('corrupt HEIC photo (' + String(err && err.message || err).slice(0, 100) + ')');
  } finally {
    images.dispose();
  }
})();
`;

/**
 * Decodes the primary image of a HEIC file to RGBA (rotated and mirrored as the file says: libheif
 * applies its irot/imir boxes).
 * @throws HeicError with a reason for the contributor (corrupt, over the pixel limit, too slow).
 */
export async function decodeHeic(bytes: Buffer, opts: { maxPixels: number; timeoutSeconds: number }): Promise<{ data: Buffer; width: number; height: number }> {
  const copy = new Uint8Array(bytes).buffer;
  let msg;
  try {
    msg = await runPixelThread(THREAD, { module: HEIC_DECODE, bytes: copy, maxPixels: opts.maxPixels }, [copy], opts.timeoutSeconds);
  } catch (err) {
    if (err instanceof Error && err.message.startsWith('timeout: ')) throw new HeicError(err.message.slice('timeout: '.length));
    throw err;
  }
  if (msg.type === 'refused') throw new HeicError(msg.reason);
  return { data: pixelsOf(msg), width: msg.width, height: msg.height };
}
