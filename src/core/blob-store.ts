import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream, type ReadStream } from 'node:fs';
import { link, lstat, mkdir, open, readFile, rename, rm, stat, unlink, utimes, writeFile, type FileHandle } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { codeOf, listDir } from './fs-errors.ts';

/**
 * The content-addressed blob store: `dataDir/blobs/aa/bb/<sha256>`, written atomically (a temp
 * file under `dataDir/tmp` on the same file system, fsynced, hard-linked into place without
 * replacing anything, directory fsynced). Blobs are read-only files. Ids are validated wherever a
 * caller passes one, so no path from outside ever reaches the file system.
 *
 * Garbage collection is `sweep`: a blob is removed only when nothing references it AND its age
 * passes the grace period. Every put (also of content already stored) refreshes the blob's
 * modification time, so a blob put just before its record is written survives a concurrent
 * sweep. A new reference to an existing blob must therefore go through a put, not just copy an id.
 */

export type BlobRef = {
  /** SHA-256 of the content, lower-case hex */
  id: string;
  size: number;
};

export type BlobStat = { size: number; mtimeMs: number };

/** An inclusive byte range, as for fs.createReadStream (and HTTP Range). */
export type BlobRange = { start: number; end?: number };

const BLOB_ID = /^[0-9a-f]{64}$/;
const FAN = /^[0-9a-f]{2}$/;
const TEMP_PREFIX = /^[a-z0-9][a-z0-9-]{0,31}$/i;
const BLOB_MODE = 0o444;

export function isBlobId(id: unknown): id is string {
  return typeof id === 'string' && BLOB_ID.test(id);
}

function assertBlobId(id: string): void {
  if (!isBlobId(id)) throw new TypeError('invalid blob id');
}

/** Errors meaning "this file system cannot hard-link", where we fall back to rename. */
const NO_LINK = new Set(['EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'EXDEV', 'EMLINK', 'ENOSYS']);

async function fsyncDir(dir: string): Promise<void> {
  let handle: FileHandle | undefined;
  try {
    handle = await open(dir, 'r');
    await handle.sync();
  } catch (err) {
    // Some platforms and file systems cannot fsync a directory; the data itself is synced.
    if (!['EISDIR', 'EINVAL', 'EPERM', 'EBADF', 'ENOTSUP'].includes(codeOf(err) ?? '')) throw err;
  } finally {
    await handle?.close();
  }
}

export class BlobStore {
  readonly dataDir: string;
  readonly blobsDir: string;
  readonly tmpDir: string;

  constructor(dataDir: string) {
    this.dataDir = resolve(dataDir);
    this.blobsDir = join(this.dataDir, 'blobs');
    this.tmpDir = join(this.dataDir, 'tmp');
  }

  /** Creates the folders. Call once before anything else (it is idempotent). */
  async init(): Promise<void> {
    await mkdir(this.blobsDir, { recursive: true });
    await mkdir(this.tmpDir, { recursive: true });
  }

  /** Where blob `id` lives. Throws on anything that is not a SHA-256 hex id. */
  path(id: string): string {
    assertBlobId(id);
    return join(this.blobsDir, id.slice(0, 2), id.slice(2, 4), id);
  }

  /** A fresh, unique path under dataDir/tmp (nothing is created). */
  tempPath(prefix = 'tmp'): string {
    if (!TEMP_PREFIX.test(prefix)) throw new TypeError('invalid temp prefix');
    return join(this.tmpDir, `${prefix}-${randomUUID()}`);
  }

  async putBuffer(data: Buffer | Uint8Array): Promise<BlobRef> {
    const id = createHash('sha256').update(data).digest('hex');
    const tmp = this.tempPath('put');
    try {
      await writeFile(tmp, data, { flag: 'wx', mode: 0o600 });
      await seal(tmp);
      await this.commit(tmp, id, data.length);
    } finally {
      await rm(tmp, { force: true });
    }
    return { id, size: data.length };
  }

  /**
   * Stores the content of the file at `path`. With `move`, a regular file is moved in (renamed
   * when on the same file system, else copied and removed); on failure it is put back where it
   * was. Without `move` the file is copied and left alone. `verified`: the moved file's id and
   * size as its writer hashed them while writing it (a checked download), so it is not read again.
   */
  async putFile(path: string, opts: { move?: boolean; verified?: BlobRef } = {}): Promise<BlobRef> {
    if (opts.move) {
      const info = await lstat(path);
      if (!info.isFile()) throw new Error('putFile with move needs a regular file');
      const tmp = this.tempPath('put');
      try {
        await rename(path, tmp);
      } catch (err) {
        if (codeOf(err) !== 'EXDEV') throw err;
        const ref = await this.copyIn(path);
        await rm(path, { force: true });
        return ref;
      }
      try {
        const ref = opts.verified && opts.verified.size === info.size ? opts.verified : await hashFile(tmp);
        await seal(tmp);
        await this.commit(tmp, ref.id, ref.size);
        await rm(tmp, { force: true });
        return ref;
      } catch (err) {
        await rename(tmp, path).catch(() => rm(tmp, { force: true }));
        throw err;
      }
    }
    return this.copyIn(path);
  }

  async has(id: string): Promise<boolean> {
    return (await this.stat(id)) !== null;
  }

  async stat(id: string): Promise<BlobStat | null> {
    const file = this.path(id);
    try {
      const info = await stat(file);
      return { size: info.size, mtimeMs: info.mtimeMs };
    } catch (err) {
      if (codeOf(err) === 'ENOENT') return null;
      throw err;
    }
  }

  /** The whole blob in memory; for small blobs only. Rejects with ENOENT when missing. */
  async read(id: string): Promise<Buffer> {
    return readFile(this.path(id));
  }

  /** A stream of the blob, or of an inclusive byte range of it. Errors (ENOENT) on the stream. */
  createReadStream(id: string, range?: BlobRange): ReadStream {
    const file = this.path(id);
    if (range) {
      const { start, end } = range;
      if (!Number.isSafeInteger(start) || start < 0 || (end !== undefined && (!Number.isSafeInteger(end) || end < start))) {
        throw new RangeError('invalid byte range');
      }
      return createReadStream(file, end === undefined ? { start } : { start, end });
    }
    return createReadStream(file);
  }

  /** Removes a blob now, whatever references it; a missing blob is not an error. */
  async delete(id: string): Promise<void> {
    await rm(this.path(id), { force: true });
  }

  /**
   * Removes every blob that `referenced` says is unreferenced and whose last put is at least
   * `olderThanMs` ago. Safe against concurrent puts of the same content, also from another
   * process: a candidate is first moved aside, and put back if a put refreshed it meanwhile.
   */
  async sweep(referenced: (id: string) => boolean | Promise<boolean>, olderThanMs: number): Promise<{ removed: number; kept: number }> {
    let removed = 0;
    let kept = 0;
    const cutoff = () => Date.now() - olderThanMs;

    for (const a of await listDir(this.blobsDir)) {
      if (!FAN.test(a)) continue;
      for (const b of await listDir(join(this.blobsDir, a))) {
        if (!FAN.test(b)) continue;
        const dir = join(this.blobsDir, a, b);
        for (const id of await listDir(dir)) {
          if (!isBlobId(id) || !id.startsWith(a + b)) continue;
          const file = join(dir, id);
          let info;
          try {
            info = await lstat(file);
          } catch (err) {
            if (codeOf(err) === 'ENOENT') continue;
            throw err;
          }
          if (!info.isFile() || info.mtimeMs > cutoff() || (await referenced(id))) {
            kept += 1;
            continue;
          }
          if (await this.removeIfStale(file, cutoff())) removed += 1;
          else kept += 1;
        }
      }
    }
    return { removed, kept };
  }

  /** Removes temp files and folders (abandoned writes, extractions) at least `olderThanMs` old. */
  async cleanTemp(olderThanMs: number): Promise<number> {
    const cutoff = Date.now() - olderThanMs;
    let count = 0;
    for (const name of await listDir(this.tmpDir)) {
      const full = join(this.tmpDir, name);
      try {
        const info = await lstat(full);
        if (info.mtimeMs > cutoff) continue;
        await rm(full, { recursive: true, force: true });
        count += 1;
      } catch (err) {
        if (codeOf(err) !== 'ENOENT') throw err;
      }
    }
    return count;
  }

  // -------------------------------------------------------------------------------------------

  /** Copies a file into a temp file while hashing it, then commits it. */
  private async copyIn(source: string): Promise<BlobRef> {
    const tmp = this.tempPath('put');
    try {
      const meter = new HashMeter();
      await pipeline(createReadStream(source), meter, createWriteStream(tmp, { flags: 'wx', mode: 0o600 }));
      await seal(tmp);
      const ref = meter.ref();
      await this.commit(tmp, ref.id, ref.size);
      return ref;
    } finally {
      await rm(tmp, { force: true });
    }
  }

  /**
   * Links a sealed temp file into place. An existing blob of the same size is kept (and
   * refreshed); one of another size is damaged and replaced. The caller removes `tmp`.
   */
  private async commit(tmp: string, id: string, size: number): Promise<void> {
    const final = this.path(id);
    const dir = dirname(final);
    const firstCreated = await mkdir(dir, { recursive: true });

    for (let attempt = 0; ; attempt += 1) {
      try {
        await link(tmp, final);
        break;
      } catch (err) {
        const code = codeOf(err);
        if (code !== undefined && NO_LINK.has(code)) {
          await rename(tmp, final); // same content: replacing is harmless
          break;
        }
        if (code !== 'EEXIST' || attempt >= 5) throw err;
      }
      // Already stored: keep it, unless it is damaged, and refresh its age for the sweep.
      try {
        const existing = await stat(final);
        if (existing.size !== size) {
          await rename(tmp, final);
          break;
        }
        const now = new Date();
        await utimes(final, now, now);
        return;
      } catch (err) {
        if (codeOf(err) !== 'ENOENT') throw err;
        // A sweep moved it aside between our link and our look; link again.
      }
    }

    await fsyncDir(dir);
    if (firstCreated !== undefined) {
      // New fan-out folders: make their entries durable too.
      for (let d = dirname(dir); d.length >= this.blobsDir.length; d = dirname(d)) {
        await fsyncDir(d);
        if (d === this.blobsDir) break;
      }
    }
  }

  /** Moves a blob aside, then removes it unless a put refreshed it meanwhile (then it goes back). */
  private async removeIfStale(file: string, cutoff: number): Promise<boolean> {
    const aside = this.tempPath('sweep');
    try {
      await rename(file, aside);
    } catch (err) {
      if (codeOf(err) === 'ENOENT') return false;
      throw err;
    }
    const info = await stat(aside);
    if (info.mtimeMs > cutoff) {
      try {
        await link(aside, file);
      } catch (err) {
        if (codeOf(err) !== 'EEXIST') throw err; // put again meanwhile: that copy stays
      }
      await unlink(aside);
      return false;
    }
    await unlink(aside);
    return true;
  }
}

/** Hashes and counts what passes through. */
class HashMeter extends Transform {
  private readonly hash = createHash('sha256');
  private size = 0;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.hash.update(chunk);
    this.size += chunk.length;
    callback(null, chunk);
  }

  ref(): BlobRef {
    return { id: this.hash.digest('hex'), size: this.size };
  }
}

async function hashFile(file: string): Promise<BlobRef> {
  const hash = createHash('sha256');
  let size = 0;
  for await (const chunk of createReadStream(file) as AsyncIterable<Buffer>) {
    hash.update(chunk);
    size += chunk.length;
  }
  return { id: hash.digest('hex'), size };
}

/** Makes a finished temp file durable, read-only and fresh (its mtime is the grace clock). */
async function seal(file: string): Promise<void> {
  const handle = await open(file, 'r');
  try {
    const now = new Date();
    await handle.utimes(now, now);
    await handle.chmod(BLOB_MODE);
    await handle.sync();
  } finally {
    await handle.close();
  }
}
