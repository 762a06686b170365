import { describe, expect, it } from 'vitest';
import { ModerationStore, parseTargetKey, targetKey, type AuditEntry } from '../../src/store/moderation-store.ts';
import { redisForFile } from '../harness/redis-per-file.ts';

const file = redisForFile();
let n = 0;
/** A store under its own prefix, so tests do not see each other's records. */
function fresh(): { store: ModerationStore; prefix: string } {
  const prefix = `mod${n++}`;
  return { store: new ModerationStore(file.redis, prefix), prefix };
}

const GUILD = '900000000000000001';

function entry(i: number): AuditEntry {
  return {
    at: 1_700_000_000_000 + i,
    moderatorId: '1',
    action: 'dismiss',
    guildId: GUILD,
    datasetId: 'ds1',
    datasetName: 'hero',
    no: i + 1,
    reason: null,
    effect: { reportsClosed: 1 },
  };
}

describe('moderation records', () => {
  it('name targets so that they read back, and nothing else does', () => {
    for (const t of [
      { kind: 'dataset', datasetId: 'abc123' },
      { kind: 'image', datasetId: 'abc123', no: 42 },
    ] as const) {
      expect(parseTargetKey(targetKey(t))).toEqual(t);
    }
    for (const bad of ['', 'd.', 'i.abc', 'i.abc.x', 'd.ABC', 'x.abc', 'i.abc.1.2']) expect(parseTargetKey(bad), bad).toBeNull();
  });

  it('keep one report per member and target, list reported targets oldest first, and close them with a count', async () => {
    const { store } = fresh();
    const image = { kind: 'image', datasetId: 'ds1', no: 2 } as const;
    const dataset = { kind: 'dataset', datasetId: 'ds1' } as const;
    expect(await store.report(GUILD, image, { reporterId: 'bob', reason: 'first', at: 10 })).toBe(true);
    expect(await store.report(GUILD, image, { reporterId: 'bob', reason: 'again', at: 11 })).toBe(false);
    expect(await store.report(GUILD, image, { reporterId: 'carol', reason: 'me too', at: 12 })).toBe(true);
    expect(await store.report(GUILD, dataset, { reporterId: 'bob', reason: 'whole thing', at: 20 })).toBe(true);
    expect(await store.reportedTargets(GUILD)).toEqual([image, dataset]);
    expect((await store.reports(GUILD, image)).map((r) => [r.reporterId, r.reason])).toEqual([
      ['bob', 'first'],
      ['carol', 'me too'],
    ]);
    expect(await store.closeReports(GUILD, [image])).toBe(2);
    expect(await store.reportedTargets(GUILD)).toEqual([dataset]);
    expect(await store.reports(GUILD, image)).toEqual([]);
    // After a dismissal the member may report it again.
    expect(await store.report(GUILD, image, { reporterId: 'bob', reason: 'back again', at: 30 })).toBe(true);
  });

  it('refuses to store a reason longer than the limit', async () => {
    const { store } = fresh();
    await expect(store.report(GUILD, { kind: 'dataset', datasetId: 'ds1' }, { reporterId: 'bob', reason: 'x'.repeat(301), at: 1 })).rejects.toThrow();
    expect(await store.reportedTargets(GUILD)).toEqual([]);
  });

  it('pages the audit log newest first and skips an entry that is not of its shape', async () => {
    const { store, prefix } = fresh();
    for (let i = 0; i < 12; i++) await store.log(entry(i));
    await file.redis.lpush(`${prefix}:guild:${GUILD}:mod:log`, '{"not":"an entry"}');
    const first = await store.logPage(GUILD, 0, 5);
    expect(first.total).toBe(13);
    expect(first.entries.map((e) => e.no)).toEqual([12, 11, 10, 9]);
    const last = await store.logPage(GUILD, 10, 5);
    expect(last.entries.map((e) => e.no)).toEqual([3, 2, 1]);
  });

  it('keeps approvals per image, and withholds a run with the files links are refused for', async () => {
    const { store, prefix } = fresh();
    await store.approve('ds1', new Map([[3, 'explicit']]));
    await file.redis.hset(`${prefix}:ds:ds1:mod:approved`, '4', 'very bad');
    expect(await store.approvals('ds1')).toEqual(new Map([[3, 'explicit']]));
    expect(await store.withheld('run1')).toBeNull();
    await store.withholdRun('run1', { by: 'mod', reason: 'removed', at: 5 }, ['blobA', 'blobB']);
    expect(await store.withheld('run1')).toEqual({ by: 'mod', reason: 'removed', at: 5 });
    expect([await store.isBlobWithheld('blobA'), await store.isBlobWithheld('blobC')]).toEqual([true, false]);
    await store.forgetDataset(GUILD, 'ds1');
    expect(await store.approvals('ds1')).toEqual(new Map());
  });
});
