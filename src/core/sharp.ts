/**
 * sharp, set up once for the process: the only module that imports sharp's runtime. Every module
 * that decodes or encodes an image takes its sharp instances from here, so that libvips' threads,
 * its cache and what counts as a broken file are decided in one place.
 */
import { availableParallelism } from 'node:os';
import sharp from 'sharp';
import type { JpegOptions, Sharp, SharpOptions } from 'sharp';
import { Limiter } from './limiter.ts';

/**
 * libvips threads per image. The bot runs on small boxes (2 cores); one thread per image with a
 * few images side by side keeps the event loop responsive and memory predictable (and is what sharp
 * picks itself on glibc without jemalloc, to limit fragmentation).
 */
sharp.concurrency(1);
/** Operation cache: every upload is new, so a small cache only costs memory; never hold files open. */
sharp.cache({ memory: 16, files: 0, items: 32 });

/**
 * For files members send: 'truncated' refuses a file whose data stops early (a half-downloaded
 * JPEG, a cut PNG) instead of padding it with grey, yet accepts the warnings real cameras and
 * editors produce (for example libjpeg's "extraneous bytes before marker"), which 'warning' would
 * refuse.
 */
const UPLOAD_FAIL_ON = 'truncated' as const;
/**
 * For a model's input (the tagger's, the captioner's: masters we wrote, or files given to it
 * directly): any decoder error fails the image, as it would fail PIL in kohya's scripts.
 */
const MODEL_FAIL_ON = 'error' as const;

/** A pathological file must not hold a libvips thread forever. */
export const DECODE_TIMEOUT_SECONDS = 60;

/** How many images are decoded at once, process-wide (each with one libvips thread). */
export const MEDIA_PARALLELISM = Math.max(1, Math.min(4, availableParallelism()));

const slots = new Limiter(MEDIA_PARALLELISM);

/** Runs `task` when one of MEDIA_PARALLELISM slots is free, in arrival order. */
export function inSlot<T>(task: () => Promise<T>): Promise<T> {
  return slots.run(task);
}

export type ImageInput = Buffer | string;

/** A decoder for an image a member sent (or one we keep): explicit failOn, a pixel limit, a timeout. */
export function decodeImage(input: ImageInput, options: SharpOptions & { limitInputPixels: number | false }): Sharp {
  return sharp(input, { failOn: UPLOAD_FAIL_ON, ...options }).timeout({ seconds: DECODE_TIMEOUT_SECONDS });
}

/** A decoder for a model's input (tagger, captioner). */
export function decodeForModel(input: ImageInput): Sharp {
  return sharp(input, { failOn: MODEL_FAIL_ON });
}

/** A sharp instance over raw 8-bit pixels we produced ourselves. */
export function fromRaw(data: Uint8Array, width: number, height: number, channels: 1 | 2 | 3 | 4): Sharp {
  return sharp(data, { failOn: UPLOAD_FAIL_ON, limitInputPixels: false, raw: { width, height, channels } });
}

/** A blank RGB canvas of one colour, to composite onto. */
export function blankCanvas(width: number, height: number, background: string): Sharp {
  return sharp({ create: { width, height, channels: 3, background } });
}

/** Raw 8-bit pixels and their layout. */
export interface RawImage {
  data: Buffer;
  width: number;
  height: number;
  channels: 1 | 2 | 3 | 4;
}

/**
 * The image as a JPEG of at most `maxBytes`, trying each quality in turn (best first); throws
 * `media: <what> does not fit in <maxBytes> bytes` when even the last is too large.
 */
export async function jpegWithin(
  image: RawImage,
  maxBytes: number,
  qualities: readonly number[],
  what: string,
  options: Omit<JpegOptions, 'quality'> = {},
): Promise<Buffer> {
  for (const quality of qualities) {
    const jpeg = await fromRaw(image.data, image.width, image.height, image.channels)
      .jpeg({ ...options, quality })
      .toBuffer();
    if (jpeg.length <= maxBytes) return jpeg;
  }
  throw new Error(`media: ${what} does not fit in ${maxBytes} bytes`);
}
