import { beforeEach, describe, expect, it } from 'vitest';
import { UserError } from '../../src/core/errors.ts';
import { DatasetStore, newId } from '../../src/store/dataset-store.ts';
import { characterDataset, hex, imageFacts } from '../fixtures/image-facts.ts';
import { redisForFile } from '../harness/redis-per-file.ts';

const server = redisForFile();
let store: DatasetStore;

beforeEach(() => {
  store = new DatasetStore(server.redis, `t${newId(4)}`);
});

async function dataset(name = 'aria', guildId = 'g1') {
  return store.createDataset(characterDataset(name, guildId));
}

describe('datasets', () => {
  it('are unique by name within a guild, not across guilds', async () => {
    const ds = await dataset('aria', 'g1');
    await expect(dataset('ARIA', 'g1')).rejects.toBeInstanceOf(UserError);
    const other = await dataset('aria', 'g2');
    expect(other.id).not.toBe(ds.id);
    expect((await store.findDataset('g1', 'Aria'))?.id).toBe(ds.id);
    expect(await store.findDataset('g3', 'aria')).toBeNull();
  });

  it('start with a default concept and remember their thread', async () => {
    const ds = await dataset();
    expect((await store.getConcepts(ds.id)).map((c) => c.name)).toEqual(['main']);
    await store.setThread(ds.id, 't99');
    expect((await store.datasetForThread('t99'))?.id).toBe(ds.id);
  });
});

describe('images', () => {
  it('get increasing numbers and refuse the same pixels twice, even when racing', async () => {
    const ds = await dataset();
    const results = await Promise.all([store.addImage(ds.id, imageFacts(1)), store.addImage(ds.id, imageFacts(1)), store.addImage(ds.id, imageFacts(2))]);
    const added = results.filter((r) => r.added);
    expect(added).toHaveLength(2);
    expect(results.filter((r) => !r.added)).toEqual([{ added: false, duplicateOf: expect.any(Number) as number }]);
    expect(await store.imageNumbers(ds.id)).toEqual([1, 2]);
    expect(await store.pixelOwner(ds.id, 'pix2')).toBe(results[2].added ? 2 : 3);
  });

  it('are removed atomically with their indexes, and numbers are never reused', async () => {
    const ds = await dataset();
    await store.addImage(ds.id, imageFacts(1));
    await store.addImage(ds.id, imageFacts(2, 'u2'));
    const { removed, freedBlobs } = await store.removeImages(ds.id, [1, 42]);
    expect(removed.map((r) => r.no)).toEqual([1]);
    expect(freedBlobs.sort()).toEqual([hex(1001), hex(2001), hex(3001)].sort());
    expect(await store.pixelOwner(ds.id, 'pix1')).toBeNull();
    expect([...(await store.phashes(ds.id)).keys()]).toEqual([2]);
    const again = await store.addImage(ds.id, imageFacts(1));
    expect(again).toEqual({ added: true, no: 3 });
  });

  it('count blob references across datasets and free a blob only when the last record goes', async () => {
    const a = await dataset('a1');
    const b = await dataset('b1');
    await store.addImage(a.id, imageFacts(1));
    await store.addImage(b.id, imageFacts(1));
    expect(await store.blobRefCount(hex(2001))).toBe(2);
    expect((await store.removeImages(a.id, [1])).freedBlobs).toEqual([]);
    expect(await store.referencedBlobs()).toContain(hex(2001));
    expect((await store.removeImages(b.id, [1])).freedBlobs).toHaveLength(3);
    expect(await store.referencedBlobs()).not.toContain(hex(2001));
  });

  it('are not added to a dataset that does not exist', async () => {
    await expect(store.addImage('nope', imageFacts(1))).rejects.toBeInstanceOf(UserError);
  });
});
