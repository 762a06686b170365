/**
 * Staging a run's dataset: hard links to the masters (copies where the file system refuses
 * links), caption files only where there is a caption, idempotent re-staging that cleans up.
 */
import { mkdtemp, readdir, readFile, rm, stat, writeFile, mkdir, access } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { BlobStore } from '../../src/core/blob-store.ts';
import { captionFileText, stageDataset, StagingError, type StageConcept } from '../../src/worker/staging.ts';

let root: string;
let blobs: BlobStore;

beforeEach(async () => {
  root = await mkdtemp(join(tmpdir(), 'lg-staging-'));
  blobs = new BlobStore(join(root, 'data'));
  await blobs.init();
});
afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

/** Distinct small "PNG" blobs (the content only has to differ; staging never decodes). */
async function putImages(n: number, tag = 'img'): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) ids.push((await blobs.putBuffer(Buffer.from(`\x89PNG fake ${tag} ${i}`))).id);
  return ids;
}

async function inode(path: string) {
  const s = await stat(path);
  return `${s.dev}:${s.ino}`;
}

const missing = (path: string) =>
  access(path).then(
    () => false,
    () => true,
  );

describe('stageDataset', () => {
  it('hard-links every master as <id>.png in its concept folder and writes captions only where there is one', async () => {
    const [a, b, c, d] = await putImages(4);
    const concepts: StageConcept[] = [
      {
        folder: '10_main',
        images: [
          { id: 'img0', blob: a!, caption: 'zkchar, smile' },
          { id: 'img1', blob: b!, caption: 'zkchar, red eyes\nsecond line\r\n' },
          { id: 'img2', blob: c!, caption: null },
        ],
      },
      { folder: '4_school uniform', images: [{ id: 'u0', blob: d!, caption: '   ' }] },
    ];
    const staging = join(root, 'data', 'runs', 'r1', 'dataset');
    const result = await stageDataset(blobs, staging, concepts);
    expect(result).toMatchObject({ images: 4, linked: 4, copied: 0, unchanged: 0, captionsWritten: 2, removed: 0 });

    expect(await inode(join(staging, '10_main', 'img0.png'))).toBe(await inode(blobs.path(a!)));
    expect(await inode(join(staging, '4_school uniform', 'u0.png'))).toBe(await inode(blobs.path(d!)));
    expect(await readFile(join(staging, '10_main', 'img0.txt'), 'utf8')).toBe('zkchar, smile\n');
    // sd-scripts reads the first line only: the caption is kept on one line.
    expect(await readFile(join(staging, '10_main', 'img1.txt'), 'utf8')).toBe('zkchar, red eyes second line\n');
    // No caption (or a blank one): no file, so kohya uses the class tokens; never an empty file.
    expect(await missing(join(staging, '10_main', 'img2.txt'))).toBe(true);
    expect(await missing(join(staging, '4_school uniform', 'u0.txt'))).toBe(true);
    expect((await readdir(join(staging, '10_main'))).sort()).toEqual(['img0.png', 'img0.txt', 'img1.png', 'img1.txt', 'img2.png']);
  });

  it('re-stages idempotently: what is right stays, what changed is replaced, leftovers go', async () => {
    const [a, b, c] = await putImages(3);
    const staging = join(root, 'stage');
    await stageDataset(blobs, staging, [
      {
        folder: '10_main',
        images: [
          { id: 'img0', blob: a!, caption: 'one' },
          { id: 'img1', blob: b!, caption: 'two' },
        ],
      },
      { folder: '3_old', images: [{ id: 'x', blob: c!, caption: null }] },
    ]);
    const before = await inode(join(staging, '10_main', 'img0.png'));
    await writeFile(join(staging, 'config.toml'), 'kept = true\n');
    await writeFile(join(staging, '10_main', 'stray.png'), 'left by someone');
    await writeFile(join(staging, '10_main', '.img0.deadbeef.tmp'), 'a crashed write');

    const again = await stageDataset(blobs, staging, [
      // img0 unchanged; img1 now points at another master and has no caption any more.
      {
        folder: '10_main',
        images: [
          { id: 'img0', blob: a!, caption: 'one' },
          { id: 'img1', blob: c!, caption: null },
        ],
      },
    ]);
    expect(again).toMatchObject({ images: 2, unchanged: 1, linked: 1, captionsWritten: 0 });
    expect(again.removed).toBe(4); // 3_old/, stray.png, img1.txt, the temp file
    expect(await inode(join(staging, '10_main', 'img0.png'))).toBe(before);
    expect(await inode(join(staging, '10_main', 'img1.png'))).toBe(await inode(blobs.path(c!)));
    expect(await missing(join(staging, '10_main', 'img1.txt'))).toBe(true);
    expect(await missing(join(staging, '3_old'))).toBe(true);
    expect(await readFile(join(staging, 'config.toml'), 'utf8')).toBe('kept = true\n');
    expect((await readdir(join(staging, '10_main'))).sort()).toEqual(['img0.png', 'img0.txt', 'img1.png']);

    const third = await stageDataset(blobs, staging, [
      {
        folder: '10_main',
        images: [
          { id: 'img0', blob: a!, caption: 'one, changed' },
          { id: 'img1', blob: c!, caption: null },
        ],
      },
    ]);
    expect(third).toMatchObject({ unchanged: 2, linked: 0, captionsWritten: 1, removed: 0 });
    expect(await readFile(join(staging, '10_main', 'img0.txt'), 'utf8')).toBe('one, changed\n');
  });

  it('copies where the file system cannot hard-link (another device)', async (ctx) => {
    const shm = await mkdtemp('/dev/shm/lg-staging-').catch(() => null);
    if (shm === null) ctx.skip();
    try {
      const staging = join(shm!, 'stage');
      await mkdir(staging);
      if ((await stat(staging)).dev === (await stat(blobs.blobsDir)).dev) ctx.skip();
      const [a] = await putImages(1);
      const first = await stageDataset(blobs, staging, [{ folder: '1_main', images: [{ id: 'img0', blob: a!, caption: 'x' }] }]);
      expect(first).toMatchObject({ copied: 1, linked: 0 });
      expect(await readFile(join(staging, '1_main', 'img0.png'))).toEqual(await readFile(blobs.path(a!)));
      const second = await stageDataset(blobs, staging, [{ folder: '1_main', images: [{ id: 'img0', blob: a!, caption: 'x' }] }]);
      expect(second).toMatchObject({ copied: 0, unchanged: 1 });
    } finally {
      await rm(shm!, { recursive: true, force: true });
    }
  });

  it('refuses unsafe names and a missing master, naming them', async () => {
    const [a] = await putImages(1);
    const staging = join(root, 'stage');
    const bad = (concepts: StageConcept[]) => stageDataset(blobs, staging, concepts);
    await expect(bad([{ folder: '../10_main', images: [{ id: 'img0', blob: a!, caption: null }] }])).rejects.toThrow(StagingError);
    await expect(bad([{ folder: '10_main', images: [{ id: '../../etc/x', blob: a!, caption: null }] }])).rejects.toThrow(/image id/);
    await expect(bad([{ folder: '10_main', images: [{ id: '.hidden', blob: a!, caption: null }] }])).rejects.toThrow(/image id/);
    await expect(bad([{ folder: 'main', images: [{ id: 'img0', blob: a!, caption: null }] }])).rejects.toThrow(/repeats/);
    await expect(
      bad([
        {
          folder: '10_main',
          images: [
            { id: 'img0', blob: a!, caption: null },
            { id: 'img0', blob: a!, caption: null },
          ],
        },
      ]),
    ).rejects.toThrow(/twice/);
    const absent = 'f'.repeat(64);
    await expect(bad([{ folder: '10_main', images: [{ id: 'img9', blob: absent, caption: null }] }])).rejects.toThrow(/img9: its master .* is missing/);
  });

  it('writes a caption file only for text with something in it', () => {
    expect(captionFileText(null)).toBeNull();
    expect(captionFileText(' \n\t ')).toBeNull();
    expect(captionFileText(' a, b ')).toBe('a, b\n');
    expect(captionFileText('a\r\nb')).toBe('a b\n');
  });
});
