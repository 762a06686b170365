/**
 * Fetching the tagger's files (src/core/tagger-model.ts) from a local HTTP server standing in for
 * Hugging Face: one download, checksums recorded and checked, redirects followed, clear errors.
 */
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { ensureTaggerModel, taggerCacheDir, TaggerUnavailableError } from '../../src/core/tagger-model.ts';
import { loadTagger } from '../../src/core/wd14-tagger.ts';
import { buildTestModel, makeSelectedTagsCsv, orderTags, type TestTag } from '../fixtures/onnx-model.ts';

type Route = { body: Buffer; status?: number } | { redirect: string } | { truncateAfter: number; body: Buffer } | { status: number };

const TAGS: TestTag[] = orderTags([
  { name: 'blue_sky', category: 0, b: 10 },
  { name: 'hatsune_miku', category: 4 },
]);
const MODEL = Buffer.from(buildTestModel({ tags: TAGS, size: 16 }));
const CSV = Buffer.from(makeSelectedTagsCsv(TAGS));
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

let server: Server;
let origin: string;
let routes: Map<string, Route>;
let requests: string[];
let dataDir: string;

beforeAll(async () => {
  server = createServer((req, res) => {
    const url = req.url ?? '/';
    requests.push(url);
    const route = routes.get(url);
    if (!route) {
      res.writeHead(404, 'Not Found').end('Entry not found');
    } else if ('redirect' in route) {
      res.writeHead(302, { location: route.redirect }).end();
    } else if ('truncateAfter' in route) {
      res.writeHead(200, { 'content-length': String(route.body.length) });
      res.write(route.body.subarray(0, route.truncateAfter), () => res.destroy());
    } else if ('body' in route) {
      res.writeHead(route.status ?? 200, { 'content-length': String(route.body.length) }).end(route.body);
    } else {
      res.writeHead(route.status).end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

beforeEach(async () => {
  routes = new Map<string, Route>([
    ['/repo/resolve/main/model.onnx', { body: MODEL }],
    ['/repo/resolve/main/selected_tags.csv', { body: CSV }],
  ]);
  requests = [];
  dataDir = await mkdtemp(path.join(os.tmpdir(), 'lg-tagger-model-'));
});

afterEach(async () => {
  await rm(dataDir, { recursive: true, force: true });
});

const modelUrl = () => `${origin}/repo/resolve/main`;

async function failure(promise: Promise<unknown>): Promise<TaggerUnavailableError> {
  const err: unknown = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(TaggerUnavailableError);
  return err as TaggerUnavailableError;
}

describe('ensureTaggerModel: downloads', () => {
  it('downloads both files once into DATA_DIR/models/tagger/<hash of the URL>/, recording their SHA-256', async () => {
    const dir = await ensureTaggerModel({ modelUrl: `${modelUrl()}/`, dataDir });
    expect(dir).toBe(taggerCacheDir(dataDir, modelUrl()));
    expect(path.relative(dataDir, dir)).toMatch(/^models\/tagger\/[0-9a-f]{16}$/);
    expect(await readFile(path.join(dir, 'model.onnx'))).toEqual(MODEL);
    expect(await readFile(path.join(dir, 'selected_tags.csv'))).toEqual(CSV);
    expect(await readFile(path.join(dir, 'model.onnx.sha256'), 'utf8')).toBe(`${sha256(MODEL)}  model.onnx\n`);
    expect(await readFile(path.join(dir, 'selected_tags.csv.sha256'), 'utf8')).toBe(`${sha256(CSV)}  selected_tags.csv\n`);
    expect((await readdir(dir)).filter((f) => f.endsWith('.part'))).toEqual([]);
    expect(requests).toEqual(['/repo/resolve/main/model.onnx', '/repo/resolve/main/selected_tags.csv']);

    expect(await ensureTaggerModel({ modelUrl: modelUrl(), dataDir })).toBe(dir);
    expect(requests).toHaveLength(2); // nothing fetched again

    const tagger = await loadTagger(dir);
    expect(tagger.info.tagCount).toBe(TAGS.length);
    await tagger.close();
  });

  it('shares one download between simultaneous callers', async () => {
    const [a, b] = await Promise.all([ensureTaggerModel({ modelUrl: modelUrl(), dataDir }), ensureTaggerModel({ modelUrl: modelUrl(), dataDir })]);
    expect(a).toBe(b);
    expect(requests).toHaveLength(2);
  });

  it('follows redirects, as Hugging Face sends large files from its CDN', async () => {
    routes.set('/repo/resolve/main/model.onnx', { redirect: `${origin}/cdn/abc123` });
    routes.set('/cdn/abc123', { body: MODEL });
    const dir = await ensureTaggerModel({ modelUrl: modelUrl(), dataDir });
    expect(await readFile(path.join(dir, 'model.onnx'))).toEqual(MODEL);
    expect(requests).toContain('/cdn/abc123');
  });

  it('fetches again a file that no longer matches its recorded checksum', async () => {
    const dir = await ensureTaggerModel({ modelUrl: modelUrl(), dataDir });
    await writeFile(path.join(dir, 'model.onnx'), MODEL.subarray(0, 100)); // e.g. a disk problem
    await ensureTaggerModel({ modelUrl: modelUrl(), dataDir });
    expect(await readFile(path.join(dir, 'model.onnx'))).toEqual(MODEL);
    expect(requests.filter((r) => r.endsWith('model.onnx'))).toHaveLength(2);
  });

  it('refuses a new download that differs from the recorded checksum (the file changed upstream)', async () => {
    const dir = await ensureTaggerModel({ modelUrl: modelUrl(), dataDir });
    await rm(path.join(dir, 'selected_tags.csv'));
    routes.set('/repo/resolve/main/selected_tags.csv', { body: Buffer.from(makeSelectedTagsCsv([{ name: 'other', category: 0 }])) });
    const err = await failure(ensureTaggerModel({ modelUrl: modelUrl(), dataDir }));
    expect(err.message).toContain(`The tagger file downloaded from ${modelUrl()}/selected_tags.csv has SHA-256`);
    expect(err.message).toContain(`not ${sha256(CSV)} (the checksum recorded at the first download`);
    expect(err.message).toContain(`delete ${dir}`);
    expect(await readdir(dir)).not.toContain('selected_tags.csv');
  });

  it('enforces a known checksum on the first download', async () => {
    const err = await failure(ensureTaggerModel({ modelUrl: modelUrl(), dataDir, expectedSha256: { model: 'f'.repeat(64) } }));
    expect(err.message).toContain(`has SHA-256 ${sha256(MODEL)}, not ${'f'.repeat(64)} (the published checksum)`);
    expect(await readdir(taggerCacheDir(dataDir, modelUrl()))).not.toContain('model.onnx');

    const dir = await ensureTaggerModel({ modelUrl: modelUrl(), dataDir, expectedSha256: { model: sha256(MODEL).toUpperCase() } });
    expect(await readdir(dir)).toContain('model.onnx');
    expect(await readdir(dir)).not.toContain('model.onnx.sha256'); // nothing to record: the sum is known
  });
});

describe('ensureTaggerModel: failures are explained to the admin', () => {
  it('reports a 404 with the URL, and keeps nothing', async () => {
    routes.delete('/repo/resolve/main/model.onnx');
    const err = await failure(ensureTaggerModel({ modelUrl: modelUrl(), dataDir }));
    expect(err.message).toBe(
      `Could not download the tagger model file ${modelUrl()}/model.onnx: the server answered 404 Not Found. ` +
        `Check TAGGER_MODEL_URL (the folder holding model.onnx and selected_tags.csv) and that this machine can reach ${new URL(origin).host}, ` +
        'or set TAGGER_MODEL_DIR to a folder holding model.onnx and selected_tags.csv.',
    );
    expect(await readdir(taggerCacheDir(dataDir, modelUrl()))).toEqual([]);
  });

  it('reports an unreachable server', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const err = await failure(ensureTaggerModel({ modelUrl: `http://127.0.0.1:${port}/repo`, dataDir }));
    expect(err.message).toMatch(new RegExp(`^Could not download the tagger model file http://127\\.0\\.0\\.1:${port}/repo/model\\.onnx: connect ECONNREFUSED`));
    expect(err.message).toContain('or set TAGGER_MODEL_DIR');
  });

  it('refuses a download cut short, and keeps no partial file', async () => {
    routes.set('/repo/resolve/main/model.onnx', { body: MODEL, truncateAfter: 64 });
    const err = await failure(ensureTaggerModel({ modelUrl: modelUrl(), dataDir }));
    expect(err.message).toContain(`Could not download the tagger model file ${modelUrl()}/model.onnx:`);
    expect(await readdir(taggerCacheDir(dataDir, modelUrl()))).toEqual([]);
  });

  it('refuses a file larger than allowed', async () => {
    const err = await failure(ensureTaggerModel({ modelUrl: modelUrl(), dataDir, maxBytes: 100 }));
    expect(err.message).toContain(`it is ${MODEL.length} bytes, more than the 100 allowed`);
  });
});

describe('ensureTaggerModel: an admin-provided folder', () => {
  it('uses TAGGER_MODEL_DIR as it is, without any request', async () => {
    const dir = path.join(dataDir, 'mine');
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir);
    await writeFile(path.join(dir, 'model.onnx'), MODEL);
    await writeFile(path.join(dir, 'selected_tags.csv'), CSV);
    expect(await ensureTaggerModel({ modelDir: dir, modelUrl: modelUrl(), dataDir })).toBe(dir);
    expect(requests).toEqual([]);
  });

  it('says which file is missing from TAGGER_MODEL_DIR', async () => {
    const dir = path.join(dataDir, 'half');
    await mkdir(dir);
    await writeFile(path.join(dir, 'model.onnx'), MODEL);
    const err = await failure(ensureTaggerModel({ modelDir: dir, modelUrl: modelUrl(), dataDir }));
    expect(err.message).toBe(
      `The tagger model folder ${dir} (TAGGER_MODEL_DIR) has no selected_tags.csv. It needs model.onnx and selected_tags.csv from a WD14 tagger ` +
        '(e.g. SmilingWolf/wd-vit-tagger-v3), or unset TAGGER_MODEL_DIR to download them from TAGGER_MODEL_URL.',
    );
    expect(requests).toEqual([]);
  });
});
