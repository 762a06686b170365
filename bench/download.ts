/**
 * Signed-download throughput and memory: a 200 MB artifact in a BlobStore, served by
 * `startHttpServer` in a child process (so its RSS is the server's alone), downloaded with undici
 * from this process. Prints MB/s and the server's resident memory before the download against
 * its peak (sampled VmRSS and the kernel's VmHWM): streamed, the growth stays far below 200 MB.
 *
 * Run alone: npx tsx bench/download.ts [megabytes]
 * (The same file is the child: `node --import tsx bench/download.ts --serve <dataDir> <secret>`.)
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Redis } from 'ioredis';
import { Agent, request } from 'undici';
import { startHttpServer } from '../src/bot/http-server.ts';
import { BlobStore } from '../src/core/blob-store.ts';
import { createLogger } from '../src/core/logger.ts';
import { signDownload } from '../src/core/signed-url.ts';

const MB = 1_000_000;
const MiB = 1024 * 1024;

/** VmRSS / VmHWM of a process, in bytes. */
async function memoryOf(pid: number): Promise<{ rss: number; hwm: number }> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  return { rss: kb('VmRSS'), hwm: kb('VmHWM') };
}

/** `bytes` of random-looking content, produced 1 MiB at a time. */
function* randomish(bytes: number): Generator<Buffer> {
  const block = randomBytes(MiB);
  for (let sent = 0, i = 0; sent < bytes; i++) {
    const n = Math.min(MiB, bytes - sent);
    const chunk = Buffer.from(block.subarray(0, n));
    chunk.writeUInt32LE(i, 0); // every block differs a little; no two MiB alike
    for (let j = 4; j + 4 <= n; j += 4096) chunk.writeUInt32LE((chunk.readUInt32LE(j) ^ (i * 2654435761)) >>> 0, j);
    sent += n;
    yield chunk;
  }
}

async function download(url: string, dispatcher: Agent, hash: boolean): Promise<{ bytes: number; ms: number; sha256: string | null }> {
  const started = performance.now();
  const res = await request(url, { dispatcher });
  if (res.statusCode !== 200) throw new Error(`download answered ${res.statusCode}`);
  const h = hash ? createHash('sha256') : null;
  let bytes = 0;
  for await (const chunk of res.body) {
    bytes += (chunk as Buffer).length;
    h?.update(chunk as Buffer);
  }
  return { bytes, ms: performance.now() - started, sha256: h?.digest('hex') ?? null };
}

const fmt = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;
const rate = (bytes: number, ms: number) => `${(bytes / MB / (ms / 1000)).toFixed(0)} MB/s`;

export async function benchDownload(megabytes = 200): Promise<void> {
  const size = megabytes * MB;
  const dir = await mkdtemp(join(tmpdir(), 'lg-bench-download-'));
  const child = { pid: 0, kill: () => {} };
  try {
    const blobs = new BlobStore(join(dir, 'data'));
    await blobs.init();
    let started = performance.now();
    const tmp = join(dir, 'artifact.safetensors');
    await pipeline(Readable.from(randomish(size)), createWriteStream(tmp));
    const { id } = await blobs.putFile(tmp, { move: true });
    console.log(`download: ${megabytes} MB artifact written and stored in ${((performance.now() - started) / 1000).toFixed(1)} s (blob ${id.slice(0, 12)}…)`);

    const secret = randomBytes(32).toString('hex');
    const proc = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--serve', blobs.dataDir, secret], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    child.pid = proc.pid ?? 0;
    child.kill = () => void proc.kill('SIGTERM');
    const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
    const port = await new Promise<number>((resolve, reject) => {
      let out = '';
      proc.stdout.on('data', (chunk: Buffer) => {
        out += chunk.toString('utf8');
        const line = out.split('\n')[0];
        if (out.includes('\n') && line !== undefined) resolve((JSON.parse(line) as { port: number }).port);
      });
      proc.once('exit', (code) => reject(new Error(`the server exited (code ${code}) before it listened`)));
      proc.once('error', reject);
    });

    const url = `http://127.0.0.1:${port}${signDownload({ secret, blobId: id, fileName: 'bench.safetensors', expiresAt: new Date(Date.now() + 3600_000) })}`;
    const dispatcher = new Agent({ connections: 8 });

    // Warm-up: JIT and first allocations on both sides, a few MB through the same path.
    const warm = await request(url, { dispatcher, headers: { range: 'bytes=0-8388607' } });
    for await (const _ of warm.body) void _;
    await new Promise((r) => setTimeout(r, 200));

    const before = await memoryOf(child.pid);
    let peakRss = before.rss;
    const sampler = setInterval(() => {
      memoryOf(child.pid)
        .then((m) => (peakRss = Math.max(peakRss, m.rss)))
        .catch(() => undefined);
    }, 25);
    console.log(`  server pid ${child.pid}: RSS before the download ${fmt(before.rss)} (VmHWM so far ${fmt(before.hwm)})`);

    try {
      started = performance.now();
      const first = await download(url, dispatcher, true);
      if (first.bytes !== size || first.sha256 !== id) throw new Error('the download differs from the stored blob');
      console.log(`  1 download, sha256 checked: ${fmt(first.bytes)} in ${(first.ms / 1000).toFixed(2)} s = ${rate(first.bytes, first.ms)}`);

      const runs: number[] = [];
      for (let i = 0; i < 3; i++) {
        const r = await download(url, dispatcher, false);
        runs.push(r.ms);
      }
      const best = Math.min(...runs);
      console.log(`  3 more, no hashing: ${runs.map((ms) => rate(size, ms)).join(', ')} (best ${rate(size, best)})`);
      const single = await memoryOf(child.pid);
      console.log(`  server after one-at-a-time downloads: VmHWM ${fmt(single.hwm)} (+${fmt(single.hwm - before.rss)} over RSS before)`);

      started = performance.now();
      const parallel = await Promise.all(Array.from({ length: 4 }, () => download(url, dispatcher, false)));
      const allMs = performance.now() - started;
      const total = parallel.reduce((n, r) => n + r.bytes, 0);
      console.log(`  4 at once: ${fmt(total)} in ${(allMs / 1000).toFixed(2)} s = ${rate(total, allMs)} in all`);
    } finally {
      clearInterval(sampler);
    }

    const after = await memoryOf(child.pid);
    peakRss = Math.max(peakRss, after.rss);
    const growth = peakRss - before.rss;
    console.log(
      `  server memory: RSS before ${fmt(before.rss)}, peak sampled RSS ${fmt(peakRss)} (+${fmt(growth)}), ` +
        `VmHWM ${fmt(after.hwm)} (+${fmt(after.hwm - before.rss)} over RSS before), after ${fmt(after.rss)}`,
    );
    const verdict = after.hwm - before.rss < size / 4 ? 'streamed (growth far below the file size)' : 'BUFFERING? growth is a large part of the file size';
    console.log(`  ${verdict}`);
    await dispatcher.close();
    child.kill();
    await exited;
  } finally {
    child.kill();
    await rm(dir, { recursive: true, force: true });
  }
}

/** The child: serve `dataDir` with `secret`, print `{"port":…}` once listening. */
async function serve(dataDir: string, secret: string): Promise<void> {
  const blobs = new BlobStore(dataDir);
  // Never connected: the bench touches only /dl, which needs no Redis.
  const redis = new Redis({ lazyConnect: true, enableOfflineQueue: false });
  const logger = createLogger('warn', { write: (line: string) => void process.stderr.write(line) });
  // The bench measures streaming, not admission: limits high enough never to refuse it.
  const downloadLimits = { burst: 10_000, perMinute: 100_000, concurrentPerKey: 1000, concurrentTotal: 1000 };
  const http = await startHttpServer({ host: '127.0.0.1', port: 0, redis, logger, blobs, downloadSecret: secret, downloadLimits });
  process.stdout.write(`${JSON.stringify({ port: http.port })}\n`);
  process.once('SIGTERM', () => {
    void http.close().then(() => process.exit(0));
  });
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  if (process.argv[2] === '--serve') {
    await serve(process.argv[3] ?? '', process.argv[4] ?? '');
  } else {
    await benchDownload(Number(process.argv[2] ?? 200));
  }
}
