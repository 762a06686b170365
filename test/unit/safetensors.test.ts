import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TensorInput } from '../../src/core/safetensors.ts';
import { dataSectionSha256, encodeHeader, readSafetensorsHeader, rewriteMetadata, SafetensorsError, writeSafetensors } from '../../src/core/safetensors.ts';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'safetensors-test-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function f32(values: number[]): Buffer {
  const b = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => b.writeFloatLE(v, i * 4));
  return b;
}

const TENSORS: TensorInput[] = [
  { name: 'lora_unet_a.lora_down.weight', dtype: 'F32', shape: [2, 3], data: f32([1, 2, 3, 4, 5, 6]) },
  { name: 'lora_unet_a.alpha', dtype: 'F16', shape: [], data: Buffer.from([0x00, 0x4c]) },
  { name: 'lora_unet_a.lora_up.weight', dtype: 'BF16', shape: [3, 1], data: Buffer.from([1, 2, 3, 4, 5, 6]) },
];

/** A file made of a raw header object and data bytes, for malformed cases. */
async function rawFile(name: string, header: unknown, data: Buffer, lengthOverride?: bigint): Promise<string> {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(lengthOverride ?? BigInt(json.length));
  const path = join(dir, name);
  await writeFile(path, Buffer.concat([len, json, data]));
  return path;
}

describe('safetensors', () => {
  it('writes and reads back tensors and metadata, data section 8-byte aligned', async () => {
    const path = join(dir, 'roundtrip.safetensors');
    await writeSafetensors(path, TENSORS, { ss_output_name: 'zk', ss_epoch: '3' });
    const h = await readSafetensorsHeader(path);
    expect(h.metadata).toEqual({ ss_output_name: 'zk', ss_epoch: '3' });
    expect(h.tensors).toEqual({
      'lora_unet_a.lora_down.weight': { dtype: 'F32', shape: [2, 3], dataOffsets: [0, 24] },
      'lora_unet_a.alpha': { dtype: 'F16', shape: [], dataOffsets: [24, 26] },
      'lora_unet_a.lora_up.weight': { dtype: 'BF16', shape: [3, 1], dataOffsets: [26, 32] },
    });
    expect(h.dataOffset % 8).toBe(0);
    expect(h.dataOffset).toBe(8 + h.headerLength);
    expect(h.dataLength).toBe(32);
    const bytes = await readFile(path);
    expect(bytes.subarray(h.dataOffset)).toEqual(Buffer.concat(TENSORS.map((t) => t.data)));
    // the padding is spaces, as the format allows
    expect(bytes.subarray(8, h.dataOffset).toString('utf8').trimEnd()).toBe(JSON.stringify(h.header));
  });

  it('rewrites the metadata, keeping the tensor bytes identical, even in place', async () => {
    const src = join(dir, 'src.safetensors');
    const dest = join(dir, 'dest.safetensors');
    await writeSafetensors(src, TENSORS, { ss_output_name: 'zk' });
    const long = { ss_output_name: 'zk', ss_tag_frequency: JSON.stringify({ '30_main': { smile: 9, 'red eyes': 10 } }), modelspec_title: 'ゼット' };
    await rewriteMetadata(src, dest, long);
    const before = await readSafetensorsHeader(src);
    const after = await readSafetensorsHeader(dest);
    expect(after.metadata).toEqual(long);
    expect(after.tensors).toEqual(before.tensors);
    expect(after.headerLength).not.toBe(before.headerLength);
    const a = await readFile(src);
    const b = await readFile(dest);
    expect(b.subarray(after.dataOffset)).toEqual(a.subarray(before.dataOffset));
    expect(await dataSectionSha256(dest)).toBe(await dataSectionSha256(src));

    await rewriteMetadata(dest, dest, { only: 'this' });
    expect((await readSafetensorsHeader(dest)).metadata).toEqual({ only: 'this' });
    expect((await readFile(dest)).subarray((await readSafetensorsHeader(dest)).dataOffset)).toEqual(a.subarray(before.dataOffset));
    expect((await readdir(dir)).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });

  it('hashes the data section: sshs_model_hash = sha256(file[8 + N:])', async () => {
    const path = join(dir, 'hash.safetensors');
    await writeSafetensors(path, TENSORS, { a: 'b' });
    const bytes = await readFile(path);
    const n = Number(bytes.readBigUInt64LE(0));
    const expected = createHash('sha256')
      .update(bytes.subarray(8 + n))
      .digest('hex');
    expect(await dataSectionSha256(path)).toBe(expected);
    expect(expected).toBe(
      createHash('sha256')
        .update(Buffer.concat(TENSORS.map((t) => t.data)))
        .digest('hex'),
    );
  });

  it('reads a header written by other tools without padding or metadata', async () => {
    const path = await rawFile('plain.safetensors', { t: { dtype: 'U8', shape: [3], data_offsets: [0, 3] } }, Buffer.from([1, 2, 3]));
    const h = await readSafetensorsHeader(path);
    expect(h.metadata).toEqual({});
    expect(h.tensors.t?.dataOffsets).toEqual([0, 3]);
  });

  it.each([
    ['a header length beyond the file', { t: { dtype: 'U8', shape: [1], data_offsets: [0, 1] } }, Buffer.from([1]), 1000n, /past the end/],
    ['an absurd header length', {}, Buffer.alloc(0), 2n ** 40n, /out of bounds/],
    ['a JSON array', '[1,2,3]', Buffer.alloc(0), undefined, /does not start with \{/],
    ['invalid JSON', '{"a": ', Buffer.alloc(0), undefined, /not valid JSON/],
    ['an unknown dtype', { t: { dtype: 'F12', shape: [1], data_offsets: [0, 2] } }, Buffer.alloc(2), undefined, /unknown dtype/],
    ['offsets past the data', { t: { dtype: 'U8', shape: [4], data_offsets: [0, 4] } }, Buffer.alloc(2), undefined, /outside the data section/],
    ['a size that disagrees with the shape', { t: { dtype: 'F32', shape: [2], data_offsets: [0, 4] } }, Buffer.alloc(4), undefined, /4 bytes for shape/],
    [
      'overlapping tensors',
      { a: { dtype: 'U8', shape: [2], data_offsets: [0, 2] }, b: { dtype: 'U8', shape: [2], data_offsets: [1, 3] } },
      Buffer.alloc(3),
      undefined,
      /starts at 1, expected 2/,
    ],
    ['bytes after the last tensor', { a: { dtype: 'U8', shape: [2], data_offsets: [0, 2] } }, Buffer.alloc(5), undefined, /tensors cover 2/],
    ['a non-string metadata value', { __metadata__: { ss_epoch: 3 } }, Buffer.alloc(0), undefined, /metadata ss_epoch/],
  ] as const)('refuses %s', async (label, header, data, length, message) => {
    const path = await rawFile(`bad-${label.replaceAll(' ', '-')}.safetensors`, header, data, length);
    await expect(readSafetensorsHeader(path)).rejects.toThrow(SafetensorsError);
    await expect(readSafetensorsHeader(path)).rejects.toThrow(message);
  });

  it('refuses a file shorter than the length prefix', async () => {
    const path = join(dir, 'short.safetensors');
    await writeFile(path, Buffer.from([1, 2, 3]));
    await expect(readSafetensorsHeader(path)).rejects.toThrow(/shorter/);
  });

  it('refuses to write tensors whose bytes do not match their shape', async () => {
    await expect(writeSafetensors(join(dir, 'x.safetensors'), [{ name: 't', dtype: 'F32', shape: [3], data: Buffer.alloc(8) }])).rejects.toThrow(
      /needs 12 bytes/,
    );
    await expect(
      writeSafetensors(join(dir, 'y.safetensors'), [
        { name: 't', dtype: 'U8', shape: [1], data: Buffer.alloc(1) },
        { name: 't', dtype: 'U8', shape: [1], data: Buffer.alloc(1) },
      ]),
    ).rejects.toThrow(/repeated/);
  });

  it('pads encoded headers to a multiple of 8 with spaces', () => {
    for (const header of [{}, { a: 'b' }, { __metadata__: { k: 'vvvvvvv' } }]) {
      const encoded = encodeHeader(header);
      const n = Number(encoded.readBigUInt64LE(0));
      expect(n % 8).toBe(0);
      expect(JSON.parse(encoded.subarray(8).toString('utf8'))).toEqual(header);
    }
  });
});
