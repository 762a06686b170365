/**
 * Images in: the one module that imports sharp and owns its settings.
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
import { open } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import sharp from 'sharp';
import type { Metadata, OutputInfo, OverlayOptions, Sharp, SharpOptions } from 'sharp';
import { FONT_METRICS, parseHexColour, renderLabel } from './bitmap-font.ts';
import type { Config } from './config.ts';
import { UserError } from './errors.ts';
import { Limiter } from './limiter.ts';
import { PHASH_SIZE, phashFromGrey32 } from './phash.ts';

// ---------------------------------------------------------------------------------------------
// sharp settings, set once for the process.

/**
 * libvips threads per image. The bot runs on small boxes (2 cores); one thread per image with a
 * few images side by side keeps the event loop responsive and memory predictable (and is what sharp
 * picks itself on glibc without jemalloc, to limit fragmentation).
 */
sharp.concurrency(1);
/** Operation cache: every upload is new, so a small cache only costs memory; never hold files open. */
sharp.cache({ memory: 16, files: 0, items: 32 });

/**
 * 'truncated' refuses a file whose data stops early (a half-downloaded JPEG, a cut PNG) instead of
 * padding it with grey, yet accepts the warnings real cameras and editors produce (for example
 * libjpeg's "extraneous bytes before marker"), which 'warning' would refuse.
 */
const FAIL_ON = 'truncated' as const;
/** A pathological file must not hold a worker thread forever. */
const DECODE_TIMEOUT_SECONDS = 60;

/** How many images are decoded at once, process-wide (each with one libvips thread). */
export const MEDIA_PARALLELISM = Math.max(1, Math.min(4, availableParallelism()));

const slots = new Limiter(MEDIA_PARALLELISM);

/** Runs `task` when one of MEDIA_PARALLELISM slots is free, in arrival order. */
function inSlot<T>(task: () => Promise<T>): Promise<T> {
  return slots.run(task);
}

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
    /** sharp's decoder name ('jpeg', 'png', 'webp', 'gif', 'tiff'), or 'avif'. */
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
}

export type NormalizeResult = NormalizeAccepted | NormalizeRefused;

/** The raster formats we train on. */
export type ImageFormat = 'jpeg' | 'png' | 'webp' | 'gif' | 'avif' | 'tiff';

export const ACCEPTED_FORMATS: readonly ImageFormat[] = ['jpeg', 'png', 'webp', 'gif', 'avif', 'tiff'];

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

export const MASTER_CONTENT_TYPE = { png: 'image/png', webp: 'image/webp' } as const;
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

const ACCEPTED_LIST = 'JPEG, PNG, WebP, GIF, AVIF or TIFF';

/** A refusal for the contributor (a UserError); thrown by probeImage, returned by normalizeImage. */
export class ImageRefused extends UserError {
  constructor(readonly reason: string) {
    super(reason);
    this.name = 'ImageRefused';
  }
}

const ascii = (head: Buffer, start: number, end: number) => head.toString('latin1', start, end);
const startsWith = (head: Buffer, bytes: readonly number[]) => bytes.every((b, i) => head[i] === b);

const HEIC_REASON = "HEIC photos can't be read here: share it as JPEG (iPhone: Settings → Camera → Formats → Most Compatible)";
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
    if (brands.some((b) => HEIC_BRANDS.has(b))) {
      return refuse(HEIC_REASON);
    }
    if (brands.some((b) => VIDEO_BRANDS.has(b))) return refuse('not an image (a video file)');
    return refuse(`not an image we can read (an ISO media file, brand "${brands[0]?.trim() ?? ''}"); send ${ACCEPTED_LIST}`);
  }
  if (ascii(head, 0, 5) === '%PDF-') return refuse("PDF documents aren't accepted: export the page as PNG or JPEG");
  if (ascii(head, 0, 2) === 'BM' && head.length >= 26 && head.readUInt32LE(14) >= 12) {
    return refuse("BMP isn't supported: save it as PNG");
  }
  if (startsWith(head, [0xff, 0x0a]) || ascii(head, 4, 12) === 'JXL \r\n\x87\n') return refuse("JPEG XL isn't supported yet: save it as PNG or JPEG");
  if (ascii(head, 4, 8) === 'jP  ' || startsWith(head, [0xff, 0x4f, 0xff, 0x51])) return refuse("JPEG 2000 isn't supported: save it as PNG or JPEG");
  if (ascii(head, 0, 4) === '8BPS') return refuse("Photoshop documents aren't accepted: export as PNG or JPEG");
  if (startsWith(head, [0x00, 0x00, 0x01, 0x00])) return refuse("icons (.ico) aren't accepted: send a PNG or JPEG");
  if (ascii(head, 0, 4) === 'PK\x03\x04') return refuse('not an image (a zip archive)');
  if (startsWith(head, [0x1f, 0x8b])) return refuse('not an image (compressed data)');
  if (looksLikeText(head)) {
    const text = head.toString('utf8').replace(/^\uFEFF/, '').trimStart();
    if (/<svg[\s>]/i.test(text) || /^<!DOCTYPE\s+svg/i.test(text)) {
      return refuse('SVG is a vector drawing: export it as PNG or JPEG');
    }
    return refuse('not an image (the file contains text)');
  }
  return refuse(`not an image (unrecognised data); send ${ACCEPTED_LIST}`);
}

// ---------------------------------------------------------------------------------------------
// Probing: header-only facts.

type Input = Buffer | string;

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

/** A sharp instance with our decoder settings: explicit failOn, a pixel limit, a timeout. */
function decoder(input: Input, options: SharpOptions & { limitInputPixels: number | false }): Sharp {
  return sharp(input, { failOn: FAIL_ON, ...options }).timeout({ seconds: DECODE_TIMEOUT_SECONDS });
}

/** A sharp instance over raw pixels we produced ourselves. */
function fromRaw(data: Buffer, width: number, height: number, channels: 1 | 2 | 3 | 4): Sharp {
  return sharp(data, { failOn: FAIL_ON, limitInputPixels: false, raw: { width, height, channels } });
}

/** First line of a libvips error, without the loader's prefix ("VipsJpeg: …"), for a user to read. */
function decoderDetail(err: unknown): string {
  const message = err instanceof Error ? err.message : String(err);
  const line = (message.split('\n')[0] ?? '').replace(/^(Input (buffer|file) (has corrupt header|contains unsupported image format):?\s*)/i, '');
  const detail = line.replace(/^[A-Za-z0-9_]+(load|save)?:\s*/i, '').replace(/^Vips\w+:\s*/, '').replace(/\s+/g, ' ').trim();
  return detail.length > 120 ? `${detail.slice(0, 117)}…` : detail;
}

const BIT_DEPTH: Record<string, number> = { uchar: 8, char: 8, ushort: 16, short: 16, uint: 32, int: 32, float: 32, double: 64 };

async function probe(input: Input): Promise<ImageProbe> {
  const { head, bytes } = await readHead(input);
  const sniffed = sniffFormat(head);
  if (!sniffed.ok) throw new ImageRefused(sniffed.reason);

  let meta: Metadata;
  try {
    // Header only: no pixels are decoded, so the size can be read (and refused) without a limit.
    meta = await decoder(input, { limitInputPixels: false }).metadata();
  } catch (err) {
    throw new ImageRefused(`corrupt image: its header can't be read (${decoderDetail(err)})`);
  }
  let format: ImageFormat;
  if (meta.format === 'heif') {
    if (meta.compression !== 'av1') {
      throw new ImageRefused(HEIC_REASON);
    }
    format = 'avif';
  } else if ((ACCEPTED_FORMATS as readonly string[]).includes(meta.format)) {
    format = meta.format as ImageFormat;
  } else {
    throw new ImageRefused(`unsupported format (${meta.format}); send ${ACCEPTED_LIST}`);
  }
  if (format !== sniffed.format) {
    throw new ImageRefused(`corrupt image: it starts like ${sniffed.format.toUpperCase()} but decodes as ${format.toUpperCase()}`);
  }
  const orientation = meta.orientation !== undefined && meta.orientation >= 1 && meta.orientation <= 8 ? meta.orientation : 1;
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
    if (err instanceof ImageRefused) return { ok: false, reason: err.reason };
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
    let pipeline = decoder(input, { limitInputPixels: opts.maxInputPixels, autoOrient: true, pages: 1, page: 0 });
    if (downscale) {
      pipeline = pipeline.resize(target.width, target.height, { fit: 'fill', kernel: 'lanczos3', fastShrinkOnLoad: false });
    }
    decoded = await pipeline.toColourspace('srgb').raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    if (/timeout/i.test(message)) return { ok: false, reason: `the image took too long to decode (over ${DECODE_TIMEOUT_SECONDS} s)` };
    if (/pixel limit/i.test(message)) return { ok: false, reason: `the image is larger than the limit of ${formatMegapixels(opts.maxInputPixels)} megapixels` };
    return { ok: false, reason: `corrupt or truncated image data (${decoderDetail(err)})` };
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
    notes.push(`${mirrored ? 'turned' : 'rotated'} upright (EXIF orientation ${info.orientation}${mirrored ? ', mirrored' : ''})`);
  }
  if (info.pages > 1) {
    const [what, unit] = ANIMATION_NOUN[info.format];
    notes.push(`${what}: first of ${info.pages} ${unit} kept`);
  }
  if (info.space === 'cmyk') notes.push('converted from CMYK');
  if (info.bitDepth !== 8) notes.push(`converted from ${info.bitDepth}-bit to 8-bit`);
  if (info.space === 'b-w' || info.space === 'grey16') notes.push('greyscale, stored as RGB');
  if (flattened) notes.push(`transparency flattened onto ${COLOUR_NAMES[opts.background.toLowerCase()] ?? opts.background}`);
  if (downscale) notes.push(`downscaled from ${info.width}×${info.height} to ${width}×${height}`);

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
  return inSlot(() => phashOf(decoder(image, { limitInputPixels: 100_000_000, autoOrient: true, pages: 1 }).flatten({ background: '#ffffff' }).toColourspace('srgb')));
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

// ---------------------------------------------------------------------------------------------
// Contact sheets.

export interface ContactSheetTile {
  /** Any image sharp reads (a master, a thumbnail). */
  image: Buffer;
  /** Drawn at the tile's top-left corner, e.g. "#3". */
  label: string;
}

export interface ContactSheetOptions {
  /** Tiles per row (default: about square). */
  columns?: number;
  /** Tile edge in pixels (default 256). */
  tile?: number;
}

const SHEET_BACKGROUND = '#1e1f22';
const SHEET_MAX_PIXELS = 16_000_000;
const SHEET_MAX_BYTES = 8 * 1024 * 1024;

/**
 * One JPEG showing every tile scaled to fit a square cell, labelled with the built-in bitmap
 * font (no system fonts needed), kept well under Discord's 10 MiB.
 */
export async function makeContactSheet(tiles: ContactSheetTile[], opts: ContactSheetOptions = {}): Promise<Buffer> {
  if (tiles.length === 0) throw new RangeError('a contact sheet needs at least one tile');
  const columns = Math.max(1, Math.min(tiles.length, Math.floor(opts.columns ?? Math.ceil(Math.sqrt(tiles.length)))));
  const rows = Math.ceil(tiles.length / columns);
  let tile = Math.max(32, Math.min(1024, Math.floor(opts.tile ?? 256)));
  const gapFor = (t: number) => Math.max(2, Math.round(t / 64));
  const sheetSize = (t: number) => ({ width: columns * t + (columns + 1) * gapFor(t), height: rows * t + (rows + 1) * gapFor(t) });
  while (tile > 32 && sheetSize(tile).width * sheetSize(tile).height > SHEET_MAX_PIXELS) tile = Math.floor(tile * 0.9);
  const gap = gapFor(tile);
  const { width, height } = sheetSize(tile);
  const scale = tile >= 96 ? Math.max(2, Math.round(tile / 128)) : 1;
  const margin = Math.max(2, Math.round(tile / 64));

  return inSlot(async () => {
    const cells: OverlayOptions[] = [];
    for (let i = 0; i < tiles.length; i++) {
      const { image, label } = tiles[i]!;
      const badge = renderLabel(label, { scale, maxWidth: tile - 2 * margin, maxLines: 2 });
      const cell = await decoder(image, { limitInputPixels: 100_000_000, autoOrient: true, pages: 1 })
        .resize(tile, tile, { fit: 'contain', background: SHEET_BACKGROUND, kernel: 'lanczos3' })
        .flatten({ background: SHEET_BACKGROUND })
        .composite([{ input: badge.data, raw: { width: badge.width, height: badge.height, channels: 4 }, top: margin, left: margin }])
        .toColourspace('srgb')
        .raw({ depth: 'uchar' })
        .toBuffer({ resolveWithObject: true });
      cells.push({
        input: cell.data,
        raw: { width: cell.info.width, height: cell.info.height, channels: cell.info.channels },
        left: gap + (i % columns) * (tile + gap),
        top: gap + Math.floor(i / columns) * (tile + gap),
      });
    }
    // Compositing leaves an alpha channel behind; drop it before reading the canvas back as RGB.
    const sheet = await sharp({ create: { width, height, channels: 3, background: SHEET_BACKGROUND } })
      .composite(cells)
      .removeAlpha()
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    if (sheet.info.channels !== 3) throw new Error(`media: contact sheet has ${sheet.info.channels} channels`);
    for (const quality of [85, 70, 50]) {
      const jpeg = await fromRaw(sheet.data, width, height, 3).jpeg({ quality, chromaSubsampling: '4:2:0' }).toBuffer();
      if (jpeg.length <= SHEET_MAX_BYTES) return jpeg;
    }
    throw new Error(`media: contact sheet of ${tiles.length} tiles does not fit in ${SHEET_MAX_BYTES} bytes`);
  });
}

// ---------------------------------------------------------------------------------------------
// Sample grids.

export interface SampleGridTile {
  /** A sample image (a Buffer or a file path). */
  image: Buffer | string;
  /** Written under the sample, e.g. "#1 zkchar, 1girl, smile". Wrapped to two lines at most. */
  label: string;
}

export interface SampleGridOptions {
  /** Written above the samples, e.g. "aria-r3k9 - epoch 3/10". */
  title: string;
  /** Longest side of one cell in pixels (default 512); samples are scaled down to fit, never up. */
  maxCell?: number;
}

export interface SampleGridLayout {
  width: number;
  height: number;
  /** Size of every cell; samples are fitted inside, centred. */
  cell: { width: number; height: number };
  /** Top-left corner of each cell, in tile order. */
  cells: { left: number; top: number }[];
  /** Integer scale of the bitmap font. */
  textScale: number;
}

const GRID_BACKGROUND = '#1e1f22';
const GRID_TEXT = '#f2f3f5';
const GRID_MAX_BYTES = 8 * 1024 * 1024;
const GRID_LABEL_LINES = 2;

/**
 * Where everything goes in a sample grid of `count` cells of `cell` size: a title strip on top,
 * then the cells side by side, each with room for a two-line label under it. Pure; exported so
 * callers and tests can find a sample in the grid.
 */
export function sampleGridLayout(count: number, cell: { width: number; height: number }): SampleGridLayout {
  if (!(count >= 1) || !Number.isInteger(count)) throw new RangeError('a sample grid needs at least one sample');
  const textScale = Math.min(cell.width, cell.height) >= 256 ? 2 : 1;
  const gap = Math.max(4, Math.round(Math.max(cell.width, cell.height) / 64));
  const line = FONT_METRICS.lineHeight * textScale;
  const pad = 2 * textScale;
  const titleHeight = line + 2 * pad;
  const labelHeight = GRID_LABEL_LINES * line + 2 * pad;
  const top = gap + titleHeight + gap;
  return {
    width: count * cell.width + (count + 1) * gap,
    height: top + cell.height + labelHeight + gap,
    cell: { ...cell },
    cells: Array.from({ length: count }, (_, i) => ({ left: gap + i * (cell.width + gap), top })),
    textScale,
  };
}

/**
 * One JPEG of an epoch's samples side by side (the run's prompts in order), each labelled under
 * it, with a title on top; labels use the built-in bitmap font. The cell takes the first sample's
 * aspect ratio (a run samples every prompt at one size). Kept well under Discord's limits.
 */
export async function makeSampleGrid(tiles: SampleGridTile[], opts: SampleGridOptions): Promise<Buffer> {
  if (tiles.length === 0) throw new RangeError('a sample grid needs at least one sample');
  const maxCell = Math.max(64, Math.min(1024, Math.floor(opts.maxCell ?? 512)));

  return inSlot(async () => {
    const first = await decoder(tiles[0]!.image, { limitInputPixels: false }).metadata();
    const longest = Math.max(first.width, first.height, 1);
    const fit = Math.min(1, maxCell / longest);
    const cell = { width: Math.max(16, Math.round(first.width * fit)), height: Math.max(16, Math.round(first.height * fit)) };
    const layout = sampleGridLayout(tiles.length, cell);
    const scale = layout.textScale;

    const overlays: OverlayOptions[] = [];
    const gap = layout.cells[0]!.left;
    const title = renderLabel(opts.title, { scale, colour: GRID_TEXT, background: GRID_BACKGROUND, maxWidth: layout.width - 2 * gap, maxLines: 1 });
    overlays.push({ input: title.data, raw: { width: title.width, height: title.height, channels: 4 }, top: gap, left: gap });
    for (let i = 0; i < tiles.length; i++) {
      const { image, label } = tiles[i]!;
      const at = layout.cells[i]!;
      const sample = await decoder(image, { limitInputPixels: 100_000_000, autoOrient: true, pages: 1 })
        .resize(cell.width, cell.height, { fit: 'contain', background: GRID_BACKGROUND, kernel: 'lanczos3' })
        .flatten({ background: GRID_BACKGROUND })
        .toColourspace('srgb')
        .raw({ depth: 'uchar' })
        .toBuffer({ resolveWithObject: true });
      overlays.push({
        input: sample.data,
        raw: { width: sample.info.width, height: sample.info.height, channels: sample.info.channels },
        left: at.left,
        top: at.top,
      });
      const badge = renderLabel(label, { scale, colour: GRID_TEXT, background: GRID_BACKGROUND, maxWidth: cell.width, maxLines: GRID_LABEL_LINES });
      overlays.push({ input: badge.data, raw: { width: badge.width, height: badge.height, channels: 4 }, left: at.left, top: at.top + cell.height });
    }
    const { width, height } = layout;
    const canvas = await sharp({ create: { width, height, channels: 3, background: GRID_BACKGROUND } })
      .composite(overlays)
      .removeAlpha()
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    if (canvas.info.channels !== 3) throw new Error(`media: sample grid has ${canvas.info.channels} channels`);
    for (const quality of [90, 75, 55]) {
      const jpeg = await fromRaw(canvas.data, width, height, 3).jpeg({ quality, chromaSubsampling: '4:4:4' }).toBuffer();
      if (jpeg.length <= GRID_MAX_BYTES) return jpeg;
    }
    throw new Error(`media: sample grid of ${tiles.length} samples does not fit in ${GRID_MAX_BYTES} bytes`);
  });
}

// ---------------------------------------------------------------------------------------------
// Comparison of epochs: each epoch's sample grid as one row, top to bottom (an X/Y plot of
// epochs × prompts); a row's label is drawn above it unless empty (grids carry their own title).

const COMPARISON_MAX_WIDTH = 2048;

export async function stackRows(rows: { image: Buffer; label: string }[]): Promise<Buffer> {
  if (rows.length === 0) throw new RangeError('a comparison needs at least one row');
  return inSlot(async () => {
    const first = await decoder(rows[0]!.image, { limitInputPixels: 100_000_000 }).metadata();
    const width = Math.min(COMPARISON_MAX_WIDTH, Math.max(64, first.width));
    const scale = Math.max(1, Math.round(width / 512));
    const gap = 4 * scale;
    const overlays: OverlayOptions[] = [];
    let top = gap;
    for (const row of rows) {
      if (row.label) {
        const label = renderLabel(row.label, { scale: scale + 1, colour: GRID_TEXT, background: GRID_BACKGROUND, maxWidth: width, maxLines: 1 });
        overlays.push({ input: label.data, raw: { width: label.width, height: label.height, channels: 4 }, left: gap, top });
        top += label.height + gap;
      }
      const image = await decoder(row.image, { limitInputPixels: 100_000_000 })
        .resize({ width, withoutEnlargement: true, kernel: 'lanczos3' })
        .flatten({ background: GRID_BACKGROUND })
        .toColourspace('srgb')
        .raw({ depth: 'uchar' })
        .toBuffer({ resolveWithObject: true });
      overlays.push({ input: image.data, raw: { width: image.info.width, height: image.info.height, channels: image.info.channels }, left: gap, top });
      top += image.info.height + gap;
    }
    const canvas = await sharp({ create: { width: width + 2 * gap, height: top, channels: 3, background: GRID_BACKGROUND } })
      .composite(overlays)
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    for (const quality of [85, 70, 50]) {
      const jpeg = await fromRaw(canvas.data, canvas.info.width, canvas.info.height, canvas.info.channels).jpeg({ quality }).toBuffer();
      if (jpeg.length <= GRID_MAX_BYTES) return jpeg;
    }
    throw new Error(`media: a comparison of ${rows.length} rows does not fit in ${GRID_MAX_BYTES} bytes`);
  });
}
