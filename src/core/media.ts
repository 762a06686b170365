/**
 * Images in: probing and normalizing what members send (sharp's settings: sharp.ts).
 *
 * Every contributed picture is normalized into a "master" before anything else sees it, because
 * kohya trains on whatever PIL decodes (reference/kohya-contract.md §4, §9): it ignores EXIF
 * orientation, drops alpha without compositing, and a truncated file kills the run mid-way. The
 * master is upright, opaque, 8-bit sRGB RGB, metadata-free, at most MASTER_MAX_PIXELS, and lossless.
 *
 * Untrusted bytes are refused as early as possible: the magic bytes are sniffed before sharp is
 * called (so SVG and PDF never reach a decoder), the header's size is checked before any pixel is
 * decoded (decompression bombs), and pixel data is decoded with `failOn: 'truncated'`.
 */
import { createHash } from 'node:crypto';
import { open, readFile } from 'node:fs/promises';
import type { Metadata, OutputInfo, Sharp } from 'sharp';
import { parseHexColour } from './bitmap-font.ts';
import { BmpError, decodeBmpInThread, looksLikeBmp, readBmpHeader } from './bmp.ts';
import type { Config } from './config.ts';
import { UserError } from './errors.ts';
import { decodeHeic, HeicError } from './heic.ts';
import { PHASH_SIZE, phashFromGrey32 } from './phash.ts';
import { DECODE_TIMEOUT_SECONDS, decodeImage as decoder, fromRaw, inSlot, type ImageInput as Input } from './sharp.ts';

// ---------------------------------------------------------------------------------------------
// Types.

export interface NormalizeOptions {
  /** Refuse when the header's width × height exceeds this (decompression bombs). */
  maxInputPixels: number;
  /** Downscale the master until width × height is at most this. */
  masterMaxPixels: number;
  /** Refuse when the upright image's short side is below this, in pixels. */
  minShortSide: number;
  /** Colour transparency is flattened onto, '#rrggbb'. */
  background: string;
}

export interface NormalizeAccepted {
  ok: true;
  /** Lossless, 8-bit sRGB RGB, no alpha, no metadata. */
  master: Buffer;
  masterFormat: 'png' | 'webp';
  /** A small preview, at most THUMBNAIL_SIZE px on the long side, as THUMBNAIL_CONTENT_TYPE. */
  thumbnail: Buffer;
  /** Size of the master. */
  width: number;
  height: number;
  original: {
    /** sharp's decoder name ('jpeg', 'png', 'webp', 'gif', 'tiff'), or 'avif', 'bmp', 'heic'. */
    format: string;
    /** Upright size (EXIF orientation applied). */
    width: number;
    height: number;
    bytes: number;
  };
  /** SHA-256 of the master's size and raw RGB pixels: same pixels ⇔ same hash, whatever the encoding. */
  pixelSha256: string;
  /** DCT perceptual hash of the master, 16 hex characters (phash.ts). */
  phash: string;
  /** What was changed, in words for the contributor (e.g. "rotated upright (EXIF orientation 6)"). */
  notes: string[];
}

export interface NormalizeRefused {
  ok: false;
  /** Why, in words for the contributor; shown next to the file name. */
  reason: string;
  /** The decoder's own words, for the logs (absent when the reason says it all). */
  detail?: string;
}

/** A file the decoder cannot read through, in plain words (its words go to the logs). */
export const DAMAGED_FILE = 'the file is cut short or damaged — try saving or exporting it again';

export type NormalizeResult = NormalizeAccepted | NormalizeRefused;

/** The raster formats we train on. */
export type ImageFormat = 'jpeg' | 'png' | 'webp' | 'gif' | 'avif' | 'tiff' | 'bmp' | 'heic';

export const ACCEPTED_FORMATS: readonly ImageFormat[] = ['jpeg', 'png', 'webp', 'gif', 'avif', 'tiff', 'bmp', 'heic'];

/** Formats sharp cannot decode, read by our own decoders (bmp.ts, heic.ts) into raw pixels first. */
const DECODED_BY_US: ReadonlySet<ImageFormat> = new Set(['bmp', 'heic']);

export interface ImageProbe {
  format: ImageFormat;
  /** Upright size (EXIF orientation applied). */
  width: number;
  height: number;
  /** Size as stored in the file. */
  storedWidth: number;
  storedHeight: number;
  /** Frames or pages (1 for a still image). */
  pages: number;
  /** EXIF orientation 1–8 (1 when absent). */
  orientation: number;
  hasAlpha: boolean;
  /** sharp's colour space name: 'srgb', 'cmyk', 'b-w', 'grey16', 'rgb16', … */
  space: string;
  /** Bits per channel sample (8, 16, 32). */
  bitDepth: number;
  bytes: number;
}

export const THUMBNAIL_SIZE = 256;
export const THUMBNAIL_CONTENT_TYPE = 'image/webp';

/** The intake settings from the parsed configuration. */
export function normalizeOptionsFromConfig(
  config: Pick<Config, 'MAX_INPUT_PIXELS' | 'MASTER_MAX_PIXELS' | 'MIN_SHORT_SIDE' | 'FLATTEN_BACKGROUND'>,
): NormalizeOptions {
  return {
    maxInputPixels: config.MAX_INPUT_PIXELS,
    masterMaxPixels: config.MASTER_MAX_PIXELS,
    minShortSide: config.MIN_SHORT_SIDE,
    background: config.FLATTEN_BACKGROUND,
  };
}

// ---------------------------------------------------------------------------------------------
// Sniffing: what the bytes are, before any decoder sees them.

const ACCEPTED_LIST = 'JPEG, PNG, WebP, GIF, AVIF, TIFF, BMP or HEIC';

/** A refusal for the contributor (a UserError); thrown by probeImage, returned by normalizeImage. */
export class ImageRefused extends UserError {
  constructor(
    readonly reason: string,
    readonly detail?: string,
  ) {
    super(reason);
    this.name = 'ImageRefused';
  }
}

const ascii = (head: Buffer, start: number, end: number) => head.toString('latin1', start, end);
const startsWith = (head: Buffer, bytes: readonly number[]) => bytes.every((b, i) => head[i] === b);

const HEIC_BRANDS = new Set(['heic', 'heix', 'hevc', 'hevx', 'heim', 'heis', 'hevm', 'hevs']);
const AVIF_BRANDS = new Set(['avif', 'avis']);
const VIDEO_BRANDS = new Set(['isom', 'iso2', 'mp41', 'mp42', 'qt  ', 'M4V ', 'avc1', '3gp4', '3gp5', '3g2a', 'dash']);

function looksLikeText(head: Buffer): boolean {
  if (head.length === 0) return false;
  for (const byte of head) {
    if (byte === 0x7f || (byte < 0x20 && byte !== 0x09 && byte !== 0x0a && byte !== 0x0c && byte !== 0x0d && byte !== 0x1b)) {
      return false;
    }
  }
  return true;
}

/**
 * The format the first bytes announce, or why the file is refused. Pure; exported for tests.
 * `head` should be the first 4 KiB (or the whole file when shorter).
 */
export function sniffFormat(head: Buffer): { ok: true; format: ImageFormat } | { ok: false; reason: string } {
  const refuse = (reason: string) => ({ ok: false as const, reason });
  if (head.length === 0) return refuse('empty file (0 bytes)');
  if (startsWith(head, [0xff, 0xd8, 0xff])) return { ok: true, format: 'jpeg' };
  if (startsWith(head, [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])) return { ok: true, format: 'png' };
  if (ascii(head, 0, 6) === 'GIF87a' || ascii(head, 0, 6) === 'GIF89a') return { ok: true, format: 'gif' };
  if (ascii(head, 0, 4) === 'RIFF' && ascii(head, 8, 12) === 'WEBP') return { ok: true, format: 'webp' };
  if (startsWith(head, [0x49, 0x49, 0x2a, 0x00]) || startsWith(head, [0x4d, 0x4d, 0x00, 0x2a])) return { ok: true, format: 'tiff' };
  if (startsWith(head, [0x49, 0x49, 0x2b, 0x00]) || startsWith(head, [0x4d, 0x4d, 0x00, 0x2b])) {
    return refuse("BigTIFF isn't supported: save it as an ordinary TIFF, PNG or JPEG");
  }
  if (head.length >= 12 && ascii(head, 4, 8) === 'ftyp') {
    const boxSize = Math.min(head.readUInt32BE(0), head.length);
    const brands = [ascii(head, 8, 12)];
    for (let at = 16; at + 4 <= boxSize; at += 4) brands.push(ascii(head, at, at + 4));
    if (brands.some((b) => AVIF_BRANDS.has(b))) return { ok: true, format: 'avif' };
    if (brands.some((b) => HEIC_BRANDS.has(b))) return { ok: true, format: 'heic' };
    if (brands.some((b) => VIDEO_BRANDS.has(b))) return refuse('not an image (a video file)');
    return refuse(`not an image we can read (an ISO media file, brand "${brands[0]?.trim() ?? ''}"); send ${ACCEPTED_LIST}`);
  }
  if (ascii(head, 0, 5) === '%PDF-') return refuse("PDF documents aren't accepted: export the page as PNG or JPEG");
  if (looksLikeBmp(head)) return { ok: true, format: 'bmp' };
  if (startsWith(head, [0xff, 0x0a]) || ascii(head, 4, 12) === 'JXL \r\n\x87\n') return refuse("JPEG XL isn't supported yet: save it as PNG or JPEG");
  if (ascii(head, 4, 8) === 'jP  ' || startsWith(head, [0xff, 0x4f, 0xff, 0x51])) return refuse("JPEG 2000 isn't supported: save it as PNG or JPEG");
  if (ascii(head, 0, 4) === '8BPS') return refuse("Photoshop documents aren't accepted: export as PNG or JPEG");
  if (startsWith(head, [0x00, 0x00, 0x01, 0x00])) return refuse("icons (.ico) aren't accepted: send a PNG or JPEG");
  if (ascii(head, 0, 4) === 'PK\x03\x04') return refuse('not an image (a zip archive)');
  if (startsWith(head, [0x1f, 0x8b])) return refuse('not an image (compressed data)');
  if (looksLikeText(head)) {
    const text = head
      .toString('utf8')
      .replace(/^\uFEFF/, '')
      .trimStart();
    if (/<svg[\s>]/i.test(text) || /^<!DOCTYPE\s+svg/i.test(text)) {
      return refuse('SVG is a vector drawing: export it as PNG or JPEG');
    }
    return refuse('not an image (the file contains text)');
  }
  return refuse(`not an image (unrecognised data); send ${ACCEPTED_LIST}`);
}

// ---------------------------------------------------------------------------------------------
// Probing: header-only facts.

async function readHead(input: Input): Promise<{ head: Buffer; bytes: number }> {
  if (Buffer.isBuffer(input)) return { head: input.subarray(0, 4096), bytes: input.length };
  const file = await open(input, 'r');
  try {
    const { size } = await file.stat();
    const head = Buffer.alloc(Math.min(4096, size));
    const { bytesRead } = await file.read(head, 0, head.length, 0);
    return { head: head.subarray(0, bytesRead), bytes: size };
  } finally {
    await file.close();
  }
}

/** First line of a libvips error, without the loader's prefix ("VipsJpeg: …"), for a user to read. */
function decoderDetail(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  const line = (message.split('\n')[0] ?? '').replace(/^(Input (buffer|file) (has corrupt header|contains unsupported image format):?\s*)/i, '');
  const detail = line
    .replace(/^[A-Za-z0-9_]+(load|save)?:\s*/i, '')
    .replace(/^Vips\w+:\s*/, '')
    .replace(/\s+/g, ' ')
    .trim();
  return detail.length > 120 ? `${detail.slice(0, 117)}…` : detail;
}

const BIT_DEPTH: Record<string, number> = { uchar: 8, char: 8, ushort: 16, short: 16, uint: 32, int: 32, float: 32, double: 64 };

async function probe(input: Input): Promise<ImageProbe> {
  const { head, bytes } = await readHead(input);
  const sniffed = sniffFormat(head);
  if (!sniffed.ok) throw new ImageRefused(sniffed.reason);
  if (sniffed.format === 'bmp') return probeBmp(head, bytes);

  let meta: Metadata;
  try {
    // Header only: no pixels are decoded, so the size can be read (and refused) without a limit.
    meta = await decoder(input, { limitInputPixels: false }).metadata();
  } catch (err) {
    throw new ImageRefused(DAMAGED_FILE, `header can't be read: ${decoderDetail(err)}`);
  }
  let format: ImageFormat;
  if (meta.format === 'heif') {
    if (meta.compression === 'hevc') format = 'heic';
    else if (meta.compression === 'av1') format = 'avif';
    else throw new ImageRefused(`unsupported HEIF compression (${meta.compression ?? 'unknown'}); send ${ACCEPTED_LIST}`);
  } else if ((ACCEPTED_FORMATS as readonly string[]).includes(meta.format)) {
    format = meta.format as ImageFormat;
  } else {
    throw new ImageRefused(`unsupported format (${meta.format}); send ${ACCEPTED_LIST}`);
  }
  if (format !== sniffed.format) {
    throw new ImageRefused(`corrupt image: it starts like ${sniffed.format.toUpperCase()} but decodes as ${format.toUpperCase()}`);
  }
  // libheif turns a HEIC upright itself (its irot/imir boxes); the EXIF tag there only repeats them.
  const orientation = format !== 'heic' && meta.orientation !== undefined && meta.orientation >= 1 && meta.orientation <= 8 ? meta.orientation : 1;
  const swapped = orientation >= 5;
  return {
    format,
    width: swapped ? meta.height : meta.width,
    height: swapped ? meta.width : meta.height,
    storedWidth: meta.width,
    storedHeight: meta.height,
    pages: meta.pages ?? 1,
    orientation,
    hasAlpha: meta.hasAlpha,
    space: meta.space,
    bitDepth: BIT_DEPTH[meta.depth] ?? 8,
    bytes,
  };
}

function probeBmp(head: Buffer, bytes: number): ImageProbe {
  let header;
  try {
    header = readBmpHeader(head);
  } catch (err) {
    if (err instanceof BmpError) throw new ImageRefused(err.reason);
    throw err;
  }
  const { width, height, hasAlpha, bitCount } = header;
  return {
    format: 'bmp',
    width,
    height,
    storedWidth: width,
    storedHeight: height,
    pages: 1,
    orientation: 1,
    hasAlpha,
    space: bitCount === 1 ? 'b-w' : 'srgb',
    bitDepth: 8,
    bytes,
  };
}

/**
 * The decoder for an image's pixels: sharp itself, or (for BMP and HEIC) sharp over the raw pixels
 * our own decoder produced, after the same pixel limit.
 */
async function pixelSource(input: Input, info: ImageProbe, opts: NormalizeOptions): Promise<Sharp> {
  if (!DECODED_BY_US.has(info.format)) return decoder(input, { limitInputPixels: opts.maxInputPixels, autoOrient: true, pages: 1, page: 0 });
  const bytes = Buffer.isBuffer(input) ? input : await readFile(input);
  if (info.format === 'bmp') {
    const bmp = await decodeBmpInThread(bytes, { maxPixels: opts.maxInputPixels, timeoutSeconds: DECODE_TIMEOUT_SECONDS });
    return fromRaw(bmp.data, bmp.width, bmp.height, bmp.channels);
  }
  const heic = await decodeHeic(bytes, { maxPixels: opts.maxInputPixels, timeoutSeconds: DECODE_TIMEOUT_SECONDS });
  return fromRaw(heic.data, heic.width, heic.height, 4);
}

/**
 * Header-only facts about an image (a Buffer or a file path), without decoding pixels.
 * @throws ImageRefused (with a reason for the contributor) when it is not an image we accept.
 */
export async function probeImage(input: Buffer | string): Promise<ImageProbe> {
  return probe(input);
}

// ---------------------------------------------------------------------------------------------
// Normalizing.

const formatMegapixels = (pixels: number) => {
  const mp = pixels / 1e6;
  return Number.isInteger(mp) || mp >= 100 ? String(Math.round(mp)) : mp.toFixed(1).replace(/\.0$/, '');
};

const COLOUR_NAMES: Record<string, string> = { '#ffffff': 'white', '#000000': 'black' };

/** The largest size with the same aspect ratio (to the pixel) and at most `maxPixels` pixels. */
export function fitWithin(width: number, height: number, maxPixels: number): { width: number; height: number } {
  if (width * height <= maxPixels) return { width, height };
  const scale = Math.sqrt(maxPixels / (width * height));
  let w = Math.max(1, Math.floor(width * scale));
  let h = Math.max(1, Math.floor(height * scale));
  while (w * h > maxPixels) {
    if (w / width > h / height) w--;
    else h--;
  }
  return { width: w, height: h };
}

const ANIMATION_NOUN: Record<ImageFormat, [string, string]> = {
  gif: ['animated GIF', 'frames'],
  webp: ['animated WebP', 'frames'],
  avif: ['AVIF image sequence', 'images'],
  tiff: ['multi-page TIFF', 'pages'],
  png: ['animated PNG', 'frames'],
  jpeg: ['multi-picture JPEG', 'pictures'],
  bmp: ['BMP', 'images'],
  heic: ['HEIC collection', 'images'],
};

/**
 * Turns an upload into a training master (see the module comment), or says why not.
 * Never throws for a bad file; throws only for programming errors or unreadable paths.
 */
export async function normalizeImage(input: Buffer | string, opts: NormalizeOptions): Promise<NormalizeResult> {
  return inSlot(() => normalizeNow(input, opts));
}

async function normalizeNow(input: Input, opts: NormalizeOptions): Promise<NormalizeResult> {
  const [bgR, bgG, bgB] = parseHexColour(opts.background);
  let info: ImageProbe;
  try {
    info = await probe(input);
  } catch (err) {
    if (err instanceof ImageRefused) return { ok: false, reason: err.reason, ...(err.detail ? { detail: err.detail } : {}) };
    throw err;
  }

  const storedPixels = info.storedWidth * info.storedHeight;
  if (storedPixels > opts.maxInputPixels) {
    return {
      ok: false,
      reason: `${info.storedWidth}×${info.storedHeight} is ${formatMegapixels(storedPixels)} megapixels; the limit is ${formatMegapixels(opts.maxInputPixels)}`,
    };
  }
  const shortSide = Math.min(info.width, info.height);
  if (shortSide < opts.minShortSide) {
    return { ok: false, reason: `${info.width}×${info.height} is too small: the short side must be at least ${opts.minShortSide} px` };
  }

  const target = fitWithin(info.width, info.height, opts.masterMaxPixels);
  const downscale = target.width !== info.width || target.height !== info.height;

  let decoded: { data: Buffer; info: OutputInfo };
  try {
    let pipeline = await pixelSource(input, info, opts);
    if (downscale) {
      pipeline = pipeline.resize(target.width, target.height, { fit: 'fill', kernel: 'lanczos3', fastShrinkOnLoad: false });
    }
    decoded = await pipeline.toColourspace('srgb').raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
  } catch (err) {
    if (err instanceof BmpError || err instanceof HeicError) return { ok: false, reason: err.reason };
    const message = err instanceof Error ? err.message : String(err);
    if (/timeout/i.test(message)) return { ok: false, reason: `the image took too long to decode (over ${DECODE_TIMEOUT_SECONDS} s)` };
    if (/pixel limit/i.test(message)) return { ok: false, reason: `the image is larger than the limit of ${formatMegapixels(opts.maxInputPixels)} megapixels` };
    return { ok: false, reason: DAMAGED_FILE, detail: decoderDetail(err) };
  }

  const { width, height, channels } = decoded.info;
  const src = decoded.data;
  let rgb = src;
  let flattened = false;
  if (channels === 4) {
    // Flattened here rather than with sharp's flatten() so the note is only added when some pixel
    // really was transparent (GIFs and many PNGs carry an alpha channel that is fully opaque).
    rgb = Buffer.allocUnsafe(width * height * 3);
    for (let s = 0, d = 0; s < src.length; s += 4, d += 3) {
      const a = src[s + 3]!;
      if (a === 255) {
        rgb[d] = src[s]!;
        rgb[d + 1] = src[s + 1]!;
        rgb[d + 2] = src[s + 2]!;
      } else {
        flattened = true;
        rgb[d] = Math.round((src[s]! * a + bgR * (255 - a)) / 255);
        rgb[d + 1] = Math.round((src[s + 1]! * a + bgG * (255 - a)) / 255);
        rgb[d + 2] = Math.round((src[s + 2]! * a + bgB * (255 - a)) / 255);
      }
    }
  } else if (channels !== 3) {
    throw new Error(`media: expected 3 or 4 channels after sRGB conversion, got ${channels}`);
  }

  const notes: string[] = [];
  if (info.orientation !== 1) {
    const mirrored = [2, 4, 5, 7].includes(info.orientation);
    notes.push(mirrored ? 'turned upright, mirror image undone' : 'turned upright');
  }
  if (info.pages > 1) {
    const [what, unit] = ANIMATION_NOUN[info.format];
    notes.push(`${what}: first of ${info.pages} ${unit} kept`);
  }
  if (info.space === 'cmyk') notes.push('converted from CMYK');
  if (info.bitDepth !== 8) notes.push(`converted from ${info.bitDepth}-bit to 8-bit`);
  if (info.space === 'b-w' || info.space === 'grey16') notes.push('greyscale, stored as RGB');
  if (flattened) notes.push(`transparency flattened onto ${COLOUR_NAMES[opts.background.toLowerCase()] ?? opts.background}`);
  // A downscale is not a note: members need not hear of it per file; `/dataset show` lists them
  // from the original and stored sizes.

  const pixelSha256 = createHash('sha256').update(`rgb8 ${width}x${height}\n`).update(rgb).digest('hex');
  const [master, thumbnail, phash] = await Promise.all([
    encodeMaster(rgb, width, height),
    fromRaw(rgb, width, height, 3)
      .resize(THUMBNAIL_SIZE, THUMBNAIL_SIZE, { fit: 'inside', kernel: 'lanczos3', withoutEnlargement: true })
      .webp({ quality: 80, effort: 2 })
      .toBuffer(),
    phashOf(fromRaw(rgb, width, height, 3)),
  ]);

  return {
    ok: true,
    master,
    masterFormat: 'png',
    thumbnail,
    width,
    height,
    original: { format: info.format, width: info.width, height: info.height, bytes: info.bytes },
    pixelSha256,
    phash,
    notes,
  };
}

/** pHash of an opaque image: greyscale, squeezed to 32×32, then phash.ts. */
async function phashOf(image: Sharp): Promise<string> {
  const grey = await image
    .greyscale()
    .resize(PHASH_SIZE, PHASH_SIZE, { fit: 'fill', kernel: 'lanczos3' })
    .raw({ depth: 'uchar' })
    .toBuffer({ resolveWithObject: true });
  if (grey.info.channels !== 1) throw new Error(`media: expected 1 grey channel, got ${grey.info.channels}`);
  return phashFromGrey32(grey.data);
}

/**
 * The perceptual hash of a stored master (or any image we already accepted; alpha is flattened onto
 * white); for a master it equals the `phash` normalizeImage reported.
 */
export async function imagePhash(image: Buffer | string): Promise<string> {
  return inSlot(() =>
    phashOf(decoder(image, { limitInputPixels: 100_000_000, autoOrient: true, pages: 1 }).flatten({ background: '#ffffff' }).toColourspace('srgb')),
  );
}

/**
 * PNG, zlib level 3 with adaptive row filters. Measured on a 2508×1672 (4.2 MP) photo-like master,
 * one libvips thread: PNG c3+adaptive 4.4–5.1 MB in ~180 ms; c6+adaptive 4.2–4.8 MB in ~400 ms;
 * c9+adaptive 4.2–4.7 MB in ~1050 ms; lossless WebP 3.0–3.5 MB (effort 0: 3.6–4.2 MB) in 1.1–2.5 s.
 * WebP saves ~25% of disk at 6–12× the CPU, on a 2-core bot that is the wrong trade; and PNG is what
 * every trainer reads.
 */
async function encodeMaster(rgb: Buffer, width: number, height: number): Promise<Buffer> {
  return fromRaw(rgb, width, height, 3).png({ compressionLevel: 3, adaptiveFiltering: true, palette: false }).toBuffer();
}
