import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import sharp from 'sharp';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { captionerCacheDir, CAPTIONER_MODEL_FILES, ensureCaptionerModel } from '../../src/core/captioner-model.ts';
import { CaptionerImageError, CaptionerUnavailableError, loadCaptioner, type Captioner } from '../../src/core/florence-captioner.ts';
import { testCaptionFor, writeTestCaptioner } from '../fixtures/florence-model.ts';
import { photoJpeg } from '../fixtures/images.ts';

let tmp: string;
let modelDir: string;
let captioner: Captioner;

async function solid(name: string, r: number, g: number, b: number): Promise<string> {
  const file = path.join(tmp, name);
  await sharp({ create: { width: 96, height: 64, channels: 3, background: { r, g, b } } })
    .png()
    .toFile(file);
  return file;
}

async function failure(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a failure');
}

beforeAll(async () => {
  tmp = await mkdtemp(path.join(tmpdir(), 'captioner-'));
  modelDir = path.join(tmp, 'florence');
  await writeTestCaptioner(modelDir);
  captioner = await loadCaptioner(modelDir, { maxNewTokens: 40 });
});

afterAll(async () => {
  await captioner?.close();
  await rm(tmp, { recursive: true, force: true });
});

describe('the Florence-2 captioner on a generated export (transformers.js loading, processor and generation)', () => {
  it('writes one sentence per image of a batch, in order, from what each image shows', async () => {
    const files = [await solid('red.png', 230, 20, 20), await solid('blue.png', 20, 40, 230), await solid('green.png', 20, 200, 40)];
    expect(await captioner.caption(files)).toEqual([testCaptionFor('red'), testCaptionFor('blue'), testCaptionFor('green')]);
  });

  it('reads a large camera photo (scaled down before the processor) and says where the time went', async () => {
    const photo = await photoJpeg(7, 2400, 1600);
    const file = path.join(tmp, 'photo.jpg');
    await writeFile(file, photo.data);
    const { captions, timings } = await captioner.captionTimed([file]);
    expect(captions[0]).toMatch(/^A photo of a (red|green|blue) city street with old stone houses\.$/);
    expect(timings.prepareMs).toBeGreaterThan(0);
    expect(timings.generateMs).toBeGreaterThan(0);
  });

  it('names the unreadable image of a batch', async () => {
    const bad = path.join(tmp, 'bad.png');
    await writeFile(bad, 'not an image');
    const err = await failure(captioner.caption([await solid('ok.png', 200, 10, 10), bad]));
    expect(err).toBeInstanceOf(CaptionerImageError);
    expect((err as CaptionerImageError).index).toBe(1);
  });
});

describe('a missing or damaged captioner model', () => {
  it('names the missing file', async () => {
    const dir = path.join(tmp, 'half');
    await writeTestCaptioner(dir);
    await rm(path.join(dir, 'onnx', 'decoder_model_merged.onnx'));
    const err = await failure(loadCaptioner(dir));
    expect(err).toBeInstanceOf(CaptionerUnavailableError);
    expect(err.message).toContain(`${path.join(dir, 'onnx', 'decoder_model_merged.onnx')} is missing or empty`);
  });

  it('says ONNX Runtime could not load a corrupt session file', async () => {
    const dir = path.join(tmp, 'corrupt');
    await writeTestCaptioner(dir);
    await writeFile(path.join(dir, 'onnx', 'encoder_model.onnx'), Buffer.from('this is no onnx model at all'));
    const err = await failure(loadCaptioner(dir));
    expect(err).toBeInstanceOf(CaptionerUnavailableError);
    expect(err.message).toMatch(/^ONNX Runtime could not load the captioner model in .*corrupt/);
  });

  it('says which processor file is broken', async () => {
    const dir = path.join(tmp, 'badjson');
    await writeTestCaptioner(dir);
    await writeFile(path.join(dir, 'preprocessor_config.json'), '{ not json');
    const err = await failure(loadCaptioner(dir));
    expect(err).toBeInstanceOf(CaptionerUnavailableError);
    expect(err.message).toContain('processor or tokenizer files');
  });

  it('CAPTIONER_MODEL_DIR is used as it is, and a missing file is named with the setting', async () => {
    expect(await ensureCaptionerModel({ modelDir, modelUrl: 'http://127.0.0.1:9/none', dataDir: tmp })).toBe(modelDir);
    const dir = path.join(tmp, 'half2');
    await writeTestCaptioner(dir);
    await rm(path.join(dir, 'tokenizer.json'));
    const err = await failure(ensureCaptionerModel({ modelDir: dir, modelUrl: 'http://127.0.0.1:9/none', dataDir: tmp }));
    expect(err).toBeInstanceOf(CaptionerUnavailableError);
    expect(err.message).toContain(`The captioner model folder ${dir} (CAPTIONER_MODEL_DIR) has no tokenizer.json`);
  });
});

describe('ensureCaptionerModel downloads the export once', () => {
  let server: Server;
  let requests: string[];
  let origin: string;

  beforeAll(async () => {
    requests = [];
    server = createServer((req, res) => {
      requests.push(req.url ?? '');
      const rel = (req.url ?? '').replace(/^\/repo\/resolve\/main\//, '');
      if (!(CAPTIONER_MODEL_FILES as readonly string[]).includes(rel)) {
        res.writeHead(404).end();
        return;
      }
      readFile(path.join(modelDir, rel)).then(
        (body) => res.writeHead(200, { 'content-length': body.length }).end(body),
        () => res.writeHead(500).end(),
      );
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  it('into DATA_DIR/models/captioner/<hash>/ with each file’s SHA-256 recorded, then loads from there without a request', async () => {
    const dataDir = path.join(tmp, 'data');
    const modelUrl = `${origin}/repo/resolve/main`;
    const dir = await ensureCaptionerModel({ modelUrl, dataDir });
    expect(dir).toBe(captionerCacheDir(dataDir, modelUrl));
    expect(requests).toHaveLength(CAPTIONER_MODEL_FILES.length);
    const decoder = path.join(dir, 'onnx', 'decoder_model_merged.onnx');
    const sum = createHash('sha256')
      .update(await readFile(decoder))
      .digest('hex');
    expect(await readFile(`${decoder}.sha256`, 'utf8')).toBe(`${sum}  decoder_model_merged.onnx\n`);

    requests.length = 0;
    expect(await ensureCaptionerModel({ modelUrl, dataDir })).toBe(dir);
    expect(requests).toEqual([]);
    const fromCache = await loadCaptioner(dir, { maxNewTokens: 40 });
    try {
      expect(await fromCache.caption([await solid('red2.png', 240, 0, 0)])).toEqual([testCaptionFor('red')]);
    } finally {
      await fromCache.close();
    }
    expect((await stat(path.join(dir, 'onnx', 'vision_encoder.onnx'))).size).toBeGreaterThan(0);
  });
});
