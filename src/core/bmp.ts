/**
 * Windows bitmaps (BMP), read here because sharp's libvips has no BMP loader: bytes in, raw 8-bit
 * pixels out, for media.ts to hand to sharp. `decodeBmp` is pure; media.ts calls it in a thread of
 * its own (`decodeBmpInThread`), as a large bitmap takes a second or more of JavaScript.
 *
 * What Windows and common editors write is covered: BITMAPCOREHEADER (OS/2 1.x), BITMAPINFOHEADER
 * and its V2–V5 extensions; bottom-up and top-down rows; 1/4/8-bit palettes; 16/24/32-bit BI_RGB;
 * BI_BITFIELDS (and BI_ALPHABITFIELDS) at 16 and 32 bits, with an alpha mask when the header gives
 * one. RLE-compressed and embedded JPEG/PNG bitmaps are refused with a reason.
 *
 * The header is read and its size checked before any pixel buffer is allocated, and every read of
 * pixel data is bounds-checked against the file: a short file is refused as truncated.
 */

import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { pixelsOf, runPixelThread } from './pixel-thread.ts';

export class BmpError extends Error {
  constructor(readonly reason: string) {
    super(reason);
    this.name = 'BmpError';
  }
}

const BI_RGB = 0;
const BI_RLE8 = 1;
const BI_RLE4 = 2;
const BI_BITFIELDS = 3;
const BI_JPEG = 4;
const BI_PNG = 5;
const BI_ALPHABITFIELDS = 6;

const FILE_HEADER = 14;
const INFO_HEADER_SIZES = new Set([40, 52, 56, 108, 124]);

export interface BmpHeader {
  width: number;
  height: number;
  bitCount: number;
  topDown: boolean;
  /** Whether the pixels carry an alpha channel (a bitfields alpha mask). */
  hasAlpha: boolean;
}

interface Layout extends BmpHeader {
  dataOffset: number;
  compression: number;
  /** Palette entries as [r, g, b], for bit counts ≤ 8. */
  palette: [number, number, number][];
  /** Red, green, blue, alpha masks (alpha 0 when absent), for 16/32-bit. */
  masks: [number, number, number, number];
}

/** Whether these first bytes are a BMP file header followed by a DIB header size we know of. */
export function looksLikeBmp(head: Buffer): boolean {
  return head.length >= 18 && head.toString('latin1', 0, 2) === 'BM' && head.readUInt32LE(14) >= 12;
}

function defaultMasks(bitCount: number): [number, number, number, number] {
  // BI_RGB at 16 bits is 5-5-5; at 32 bits the fourth byte is unused (not alpha) in BI_RGB.
  return bitCount === 16 ? [0x7c00, 0x03e0, 0x001f, 0] : [0x00ff0000, 0x0000ff00, 0x000000ff, 0];
}

function readLayout(buf: Buffer): Layout {
  if (!looksLikeBmp(buf)) throw new BmpError('not a BMP file');
  const dataOffset = buf.readUInt32LE(10);
  const headerSize = buf.readUInt32LE(14);
  const need = (bytes: number) => {
    if (buf.length < bytes) throw new BmpError('corrupt BMP: the file ends inside its header');
  };
  let width: number;
  let rawHeight: number;
  let planes: number;
  let bitCount: number;
  let compression = BI_RGB;
  let colorsUsed = 0;
  const core = headerSize === 12;
  if (core) {
    need(FILE_HEADER + 12);
    width = buf.readUInt16LE(18);
    rawHeight = buf.readInt16LE(20);
    planes = buf.readUInt16LE(22);
    bitCount = buf.readUInt16LE(24);
  } else if (INFO_HEADER_SIZES.has(headerSize)) {
    need(FILE_HEADER + 40);
    width = buf.readInt32LE(18);
    rawHeight = buf.readInt32LE(22);
    planes = buf.readUInt16LE(26);
    bitCount = buf.readUInt16LE(28);
    compression = buf.readUInt32LE(30);
    colorsUsed = buf.readUInt32LE(46);
  } else {
    throw new BmpError(`unsupported BMP variant (a ${headerSize}-byte header): save it as PNG`);
  }
  if (compression === BI_RLE8 || compression === BI_RLE4) throw new BmpError("compressed (RLE) BMP isn't supported: save it as PNG");
  if (compression === BI_JPEG || compression === BI_PNG) throw new BmpError("a BMP holding a JPEG or PNG isn't supported: send that JPEG or PNG");
  if (compression !== BI_RGB && compression !== BI_BITFIELDS && compression !== BI_ALPHABITFIELDS) {
    throw new BmpError(`unsupported BMP compression (${compression}): save it as PNG`);
  }
  if (planes !== 1) throw new BmpError('corrupt BMP: bad plane count');
  if (![1, 4, 8, 16, 24, 32].includes(bitCount)) throw new BmpError(`unsupported BMP bit depth (${bitCount}): save it as PNG`);
  if (compression !== BI_RGB && bitCount !== 16 && bitCount !== 32) throw new BmpError('corrupt BMP: bit fields need 16 or 32 bits per pixel');
  const topDown = rawHeight < 0;
  const height = Math.abs(rawHeight);
  if (width <= 0 || height <= 0) throw new BmpError('corrupt BMP: its size is zero or negative');

  let masks = defaultMasks(bitCount);
  if (compression === BI_BITFIELDS || compression === BI_ALPHABITFIELDS) {
    // In a 40-byte header the masks follow it; larger headers hold them (alpha from 56 bytes on).
    const at = FILE_HEADER + 40;
    const withAlpha = compression === BI_ALPHABITFIELDS || headerSize >= 56;
    need(at + (withAlpha ? 16 : 12));
    masks = [buf.readUInt32LE(at), buf.readUInt32LE(at + 4), buf.readUInt32LE(at + 8), withAlpha ? buf.readUInt32LE(at + 12) : 0];
    if (masks[0] === 0 && masks[1] === 0 && masks[2] === 0) throw new BmpError('corrupt BMP: its colour masks are empty');
  } else if (bitCount === 32 && headerSize >= 56) {
    // A V4/V5 BI_RGB header still carries masks; an alpha one there is what editors mean by "32-bit with alpha".
    need(FILE_HEADER + 56);
    const alpha = buf.readUInt32LE(FILE_HEADER + 52);
    if (alpha === 0xff000000) masks = [0x00ff0000, 0x0000ff00, 0x000000ff, alpha];
  }

  const palette: [number, number, number][] = [];
  if (bitCount <= 8) {
    const max = 1 << bitCount;
    const count = colorsUsed === 0 ? max : Math.min(colorsUsed, max);
    const entry = core ? 3 : 4;
    const start = FILE_HEADER + headerSize + (compression === BI_BITFIELDS && headerSize === 40 ? 12 : 0);
    need(start + count * entry);
    for (let i = 0; i < count; i++) {
      const p = start + i * entry;
      palette.push([buf[p + 2]!, buf[p + 1]!, buf[p]!]);
    }
  }
  return { width, height, bitCount, topDown, hasAlpha: masks[3] !== 0, dataOffset, compression, palette, masks };
}

/** Size and kind of a BMP from its first bytes (the file header and DIB header), without decoding. */
export function readBmpHeader(head: Buffer): BmpHeader {
  const { width, height, bitCount, topDown, hasAlpha } = readLayout(head);
  return { width, height, bitCount, topDown, hasAlpha };
}

/** A bit field's shift and width, and how to scale its value to 8 bits. */
function field(mask: number): { shift: number; max: number } {
  if (mask === 0) return { shift: 0, max: 0 };
  let shift = 0;
  while (((mask >>> shift) & 1) === 0) shift++;
  return { shift, max: mask >>> shift };
}

/** Which byte of a little-endian 32-bit pixel a mask selects whole (0–3), or -1 when it is not one whole byte. */
function byteOfMask(mask: number): number {
  for (let i = 0; i < 4; i++) if (mask >>> 0 === (0xff << (i * 8)) >>> 0) return i;
  return -1;
}

/**
 * Decodes a BMP into top-down 8-bit RGB (or RGBA when it has an alpha mask).
 * @throws BmpError with a reason for the contributor; `maxPixels` is checked before allocating.
 */
export function decodeBmp(buf: Buffer, maxPixels: number): { data: Buffer; width: number; height: number; channels: 3 | 4 } {
  const l = readLayout(buf);
  if (l.width * l.height > maxPixels) throw new BmpError(`the BMP is ${l.width}×${l.height}, larger than the limit`);
  const stride = Math.ceil((l.width * l.bitCount) / 32) * 4;
  const rowBytes = Math.ceil((l.width * l.bitCount) / 8);
  if (l.dataOffset < FILE_HEADER || l.dataOffset + stride * (l.height - 1) + rowBytes > buf.length) {
    throw new BmpError('truncated BMP: the file ends before its last row');
  }
  const channels = l.hasAlpha ? 4 : 3;
  const out = Buffer.alloc(l.width * l.height * channels);
  const [r, g, b, a] = l.masks.map(field) as [ReturnType<typeof field>, ReturnType<typeof field>, ReturnType<typeof field>, ReturnType<typeof field>];
  const scale = (value: number, f: { shift: number; max: number }) => (f.max === 0 ? 0 : Math.round((((value >>> f.shift) & f.max) * 255) / f.max));
  let paletteMiss = false;

  // Byte-aligned 8-bit channels (24-bit, and 32-bit BGRX/BGRA as Windows writes them): copied
  // byte by byte, several times faster than shifting and scaling every pixel.
  const byteOffsets = l.bitCount === 24 ? [2, 1, 0, -1] : l.bitCount === 32 ? l.masks.map(byteOfMask) : null;
  const aligned = byteOffsets !== null && byteOffsets.slice(0, 3).every((b) => b >= 0) && (channels === 3 || byteOffsets[3]! >= 0);

  for (let y = 0; y < l.height; y++) {
    const row = l.dataOffset + (l.topDown ? y : l.height - 1 - y) * stride;
    let o = y * l.width * channels;
    if (aligned) {
      const step = l.bitCount / 8;
      const [br, bg, bb, ba] = byteOffsets as [number, number, number, number];
      for (let p = row, end = row + l.width * step; p < end; p += step, o += channels) {
        out[o] = buf[p + br]!;
        out[o + 1] = buf[p + bg]!;
        out[o + 2] = buf[p + bb]!;
        if (channels === 4) out[o + 3] = buf[p + ba]!;
      }
      continue;
    }
    for (let x = 0; x < l.width; x++, o += channels) {
      if (l.bitCount <= 8) {
        const bit = x * l.bitCount;
        const byte = buf[row + (bit >> 3)]!;
        const index = (byte >> (8 - l.bitCount - (bit & 7))) & ((1 << l.bitCount) - 1);
        const colour = l.palette[index];
        if (colour === undefined) {
          paletteMiss = true;
          continue;
        }
        out[o] = colour[0];
        out[o + 1] = colour[1];
        out[o + 2] = colour[2];
      } else if (l.bitCount === 24) {
        const p = row + x * 3;
        out[o] = buf[p + 2]!;
        out[o + 1] = buf[p + 1]!;
        out[o + 2] = buf[p]!;
      } else {
        const v = l.bitCount === 16 ? buf.readUInt16LE(row + x * 2) : buf.readUInt32LE(row + x * 4);
        out[o] = scale(v, r);
        out[o + 1] = scale(v, g);
        out[o + 2] = scale(v, b);
        if (channels === 4) out[o + 3] = scale(v, a);
      }
    }
  }
  if (paletteMiss) throw new BmpError('corrupt BMP: a pixel points past its palette');
  if (channels === 4) {
    // Writers that leave the alpha byte at zero everywhere mean "unused", not "invisible".
    let opaque = true;
    for (let i = 3; i < out.length; i += 4) {
      if (out[i] !== 0) {
        opaque = false;
        break;
      }
    }
    if (opaque) for (let i = 3; i < out.length; i += 4) out[i] = 255;
  }
  return { data: out, width: l.width, height: l.height, channels };
}

/**
 * The thread loads this module as it is, TypeScript, through tsx's require hook (a worker thread
 * does not inherit the hooks of the thread that starts it; tagger-session.ts does the same).
 */
const THREAD = `
const { parentPort, workerData } = require('node:worker_threads');
const bmp = require(workerData.tsx).require(workerData.entry, workerData.entry);
try {
  const r = bmp.decodeBmp(Buffer.from(workerData.bytes), workerData.maxPixels);
  const data = new Uint8Array(r.data.buffer, r.data.byteOffset, r.data.byteLength);
  parentPort.postMessage({ type: 'pixels', width: r.width, height: r.height, channels: r.channels, data }, [data.buffer]);
} catch (err) {
  if (err && err.name === 'BmpError') parentPort.postMessage({ type: 'refused', reason: err.reason });
  else throw err;
}
`;
const TSX_API = createRequire(import.meta.url).resolve('tsx/cjs/api');
const ENTRY = fileURLToPath(import.meta.url);

/** `decodeBmp` in a worker thread, ended after `timeoutSeconds`. */
export async function decodeBmpInThread(
  bytes: Buffer,
  opts: { maxPixels: number; timeoutSeconds: number },
): Promise<{ data: Buffer; width: number; height: number; channels: 3 | 4 }> {
  const copy = new Uint8Array(bytes).buffer;
  let msg;
  try {
    msg = await runPixelThread(THREAD, { tsx: TSX_API, entry: ENTRY, bytes: copy, maxPixels: opts.maxPixels }, [copy], opts.timeoutSeconds);
  } catch (err) {
    if (err instanceof Error && err.message.startsWith('timeout: ')) throw new BmpError(err.message.slice('timeout: '.length));
    throw err;
  }
  if (msg.type === 'refused') throw new BmpError(msg.reason);
  return { data: pixelsOf(msg), width: msg.width, height: msg.height, channels: msg.channels };
}
