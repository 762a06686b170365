import { spawn, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { lstat, mkdir, mkdtemp, open, readdir, readFile, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { text } from 'node:stream/consumers';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BlobStore, isBlobId } from '../../src/core/blob-store.ts';

const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');

let root: string;
let store: BlobStore;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'lg-blobs-'));
  store = new BlobStore(join(root, 'data'));
  await store.init();
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Every file under blobs/, as paths relative to it. */
async function blobFiles(): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(store.blobsDir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) out.push(join(entry.parentPath, entry.name).slice(store.blobsDir.length + 1));
  }
  return out.sort();
}

const tempFiles = () => readdir(store.tmpDir);

/** Byte equality without vitest's element-by-element diff (slow on large buffers). */
function expectBytes(actual: Buffer, expected: Buffer | undefined): void {
  expect(expected).toBeDefined();
  expect(actual.length).toBe(expected?.length);
  expect(actual.equals(expected ?? Buffer.alloc(0))).toBe(true);
}

/** Makes a path look `ms` old. */
async function age(path: string, ms: number): Promise<void> {
  const then = new Date(Date.now() - ms);
  await utimes(path, then, then);
}

describe('BlobStore writes', () => {
  it('stores a buffer under blobs/aa/bb/<sha256>, read-only, and leaves no temp file', async () => {
    const data = randomBytes(10_000);
    const ref = await store.putBuffer(data);
    const id = sha(data);
    expect(ref).toEqual({ id, size: data.length });
    expect(store.path(id)).toBe(join(resolve(root, 'data'), 'blobs', id.slice(0, 2), id.slice(2, 4), id));
    expect(await blobFiles()).toEqual([join(id.slice(0, 2), id.slice(2, 4), id)]);
    expectBytes(await readFile(store.path(id)), data);
    expect((await stat(store.path(id))).mode & 0o777).toBe(0o444);
    expect(await tempFiles()).toEqual([]);
  });

  it('copies a file in and leaves the source alone', async () => {
    const data = randomBytes(300_000);
    const src = join(root, 'src.bin');
    await writeFile(src, data);
    const ref = await store.putFile(src);
    expect(ref).toEqual({ id: sha(data), size: data.length });
    expectBytes(await readFile(src), data);
    expectBytes(await store.read(ref.id), data);
    expect(await tempFiles()).toEqual([]);
  });

  it('moves a file in when asked, consuming the source', async () => {
    const data = randomBytes(50_000);
    const src = store.tempPath('upload');
    await writeFile(src, data);
    const ref = await store.putFile(src, { move: true });
    expect(ref).toEqual({ id: sha(data), size: data.length });
    await expect(lstat(src)).rejects.toMatchObject({ code: 'ENOENT' });
    expectBytes(await store.read(ref.id), data);
    expect(await tempFiles()).toEqual([]);
  });

  it('takes a checked download under the id its writer computed, and hashes it itself when the size disagrees', async () => {
    const data = randomBytes(30_000);
    const checked = store.tempPath('fetch');
    await writeFile(checked, data);
    // The writer's id is trusted as given: a checked download is not read a second time.
    const trusted = { id: sha(Buffer.from('the writer hashed this')), size: data.length };
    expect(await store.putFile(checked, { move: true, verified: trusted })).toEqual(trusted);
    expectBytes(await store.read(trusted.id), data);
    const other = store.tempPath('fetch');
    await writeFile(other, data);
    expect(await store.putFile(other, { move: true, verified: { id: trusted.id, size: 1 } })).toEqual({ id: sha(data), size: data.length });
    expect(await tempFiles()).toEqual([]);
  });

  it('refuses to move a symlink in (it would point outside the store)', async () => {
    const target = join(root, 'outside.bin');
    await writeFile(target, 'outside');
    const link = join(root, 'link.bin');
    await symlink(target, link);
    await expect(store.putFile(link, { move: true })).rejects.toThrow(/regular file/);
    expect(await blobFiles()).toEqual([]);
    expect((await lstat(link)).isSymbolicLink()).toBe(true);
  });

  it('stores an empty blob', async () => {
    const ref = await store.putBuffer(Buffer.alloc(0));
    expect(ref).toEqual({ id: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', size: 0 });
    expect(await store.read(ref.id)).toEqual(Buffer.alloc(0));
  });

  it('leaves an existing blob as it is, but refreshes its age', async () => {
    const data = randomBytes(1000);
    const ref = await store.putBuffer(data);
    const path = store.path(ref.id);
    const before = await stat(path);
    await age(path, 3_600_000);
    const again = await store.putBuffer(data);
    expect(again).toEqual(ref);
    const after = await stat(path);
    expect(after.ino).toBe(before.ino);
    expect(Date.now() - after.mtimeMs).toBeLessThan(60_000);
    expect(await tempFiles()).toEqual([]);
  });

  it('replaces an existing blob whose size is wrong (damaged)', async () => {
    const data = randomBytes(1000);
    const id = sha(data);
    const path = store.path(id);
    await mkdir(join(path, '..'), { recursive: true });
    await writeFile(path, data.subarray(0, 10)); // a truncated copy
    const ref = await store.putBuffer(data);
    expect(ref).toEqual({ id, size: 1000 });
    expectBytes(await readFile(path), data);
  });

  it('handles concurrent puts of the same content: one blob, same ref, no temp files', async () => {
    const data = randomBytes(200_000);
    const sources = await Promise.all(
      Array.from({ length: 8 }, async (_, i) => {
        const p = join(root, `copy-${i}`);
        await writeFile(p, data);
        return p;
      }),
    );
    const refs = await Promise.all([
      ...Array.from({ length: 24 }, () => store.putBuffer(data)),
      ...sources.slice(0, 4).map((p) => store.putFile(p)),
      ...sources.slice(4).map((p) => store.putFile(p, { move: true })),
    ]);
    const id = sha(data);
    for (const ref of refs) expect(ref).toEqual({ id, size: data.length });
    expect(await blobFiles()).toEqual([join(id.slice(0, 2), id.slice(2, 4), id)]);
    expectBytes(await readFile(store.path(id)), data);
    expect(await tempFiles()).toEqual([]);
  });

  it('handles concurrent puts of different content', async () => {
    const items = Array.from({ length: 40 }, () => randomBytes(5000));
    const refs = await Promise.all(items.map((d) => store.putBuffer(d)));
    expect(new Set(refs.map((r) => r.id)).size).toBe(40);
    for (const [i, ref] of refs.entries()) expectBytes(await store.read(ref.id), items[i]);
    expect(await blobFiles()).toHaveLength(40);
    expect(await tempFiles()).toEqual([]);
  });
});

describe('BlobStore reads and ids', () => {
  it('reads, stats, streams and range-streams a blob', async () => {
    const data = Buffer.from('0123456789abcdef');
    const { id } = await store.putBuffer(data);
    expect(await store.has(id)).toBe(true);
    expect(await store.stat(id)).toMatchObject({ size: 16 });
    expect(await text(store.createReadStream(id))).toBe('0123456789abcdef');
    expect(await text(store.createReadStream(id, { start: 2, end: 5 }))).toBe('2345');
    expect(await text(store.createReadStream(id, { start: 10 }))).toBe('abcdef');
    expect(() => store.createReadStream(id, { start: 5, end: 2 })).toThrow(RangeError);
    expect(() => store.createReadStream(id, { start: -1 })).toThrow(RangeError);
  });

  it('reports a missing blob plainly', async () => {
    const id = 'a'.repeat(64);
    expect(await store.has(id)).toBe(false);
    expect(await store.stat(id)).toBeNull();
    await expect(store.read(id)).rejects.toMatchObject({ code: 'ENOENT' });
    await expect(store.delete(id)).resolves.toBeUndefined();
  });

  it('deletes a blob', async () => {
    const { id } = await store.putBuffer(Buffer.from('bye'));
    await store.delete(id);
    expect(await store.has(id)).toBe(false);
  });

  it('refuses anything but a lower-case sha256 hex id, everywhere, before touching the disk', async () => {
    const bad = ['../../../etc/passwd', 'A'.repeat(64), 'a'.repeat(63), `${'a'.repeat(64)}/`, `${'a'.repeat(62)}/..`, '', 'g'.repeat(64)];
    for (const id of bad) {
      expect(isBlobId(id)).toBe(false);
      expect(() => store.path(id)).toThrow('invalid blob id');
      expect(() => store.createReadStream(id)).toThrow('invalid blob id');
      await expect(store.has(id)).rejects.toThrow('invalid blob id');
      await expect(store.stat(id)).rejects.toThrow('invalid blob id');
      await expect(store.read(id)).rejects.toThrow('invalid blob id');
      await expect(store.delete(id)).rejects.toThrow('invalid blob id');
    }
    expect(isBlobId('0'.repeat(64))).toBe(true);
  });

  it('gives unique temp paths under dataDir/tmp and validates the prefix', () => {
    const a = store.tempPath('upload');
    const b = store.tempPath('upload');
    expect(a).not.toBe(b);
    expect(a.startsWith(`${store.tmpDir}/upload-`)).toBe(true);
    expect(store.tempPath().startsWith(`${store.tmpDir}/tmp-`)).toBe(true);
    expect(() => store.tempPath('../x')).toThrow();
    expect(() => store.tempPath('a/b')).toThrow();
  });
});

describe('BlobStore sweep', () => {
  it('removes only blobs that are unreferenced and older than the grace period', async () => {
    const kept = await store.putBuffer(Buffer.from('referenced, old'));
    const doomed = await store.putBuffer(Buffer.from('unreferenced, old'));
    const fresh = await store.putBuffer(Buffer.from('unreferenced, just written'));
    await age(store.path(kept.id), 2 * 3_600_000);
    await age(store.path(doomed.id), 2 * 3_600_000);

    const asked: string[] = [];
    const result = await store.sweep(async (id) => {
      asked.push(id);
      await new Promise((r) => setTimeout(r, 1));
      return id === kept.id;
    }, 3_600_000);

    expect(result).toEqual({ removed: 1, kept: 2 });
    expect(await store.has(kept.id)).toBe(true);
    expect(await store.has(doomed.id)).toBe(false);
    expect(await store.has(fresh.id)).toBe(true);
    // A blob inside the grace period is kept without even asking.
    expect(asked.sort()).toEqual([kept.id, doomed.id].sort());
    expect(await tempFiles()).toEqual([]);
  });

  it('keeps a blob that is put again while the sweep is deciding about it', async () => {
    const data = Buffer.from('about to be referenced again');
    const { id } = await store.putBuffer(data);
    await age(store.path(id), 2 * 3_600_000);

    // The record is not written yet when the sweep asks; a put of the same content lands just then.
    const result = await store.sweep(async () => {
      await store.putBuffer(data);
      return false;
    }, 3_600_000);

    expect(result).toEqual({ removed: 0, kept: 1 });
    expectBytes(await store.read(id), data);
    expect(await tempFiles()).toEqual([]);
  });

  it('keeps blobs when the grace period is long, removes them when it is zero', async () => {
    const { id } = await store.putBuffer(Buffer.from('x'));
    expect(await store.sweep(() => false, 60_000)).toEqual({ removed: 0, kept: 1 });
    expect(await store.sweep(() => false, 0)).toEqual({ removed: 1, kept: 0 });
    expect(await store.has(id)).toBe(false);
  });

  it('leaves files that are not blobs alone', async () => {
    await mkdir(join(store.blobsDir, 'zz'), { recursive: true });
    await writeFile(join(store.blobsDir, 'zz', 'notes'), 'x');
    await mkdir(join(store.blobsDir, 'aa', 'bb'), { recursive: true });
    await writeFile(join(store.blobsDir, 'aa', 'bb', 'c'.repeat(64)), 'wrong folder for this id');
    expect(await store.sweep(() => false, 0)).toEqual({ removed: 0, kept: 0 });
    expect(await blobFiles()).toEqual([join('aa', 'bb', 'c'.repeat(64)), join('zz', 'notes')]);
  });
});

describe('BlobStore temp files', () => {
  it('cleanTemp removes old temp files and folders and keeps recent ones', async () => {
    const oldFile = store.tempPath('put');
    const oldDir = store.tempPath('upload');
    const newFile = store.tempPath('put');
    await writeFile(oldFile, 'x');
    await mkdir(join(oldDir, 'zip'), { recursive: true });
    await writeFile(join(oldDir, 'zip', '00001.png'), 'x');
    await writeFile(newFile, 'y');
    await age(oldFile, 7_200_000);
    await age(oldDir, 7_200_000);

    expect(await store.cleanTemp(3_600_000)).toBe(2);
    expect(await tempFiles()).toEqual([newFile.slice(store.tmpDir.length + 1)]);
  });

  it('a write killed midway leaves only a temp file, which cleanTemp removes', async () => {
    // A child process copies a FIFO into the store; we feed it part of the data and SIGKILL it.
    const fifo = join(root, 'feed.fifo');
    execFileSync('mkfifo', [fifo]);
    const moduleUrl = new URL('../../src/core/blob-store.ts', import.meta.url).href;
    const script = join(root, 'child.mts');
    await writeFile(
      script,
      `import { BlobStore } from ${JSON.stringify(moduleUrl)};\n` +
        `const store = new BlobStore(${JSON.stringify(join(root, 'data'))});\n` +
        `await store.init();\n` +
        `await store.putFile(${JSON.stringify(fifo)});\n` +
        `process.stdout.write('finished');\n`,
    );
    const child = spawn(process.execPath, ['--import', 'tsx', script], { cwd: process.cwd(), stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (c: Buffer) => (output += c.toString()));
    child.stderr.on('data', (c: Buffer) => (output += c.toString()));

    const writer = await open(fifo, 'w'); // waits for the child to open the FIFO
    try {
      await writer.write(randomBytes(256 * 1024));
      // Wait until the child has written some of it to its temp file.
      const deadline = Date.now() + 10_000;
      let temp: string | undefined;
      while (Date.now() < deadline) {
        const [name] = await tempFiles();
        if (name !== undefined && (await stat(join(store.tmpDir, name))).size > 0) {
          temp = name;
          break;
        }
        await new Promise((r) => setTimeout(r, 20));
      }
      expect(temp, output).toBeDefined();
      child.kill('SIGKILL');
      await once(child, 'exit');
    } finally {
      await writer.close().catch(() => {});
    }

    expect(output).not.toContain('finished');
    expect(await blobFiles()).toEqual([]);
    const left = await tempFiles();
    expect(left).toHaveLength(1);
    await age(join(store.tmpDir, left[0] ?? ''), 10_000);
    expect(await store.cleanTemp(5_000)).toBe(1);
    expect(await tempFiles()).toEqual([]);
  });
});
