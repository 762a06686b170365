/**
 * safetensors files without loading tensors: read and strictly validate the header, hash the data
 * section (`sshs_model_hash`, reference/kohya-contract.md §7), rewrite the `__metadata__` while
 * streaming the tensor bytes unchanged, and write small files (tests, fixtures).
 *
 * Layout: 8-byte little-endian header length N, N bytes of UTF-8 JSON (an object; may be padded
 * with trailing spaces), then the data section; each tensor's `data_offsets` are relative to it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { open, rename, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';

/** Bytes per element. */
export const SAFETENSORS_DTYPES = {
  BOOL: 1,
  U8: 1,
  I8: 1,
  F8_E5M2: 1,
  F8_E4M3: 1,
  I16: 2,
  U16: 2,
  F16: 2,
  BF16: 2,
  I32: 4,
  U32: 4,
  F32: 4,
  I64: 8,
  U64: 8,
  F64: 8,
} as const;
export type SafetensorsDtype = keyof typeof SAFETENSORS_DTYPES;

/** The safetensors library refuses headers above 100 MB. */
export const MAX_HEADER_LENGTH = 100_000_000;

export interface TensorInfo {
  dtype: SafetensorsDtype;
  shape: number[];
  /** [begin, end) relative to the data section. */
  dataOffsets: [number, number];
}

export interface SafetensorsHeader {
  /** N, the JSON header's length in bytes (padding included). */
  headerLength: number;
  /** The header JSON as parsed, `__metadata__` included. */
  header: Record<string, unknown>;
  metadata: Record<string, string>;
  tensors: Record<string, TensorInfo>;
  /** 8 + N: where the data section starts. */
  dataOffset: number;
  /** Bytes of the data section. */
  dataLength: number;
}

export class SafetensorsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SafetensorsError';
  }
}

export interface TensorInput {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  data: Uint8Array;
}

function isDtype(v: unknown): v is SafetensorsDtype {
  return typeof v === 'string' && Object.hasOwn(SAFETENSORS_DTYPES, v);
}

function elementCount(shape: readonly number[]): number {
  return shape.reduce((n, d) => n * d, 1);
}

/** Validates a parsed header against the data-section size; returns metadata and tensors. */
export function validateHeader(header: unknown, dataLength: number): { metadata: Record<string, string>; tensors: Record<string, TensorInfo> } {
  if (typeof header !== 'object' || header === null || Array.isArray(header)) throw new SafetensorsError('header is not a JSON object');
  const metadata: Record<string, string> = {};
  const tensors: Record<string, TensorInfo> = {};
  const spans: { name: string; begin: number; end: number }[] = [];
  for (const [name, entry] of Object.entries(header)) {
    if (name === '__metadata__') {
      if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw new SafetensorsError('__metadata__ is not an object');
      for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
        if (typeof v !== 'string') throw new SafetensorsError(`metadata ${k} is not a string`);
        metadata[k] = v;
      }
      continue;
    }
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) throw new SafetensorsError(`tensor ${name} is not an object`);
    const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
    if (!isDtype(dtype)) throw new SafetensorsError(`tensor ${name} has an unknown dtype ${String(dtype)}`);
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
      throw new SafetensorsError(`tensor ${name} has a bad shape`);
    }
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && (o as number) >= 0)) {
      throw new SafetensorsError(`tensor ${name} has bad data_offsets`);
    }
    const [begin, end] = offsets as [number, number];
    if (begin > end || end > dataLength) throw new SafetensorsError(`tensor ${name} lies outside the data section`);
    if (end - begin !== elementCount(shape as number[]) * SAFETENSORS_DTYPES[dtype]) {
      throw new SafetensorsError(`tensor ${name} has ${end - begin} bytes for shape [${shape.join(', ')}] ${dtype}`);
    }
    tensors[name] = { dtype, shape: [...(shape as number[])], dataOffsets: [begin, end] };
    spans.push({ name, begin, end });
  }
  // The tensors must tile the data section: no gaps, no overlaps, nothing after the last one.
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const span of spans) {
    if (span.begin !== cursor) throw new SafetensorsError(`tensor ${span.name} starts at ${span.begin}, expected ${cursor}`);
    cursor = span.end;
  }
  if (cursor !== dataLength) throw new SafetensorsError(`data section has ${dataLength} bytes, tensors cover ${cursor}`);
  return { metadata, tensors };
}

export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  const file = await open(path, 'r');
  try {
    const { size } = await file.stat();
    if (size < 8) throw new SafetensorsError('file is shorter than the 8-byte header length');
    const prefix = Buffer.alloc(8);
    await file.read(prefix, 0, 8, 0);
    const n = prefix.readBigUInt64LE(0);
    if (n < 2n || n > BigInt(MAX_HEADER_LENGTH)) throw new SafetensorsError(`header length ${n} is out of bounds`);
    const headerLength = Number(n);
    if (8 + headerLength > size) throw new SafetensorsError('header runs past the end of the file');
    const bytes = Buffer.alloc(headerLength);
    await file.read(bytes, 0, headerLength, 8);
    if (bytes[0] !== 0x7b) throw new SafetensorsError('header does not start with {');
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
    } catch {
      throw new SafetensorsError('header is not UTF-8');
    }
    let header: unknown;
    try {
      header = JSON.parse(text);
    } catch {
      throw new SafetensorsError('header is not valid JSON');
    }
    const dataOffset = 8 + headerLength;
    const dataLength = size - dataOffset;
    const { metadata, tensors } = validateHeader(header, dataLength);
    return { headerLength, header: header as Record<string, unknown>, metadata, tensors, dataOffset, dataLength };
  } finally {
    await file.close();
  }
}

/** sha256 (hex) of the data section, streamed: sd-scripts' `sshs_model_hash` ("addnet" hash). */
export async function dataSectionSha256(path: string): Promise<string> {
  const { dataOffset } = await readSafetensorsHeader(path);
  const hash = createHash('sha256');
  await pipeline(createReadStream(path, { start: dataOffset }), hash);
  return hash.digest('hex');
}

/** 8-byte length + JSON, padded with spaces so the data section starts on an 8-byte boundary. */
export function encodeHeader(header: Record<string, unknown>): Buffer {
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Math.ceil(json.length / 8) * 8;
  const out = Buffer.alloc(8 + padded, 0x20);
  out.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(out, 8);
  return out;
}

function checkMetadata(metadata: Record<string, string>): void {
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== 'string') throw new SafetensorsError(`metadata ${k} must be a string`);
  }
}

function tempPathFor(dest: string): string {
  return join(dirname(dest), `.${basename(dest)}.${randomBytes(6).toString('hex')}.tmp`);
}

/**
 * Writes `srcPath` to `destPath` with `metadata` as its whole `__metadata__` (merge beforehand to
 * keep old keys); tensor entries and bytes are unchanged. Atomic (temp file + rename); src may be dest.
 */
export async function rewriteMetadata(srcPath: string, destPath: string, metadata: Record<string, string>): Promise<void> {
  checkMetadata(metadata);
  const src = await readSafetensorsHeader(srcPath);
  const header: Record<string, unknown> = { __metadata__: { ...metadata } };
  for (const [name, entry] of Object.entries(src.header)) if (name !== '__metadata__') header[name] = entry;
  const tmp = tempPathFor(destPath);
  try {
    const out = createWriteStream(tmp, { flags: 'wx' });
    out.write(encodeHeader(header));
    await pipeline(createReadStream(srcPath, { start: src.dataOffset }), out);
    await rename(tmp, destPath);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}

/** Writes a small safetensors file (tensors in the given order), atomically. */
export async function writeSafetensors(path: string, tensors: readonly TensorInput[], metadata: Record<string, string> = {}): Promise<void> {
  checkMetadata(metadata);
  const header: Record<string, unknown> = Object.keys(metadata).length > 0 ? { __metadata__: { ...metadata } } : {};
  let offset = 0;
  const seen = new Set<string>();
  for (const t of tensors) {
    if (t.name === '__metadata__' || seen.has(t.name)) throw new SafetensorsError(`bad or repeated tensor name ${t.name}`);
    seen.add(t.name);
    if (!isDtype(t.dtype)) throw new SafetensorsError(`unknown dtype ${String(t.dtype)}`);
    if (!t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) throw new SafetensorsError(`tensor ${t.name} has a bad shape`);
    const expected = elementCount(t.shape) * SAFETENSORS_DTYPES[t.dtype];
    if (t.data.byteLength !== expected) {
      throw new SafetensorsError(`tensor ${t.name} needs ${expected} bytes, got ${t.data.byteLength}`);
    }
    header[t.name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, offset + expected] };
    offset += expected;
  }
  const tmp = tempPathFor(path);
  try {
    const file = await open(tmp, 'wx');
    try {
      await file.write(encodeHeader(header));
      for (const t of tensors) await file.write(t.data);
    } finally {
      await file.close();
    }
    await rename(tmp, path);
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
}
