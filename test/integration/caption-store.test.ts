import { Redis } from 'ioredis';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { UserError } from '../../src/core/errors.ts';
import { addTags, changedOrNull, removeTags, replaceTag } from '../../src/core/tag-ops.ts';
import { CaptionStore, MAX_VERSIONS, sentenceOf, type CaptionVersion } from '../../src/store/caption-store.ts';
import { DatasetStore, newId } from '../../src/store/dataset-store.ts';
import { characterDataset, imageFacts } from '../fixtures/image-facts.ts';
import { startRedis, type RedisHandle } from '../harness/redis-server.ts';

let server: RedisHandle;
let redis: Redis;
let redis2: Redis;
let prefix: string;
let datasets: DatasetStore;
let captions: CaptionStore;

beforeAll(async () => {
  server = await startRedis();
  redis = new Redis(server.url);
  redis2 = new Redis(server.url);
});
afterAll(async () => {
  redis.disconnect();
  redis2.disconnect();
  await server.stop();
});
beforeEach(() => {
  prefix = `t${newId(4)}`;
  datasets = new DatasetStore(redis, prefix);
  captions = new CaptionStore(redis, prefix);
});

/** A dataset with `count` images, #1…#count. */
async function datasetWithImages(count: number): Promise<string> {
  const ds = await datasets.createDataset(characterDataset(`ds${newId(3)}`));
  for (let i = 1; i <= count; i++) await datasets.addImage(ds.id, imageFacts(i));
  return ds.id;
}

const tagger = { by: 'tagger', source: 'tagger' } as const;
const edit = (by = 'u1') => ({ by, source: 'edit' }) as const;
const tagsOf = (v: CaptionVersion | null | undefined) => v?.tags;

describe('versions', () => {
  it('accumulate per image, newest first, with who, when and source', async () => {
    const ds = await datasetWithImages(2);
    const before = Date.now();
    const v1 = await captions.set(ds, 1, ['1girl', 'solo'], tagger);
    const v2 = await captions.set(ds, 1, [' 1girl ', 'Solo', 'smile'], edit('u7'));
    const v3 = await captions.set(ds, 1, ['1girl'], { by: 'u8', source: 'upload' });
    expect([v1.version, v2.version, v3.version]).toEqual([1, 2, 3]);
    expect(v2).toMatchObject({ tags: ['1girl', 'Solo', 'smile'], by: 'u7', source: 'edit', batchId: null, undone: null });
    expect(v2.at).toBeGreaterThanOrEqual(before);
    expect(await captions.get(ds, 1)).toEqual(v3);
    const history = await captions.history(ds, 1);
    expect(history.map((v) => [v.version, v.source, v.by])).toEqual([
      [3, 'upload', 'u8'],
      [2, 'edit', 'u7'],
      [1, 'tagger', 'tagger'],
    ]);
    expect((await captions.history(ds, 1, 1)).map((v) => v.version)).toEqual([3]);
    expect(await captions.get(ds, 2)).toBeNull();
    expect(await captions.history(ds, 2)).toEqual([]);
  });

  it('write nothing when the tags are unchanged', async () => {
    const ds = await datasetWithImages(1);
    const v1 = await captions.set(ds, 1, ['a', 'b'], tagger);
    expect(await captions.set(ds, 1, ['a', 'b', 'A'], edit())).toEqual(v1);
    expect(await captions.history(ds, 1)).toHaveLength(1);
  });

  it('are read many at once', async () => {
    const ds = await datasetWithImages(3);
    await captions.set(ds, 1, ['a'], tagger);
    await captions.set(ds, 3, ['c'], tagger);
    const many = await captions.getMany(ds, [1, 2, 3, 99]);
    expect([...many.keys()].sort()).toEqual([1, 3]);
    expect(tagsOf(many.get(3))).toEqual(['c']);
    expect((await captions.getMany(ds, [])).size).toBe(0);
  });

  it('keep an empty tag list as a list', async () => {
    const ds = await datasetWithImages(1);
    await captions.set(ds, 1, ['a'], tagger);
    const empty = await captions.set(ds, 1, [], edit());
    expect(empty.tags).toEqual([]);
    expect(tagsOf(await captions.undo(ds, 1, 'u1'))).toEqual(['a']);
    expect((await captions.history(ds, 1))[0]).toMatchObject({ tags: [], undone: { by: 'u1' } });
  });

  it('are bounded to the last MAX_VERSIONS per image', async () => {
    const ds = await datasetWithImages(1);
    for (let i = 1; i <= MAX_VERSIONS + 5; i++) await captions.set(ds, 1, [`t${i}`], edit());
    const history = await captions.history(ds, 1, 1000);
    expect(history).toHaveLength(MAX_VERSIONS);
    expect(history[0]?.version).toBe(MAX_VERSIONS + 5);
    expect(history.at(-1)?.version).toBe(6);
  });
});

describe('set refusals', () => {
  it('refuses an image that does not exist, and writes nothing', async () => {
    const ds = await datasetWithImages(1);
    await expect(captions.set(ds, 7, ['a'], edit())).rejects.toBeInstanceOf(UserError);
    expect(await captions.get(ds, 7)).toBeNull();
    await datasets.removeImages(ds, [1]);
    await expect(captions.set(ds, 1, ['a'], edit())).rejects.toThrow(/#1 is not in this dataset/);
  });

  it('refuses bad tags with a UserError and keeps the current version', async () => {
    const ds = await datasetWithImages(1);
    await captions.set(ds, 1, ['a'], tagger);
    await expect(captions.set(ds, 1, ['bad\u0007'], edit())).rejects.toThrow(/control character/);
    await expect(captions.set(ds, 1, ['x'.repeat(101)], edit())).rejects.toBeInstanceOf(UserError);
    expect((await captions.history(ds, 1)).map((v) => v.tags)).toEqual([['a']]);
  });

  it('with ifVersion, refuses when someone else changed the caption meanwhile', async () => {
    const ds = await datasetWithImages(1);
    const seen = await captions.set(ds, 1, ['a'], tagger);
    await captions.set(ds, 1, ['a', 'b'], edit('u2'));
    await expect(captions.set(ds, 1, ['a', 'c'], { ...edit('u1'), ifVersion: seen.version })).rejects.toThrow(/changed by someone else.*version 2/);
    const ok = await captions.set(ds, 1, ['a', 'c'], { ...edit('u1'), ifVersion: 2 });
    expect(ok.version).toBe(3);
  });
});

describe('setIfUntagged', () => {
  it('writes the first caption only', async () => {
    const ds = await datasetWithImages(1);
    const first = await captions.setIfUntagged(ds, 1, ['1girl'], tagger);
    expect(first).toMatchObject({ written: true, caption: { version: 1, tags: ['1girl'] } });
    const second = await captions.setIfUntagged(ds, 1, ['2girls'], tagger);
    expect(second).toMatchObject({ written: false, reason: 'captioned', caption: { tags: ['1girl'] } });
  });

  it('does not overwrite an edit made while the tagger ran, whichever lands first', async () => {
    const ds = await datasetWithImages(2);
    // The edit is sent first on image 1, the tagger first on image 2.
    const [e1, t1] = await Promise.all([captions.set(ds, 1, ['mine'], edit()), captions.setIfUntagged(ds, 1, ['auto'], tagger)]);
    const [t2, e2] = await Promise.all([captions.setIfUntagged(ds, 2, ['auto'], tagger), captions.set(ds, 2, ['mine'], edit())]);
    expect(t1.written).toBe(false);
    expect(e1.version).toBe(1);
    expect(t2.written).toBe(true);
    expect(e2.version).toBe(2);
    expect(tagsOf(await captions.get(ds, 1))).toEqual(['mine']);
    expect(tagsOf(await captions.get(ds, 2))).toEqual(['mine']);
  });

  it('while an explicit retag (set with source tagger) does replace an edit', async () => {
    const ds = await datasetWithImages(1);
    await captions.set(ds, 1, ['mine'], edit());
    await captions.set(ds, 1, ['auto'], tagger);
    expect(await captions.get(ds, 1)).toMatchObject({ tags: ['auto'], source: 'tagger', version: 2 });
  });

  it('reports an image that is gone', async () => {
    const ds = await datasetWithImages(1);
    await datasets.removeImages(ds, [1]);
    expect(await captions.setIfUntagged(ds, 1, ['a'], tagger)).toEqual({ written: false, reason: 'no-image' });
  });
});

describe('undo of one image', () => {
  it('brings back the previous version; twice goes back two; the first version stays', async () => {
    const ds = await datasetWithImages(1);
    await captions.set(ds, 1, ['v1'], tagger);
    await captions.set(ds, 1, ['v2'], edit());
    await captions.set(ds, 1, ['v3'], edit());

    const back = await captions.undo(ds, 1, 'u9');
    expect(back).toMatchObject({ version: 2, tags: ['v2'], undone: null });
    expect(await captions.get(ds, 1)).toEqual(back);
    expect((await captions.history(ds, 1))[0]).toMatchObject({ version: 3, tags: ['v3'], undone: { by: 'u9' } });

    expect(tagsOf(await captions.undo(ds, 1, 'u9'))).toEqual(['v1']);
    expect(await captions.undo(ds, 1, 'u9')).toBeNull();
    expect(tagsOf(await captions.get(ds, 1))).toEqual(['v1']);
  });

  it('skips versions already undone, and a new write takes the next number', async () => {
    const ds = await datasetWithImages(1);
    await captions.set(ds, 1, ['v1'], tagger);
    await captions.set(ds, 1, ['v2'], edit());
    await captions.undo(ds, 1, 'u1');
    const v3 = await captions.set(ds, 1, ['v3'], edit());
    expect(v3.version).toBe(3);
    expect(await captions.undo(ds, 1, 'u1')).toMatchObject({ version: 1, tags: ['v1'] });
    expect((await captions.history(ds, 1)).map((v) => [v.version, v.undone !== null])).toEqual([
      [3, true],
      [2, true],
      [1, false],
    ]);
  });

  it('has nothing to undo without a caption', async () => {
    const ds = await datasetWithImages(1);
    expect(await captions.undo(ds, 1, 'u1')).toBeNull();
  });
});

describe('bulk edits', () => {
  async function tagged(): Promise<string> {
    const ds = await datasetWithImages(4);
    await captions.set(ds, 1, ['1girl', 'long_hair', 'smile'], tagger);
    await captions.set(ds, 2, ['1girl', 'long hair'], tagger);
    await captions.set(ds, 3, ['1girl', 'hat'], tagger);
    // #4 is still being tagged.
    return ds;
  }
  const removeLongHair = (tags: string[]) => changedOrNull(removeTags(tags, ['long_hair']));

  it('apply to every listed image, tag the versions with the batch and record the batch', async () => {
    const ds = await tagged();
    const result = await captions.applyBulk(ds, [1, 2, 3, 4], removeLongHair, { by: 'u5', description: 'remove long_hair' });
    expect(result.changed).toEqual([1, 2]);
    expect(result.skipped).toEqual([4]);
    const now = await captions.getMany(ds, [1, 2, 3]);
    expect(tagsOf(now.get(1))).toEqual(['1girl', 'smile']);
    expect(tagsOf(now.get(2))).toEqual(['1girl']);
    expect(now.get(1)).toMatchObject({ version: 2, source: 'bulk', by: 'u5', batchId: result.batchId });
    expect(now.get(3)).toMatchObject({ version: 1, batchId: null });
    expect(await captions.get(ds, 4)).toBeNull();
    const [batch] = await captions.listBulkEdits(ds);
    expect(batch).toMatchObject({ id: result.batchId, by: 'u5', description: 'remove long_hair', changed: [1, 2], undone: null });
  });

  it('over 3 images are undone together by undoLastBulk', async () => {
    const ds = await tagged();
    const { batchId } = await captions.applyBulk(ds, [1, 2, 3], (t) => changedOrNull(addTags(t, ['outfit1'], 'start')), {
      by: 'u5',
      description: 'add outfit1',
    });
    expect(tagsOf(await captions.get(ds, 3))).toEqual(['outfit1', '1girl', 'hat']);

    const undone = await captions.undoLastBulk(ds, 'u6');
    expect(undone).toEqual({ batchId, description: 'add outfit1', restored: [1, 2, 3], skipped: [] });
    const now = await captions.getMany(ds, [1, 2, 3]);
    expect([1, 2, 3].map((no) => tagsOf(now.get(no)))).toEqual([
      ['1girl', 'long_hair', 'smile'],
      ['1girl', 'long hair'],
      ['1girl', 'hat'],
    ]);
    expect((await captions.listBulkEdits(ds))[0]?.undone).toMatchObject({ by: 'u6' });
    expect(await captions.undoLastBulk(ds, 'u6')).toBeNull();
  });

  it('undoLastBulk leaves an image edited after the bulk alone and reports it', async () => {
    const ds = await tagged();
    await captions.applyBulk(ds, [1, 2, 3], (t) => changedOrNull(replaceTag(t, '1girl', 'solo')), { by: 'u5', description: 'r' });
    await captions.set(ds, 2, ['solo', 'mine'], edit('u2'));
    const undone = await captions.undoLastBulk(ds, 'u5');
    expect(undone).toMatchObject({ restored: [1, 3], skipped: [2] });
    expect(tagsOf(await captions.get(ds, 2))).toEqual(['solo', 'mine']);
    expect(tagsOf(await captions.get(ds, 1))).toEqual(['1girl', 'long_hair', 'smile']);
  });

  it('undone one after another, newest first', async () => {
    const ds = await tagged();
    await captions.applyBulk(ds, [1, 2, 3], (t) => changedOrNull(addTags(t, ['a'], 'end')), { by: 'u5', description: 'first' });
    await captions.applyBulk(ds, [1, 2, 3], (t) => changedOrNull(addTags(t, ['b'], 'end')), { by: 'u5', description: 'second' });
    expect((await captions.undoLastBulk(ds, 'u5'))?.description).toBe('second');
    expect(tagsOf(await captions.get(ds, 3))).toEqual(['1girl', 'hat', 'a']);
    expect((await captions.undoLastBulk(ds, 'u5'))?.description).toBe('first');
    expect(tagsOf(await captions.get(ds, 3))).toEqual(['1girl', 'hat']);
    expect(await captions.undoLastBulk(ds, 'u5')).toBeNull();
  });

  it('that change nothing are not recorded', async () => {
    const ds = await tagged();
    const result = await captions.applyBulk(ds, [1, 2, 3], () => null, { by: 'u5', description: 'noop' });
    expect(result.changed).toEqual([]);
    expect(await captions.listBulkEdits(ds)).toEqual([]);
  });

  it('change nothing at all when one image would get an invalid caption', async () => {
    const ds = await tagged();
    const op = (t: string[]) => (t.includes('hat') ? [...t, 'x'.repeat(101)] : [...t, 'ok']);
    await expect(captions.applyBulk(ds, [1, 2, 3], op, { by: 'u5', description: 'bad' })).rejects.toThrow(/Nothing was changed: on #3, the tag/);
    expect((await captions.history(ds, 1)).length).toBe(1);
    expect(await captions.listBulkEdits(ds)).toEqual([]);
  });

  it('can remove every tag, and be undone', async () => {
    const ds = await tagged();
    await captions.applyBulk(ds, [3], () => [], { by: 'u5', description: 'clear' });
    expect(tagsOf(await captions.get(ds, 3))).toEqual([]);
    expect((await captions.undoLastBulk(ds, 'u5'))?.restored).toEqual([3]);
    expect(tagsOf(await captions.get(ds, 3))).toEqual(['1girl', 'hat']);
  });
});

describe('concurrent writers', () => {
  it('an edit landing between the bulk read and its commit is kept, the bulk retries on top of it', async () => {
    const ds = await datasetWithImages(3);
    for (const no of [1, 2, 3]) await captions.set(ds, no, ['1girl', `pose${no}`], tagger);
    let calls = 0;
    const op = (t: string[]) => {
      calls++;
      return changedOrNull(addTags(t, ['outfit1'], 'end'));
    };
    // Same connection: the bulk's read is sent first, then the edit, then the bulk's commit.
    const [bulk, edited] = await Promise.all([
      captions.applyBulk(ds, [1, 2, 3], op, { by: 'u5', description: 'add outfit1' }),
      captions.set(ds, 2, ['1girl', 'mine'], edit('u2')),
    ]);
    expect(calls).toBe(6); // read twice: the first commit was refused
    expect(edited.version).toBe(2);
    expect(bulk.changed).toEqual([1, 2, 3]);
    expect(await captions.get(ds, 2)).toMatchObject({ version: 3, tags: ['1girl', 'mine', 'outfit1'], batchId: bulk.batchId });
    expect((await captions.history(ds, 2)).map((v) => v.source)).toEqual(['bulk', 'edit', 'tagger']);
  });

  it('never lose a version when edits and bulk edits race on two connections', async () => {
    const ds = await datasetWithImages(3);
    for (const no of [1, 2, 3]) await captions.set(ds, no, ['base'], tagger);
    const other = new CaptionStore(redis2, prefix);
    const rounds = 15;
    let edits = 0;
    let bulkVersions = 0;
    for (let r = 0; r < rounds; r++) {
      const [, , bulk] = await Promise.all([
        other.set(ds, 2, ['base', `edit${r}a`], edit('u2')).then(() => edits++),
        captions.set(ds, 2, ['base', `edit${r}b`], edit('u3')).then(() => edits++),
        other.applyBulk(ds, [1, 2, 3], (t) => changedOrNull(addTags(t, [`bulk${r}`], 'end')), { by: 'u5', description: `b${r}` }),
      ]);
      bulkVersions += bulk.changed.filter((no) => no === 2).length;
      // Each round's bulk is applied to #1 and #3 exactly once, on top of the previous one.
      expect(tagsOf(await captions.get(ds, 1))).toEqual(['base', ...Array.from({ length: r + 1 }, (_, i) => `bulk${i}`)]);
    }
    const history = await captions.history(ds, 2, 1000);
    // Every write is in the history, numbered without gaps.
    expect(history).toHaveLength(1 + edits + bulkVersions);
    expect(history.map((v) => v.version)).toEqual(Array.from({ length: history.length }, (_, i) => history.length - i));
    // A bulk version is always its op applied to the version right before it.
    for (let i = 0; i + 1 < history.length; i++) {
      const v = history[i]!;
      if (v.source === 'bulk') {
        const round = Number(/^b(\d+)$/.exec((await captions.listBulkEdits(ds, 100)).find((b) => b.id === v.batchId)!.description)![1]);
        expect(v.tags).toEqual([...history[i + 1]!.tags, `bulk${round}`]);
      }
    }
  });
});

describe('deletion', () => {
  it('forgets removed images and whole datasets', async () => {
    const ds = await datasetWithImages(3);
    for (const no of [1, 2, 3]) await captions.set(ds, no, [`t${no}`], tagger);
    await captions.applyBulk(ds, [1, 2, 3], (t) => [...t, 'x'], { by: 'u5', description: 'x' });
    await captions.deleteForImages(ds, [2]);
    expect(await captions.get(ds, 2)).toBeNull();
    expect(await captions.history(ds, 2)).toEqual([]);
    // The bulk's image #2 is gone: the rest is still undone.
    expect(await captions.undoLastBulk(ds, 'u5')).toMatchObject({ restored: [1, 3], skipped: [2] });

    const keep = await datasetWithImages(1);
    await captions.set(keep, 1, ['kept'], tagger);
    await captions.deleteDataset(ds);
    expect(await redis.keys(`${prefix}:ds:${ds}:cap*`)).toEqual([]);
    expect(tagsOf(await captions.get(keep, 1))).toEqual(['kept']);
  });
});

describe('the sentences track', () => {
  it('keeps one sentence per image beside its tags, versioned and undoable on its own', async () => {
    const ds = await datasetWithImages(2);
    const sentences = new CaptionStore(redis, prefix, 'sentences');
    await captions.set(ds, 1, ['building', 'street'], tagger);
    await sentences.set(ds, 1, ['A photo of an old\n street.'], { by: 'captioner', source: 'captioner' });
    expect(sentenceOf((await sentences.get(ds, 1))!)).toBe('A photo of an old street.');
    expect(tagsOf(await captions.get(ds, 1))).toEqual(['building', 'street']);

    // The machine never overwrites a sentence that is there.
    expect(await sentences.setIfUntagged(ds, 1, ['Something else.'], { by: 'captioner', source: 'captioner' })).toMatchObject({
      written: false,
      reason: 'captioned',
    });
    await expect(sentences.set(ds, 1, ['  '], edit())).rejects.toThrow(UserError);
    await expect(sentences.set(ds, 1, ['a, b\u0007'], edit())).rejects.toThrow(/control character/);

    const bulk = await sentences.applyBulk(ds, [1, 2], ([s]) => [s!.replace('old', 'narrow')], { by: 'u1', description: 'replaced old' });
    expect(bulk).toMatchObject({ changed: [1], skipped: [2] });
    expect(sentenceOf((await sentences.get(ds, 1))!)).toBe('A photo of a narrow street.'.replace('a narrow', 'an narrow'));
    // A bulk edit of one track is not the other's to undo.
    expect(await captions.undoLastBulk(ds, 'u1')).toBeNull();
    expect(await sentences.undoLastBulk(ds, 'u1')).toMatchObject({ restored: [1] });
    expect(sentenceOf((await sentences.get(ds, 1))!)).toBe('A photo of an old street.');

    await captions.deleteForImages(ds, [1]);
    expect(await sentences.get(ds, 1)).toBeNull();
    await sentences.set(ds, 2, ['A second image.'], edit());
    await captions.deleteDataset(ds);
    expect(await redis.keys(`${prefix}:ds:${ds}:sent*`)).toEqual([]);
  });
});
