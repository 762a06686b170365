/**
 * Two bot processes of one deployment (one token, one Redis, one data folder), as during a rolling
 * restart or with a second instance for availability. Discord sends every event to both; they
 * take uploads and removals on one dataset at the same time, and the dataset must come out as one
 * process alone would leave it.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { APIMessage } from 'discord.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BlobStore } from '../../src/core/blob-store.ts';
import { DatasetStore, type Dataset } from '../../src/store/dataset-store.ts';
import { keys } from '../../src/store/keys.ts';
import { normalJpeg, reencodedCopy, type ImageFile } from '../fixtures/images.ts';
import type { InteractionHandle } from '../harness/fake-discord.ts';
import type { RecordedCall } from '../harness/fake-discord-types.ts';
import { World, type BotProcess } from './world.ts';

let world: World;
let store: DatasetStore;
let blobs: BlobStore;
let bots: BotProcess[];

const WAIT = 90_000;

beforeAll(async () => {
  world = await World.start({ env: { DISCORD_MESSAGE_CONTENT: 'true' } });
  store = new DatasetStore(world.redis, world.env.REDIS_PREFIX!);
  blobs = new BlobStore(world.dataDir);
  bots = [await world.spawnBot(), await world.spawnBot()];
}, 120_000);
afterAll(async () => {
  await world?.close();
});

let nextUser = 0;
function member(name: string) {
  nextUser += 1;
  return { id: `2000000000000000${String(nextUser).padStart(2, '0')}`, username: name };
}

function named(file: ImageFile, name: string): ImageFile {
  return { ...file, name };
}

/** An upload through `/dataset add`; resolves to the report it got. */
async function addByCommand(user: { id: string; username: string }, files: ImageFile[]): Promise<string> {
  const options: Record<string, unknown> = { dataset: 'shared' };
  files.forEach((f, i) => {
    options[`image${i + 1}`] = world.discord.addAttachment({ filename: f.name, data: f.data, contentType: f.contentType });
  });
  const h = world.discord.sendCommand({ name: 'dataset', subcommand: 'add', user, options: options as Record<string, string> });
  await h.waitForEdit((c) => JSON.stringify(c.json).includes(' added, '), WAIT);
  handles.push(h);
  return h.lastReply()?.content ?? '';
}

/** An upload posted in the dataset's thread; resolves to the report replying to it. */
async function addByPost(threadId: string, user: { id: string; username: string }, files: ImageFile[]): Promise<string> {
  const message = world.discord.postUserMessage({
    channelId: threadId,
    author: user,
    attachments: files.map((f) => world.discord.addAttachment({ filename: f.name, data: f.data, contentType: f.contentType, channelId: threadId })),
  });
  posts.push(message);
  const reply = await world.discord.waitForCall((c) => isReplyTo(c, threadId, message.id), WAIT);
  return String((reply.json as { content?: string }).content ?? '');
}

function isReplyTo(c: RecordedCall, threadId: string, messageId: string): boolean {
  const json = c.json as { message_reference?: { message_id?: string } } | undefined;
  return c.method === 'POST' && c.path === `/channels/${threadId}/messages` && c.status < 300 && json?.message_reference?.message_id === messageId;
}

async function remove(user: { id: string; username: string }, images: string): Promise<string> {
  const h = world.discord.sendCommand({ name: 'dataset', subcommand: 'remove', user, options: { dataset: 'shared', images } });
  await h.waitForEdit((c) => JSON.stringify(c.json).includes('Removed'), WAIT);
  handles.push(h);
  return h.lastReply()?.content ?? '';
}

const handles: InteractionHandle[] = [];
const posts: APIMessage[] = [];

/** `file name` → the image number it was added as, or null when it was refused. */
function outcomes(report: string): Map<string, number | null> {
  const out = new Map<string, number | null>();
  for (const line of report.split('\n')) {
    const added = /^(?:✅|⚠️) \*\*#(\d+)\*\* `([^`]+)`/.exec(line);
    const refused = /^❌ `([^`]+)`/.exec(line);
    if (added) out.set(added[2]!, Number(added[1]));
    else if (refused) out.set(refused[1]!, null);
  }
  return out;
}

function removedNos(reply: string): number[] {
  return [...(/: (#.*)\.$/.exec(reply)?.[1] ?? '').matchAll(/#(\d+)/g)].map((m) => Number(m[1]));
}

/** Every blob file under the data folder. */
async function blobFiles(): Promise<Set<string>> {
  const out = new Set<string>();
  for (const a of await readdir(blobs.blobsDir)) {
    for (const b of await readdir(join(blobs.blobsDir, a))) {
      for (const id of await readdir(join(blobs.blobsDir, a, b))) out.add(id);
    }
  }
  return out;
}

describe('two bot processes on one dataset', () => {
  it('take interleaved uploads and removals without losing, doubling or orphaning anything', { timeout: 300_000 }, async () => {
    const owner = member('owner');
    const create = world.discord.sendCommand({
      name: 'dataset',
      subcommand: 'create',
      user: owner,
      options: { name: 'shared', trigger: 'ohwx_shared', class: 'woman', kind: 'character', base: 'sd15' },
    });
    await create.waitForEdit(undefined, WAIT);
    handles.push(create);
    const ds = (await store.findDataset(world.discord.guildId, 'shared')) as Dataset;
    const thread = world.discord.threads(world.discord.channelId).find((t) => t.name === 'dataset · shared')!;

    // Images the members already contributed.
    const seeders = [member('s1'), member('s2'), member('s3'), member('s4')];
    const seeds = await Promise.all(
      seeders.map(async (_, i) => [named(await normalJpeg(100 + 2 * i), `seed-${i}-a.jpg`), named(await normalJpeg(101 + 2 * i), `seed-${i}-b.jpg`)]),
    );
    const seeded = await Promise.all(seeders.map((u, i) => addByCommand(u, seeds[i]!)));
    const seedNo = (i: number, which: 'a' | 'b') => outcomes(seeded[i]!).get(`seed-${i}-${which}.jpg`)!;
    expect(seeded.map((r) => [...outcomes(r).values()].every((n) => n !== null))).toEqual([true, true, true, true]);

    // Then, all at once: removals, the same picture again while it is being removed, near and
    // exact duplicates arriving through both processes, and new images by command and by post.
    const pairs = await Promise.all([0, 1, 2, 3, 4, 5].map((i) => normalJpeg(200 + i)));
    const nearCopies = await Promise.all(pairs.map((p) => reencodedCopy(p.data)));
    const exact = await Promise.all([0, 1, 2].map((i) => normalJpeg(300 + i)));
    const fresh = await Promise.all([0, 1, 2, 3, 4, 5].map((i) => normalJpeg(400 + i)));
    const ops: Promise<{ kind: 'add' | 'remove'; reply: string }>[] = [];
    const add = (p: Promise<string>) => ops.push(p.then((reply) => ({ kind: 'add' as const, reply })));
    const rm = (p: Promise<string>) => ops.push(p.then((reply) => ({ kind: 'remove' as const, reply })));

    rm(remove(seeders[0]!, String(seedNo(0, 'a'))));
    rm(remove(seeders[1]!, 'mine'));
    rm(remove(owner, String(seedNo(2, 'b'))));
    add(addByCommand(member('r1'), [named(seeds[0]![0]!, 'again-0-a.jpg')]));
    add(addByPost(thread.id, member('r2'), [named(seeds[1]![1]!, 'again-1-b.jpg')]));
    pairs.forEach((p, i) => {
      add(addByCommand(member(`na${i}`), [named(p, `pair-${i}-original.jpg`)]));
      add(addByPost(thread.id, member(`nb${i}`), [named(nearCopies[i]!, `pair-${i}-resaved.jpg`)]));
    });
    exact.forEach((p, i) => {
      add(addByPost(thread.id, member(`xa${i}`), [named(p, `exact-${i}-first.jpg`)]));
      add(addByCommand(member(`xb${i}`), [named(p, `exact-${i}-second.jpg`)]));
    });
    add(addByCommand(member('f1'), [named(fresh[0]!, 'fresh-0.jpg'), named(fresh[1]!, 'fresh-1.jpg')]));
    add(addByPost(thread.id, member('f2'), [named(fresh[2]!, 'fresh-2.jpg'), named(fresh[3]!, 'fresh-3.jpg')]));
    add(addByCommand(member('f3'), [named(fresh[4]!, 'fresh-4.jpg')]));
    add(addByPost(thread.id, member('f4'), [named(fresh[5]!, 'fresh-5.jpg')]));
    const results: { kind: 'add' | 'remove'; reply: string }[] = await Promise.all(ops);

    // Then rounds with nothing else going on, where each process takes one half of a near pair
    // and both commit at about the same moment; and rounds where a member re-adds a picture
    // while its owner removes it.
    const rounds = await Promise.all([0, 1, 2, 3, 4, 5].map((i) => normalJpeg(500 + i)));
    for (const [i, original] of rounds.entries()) {
      const copy = await reencodedCopy(original.data);
      const replies = await Promise.all([
        addByCommand(member(`ra${i}`), [named(original, `round-${i}-original.jpg`)]),
        addByPost(thread.id, member(`rb${i}`), [named(copy, `round-${i}-resaved.jpg`)]),
      ]);
      results.push(...replies.map((reply) => ({ kind: 'add' as const, reply })));
    }
    for (const i of [0, 1, 2, 3]) {
      const picture = named(await normalJpeg(600 + i), `contested-${i}.jpg`);
      const first = member(`ca${i}`);
      const report = await addByCommand(first, [picture]);
      results.push({ kind: 'add', reply: report });
      const no = outcomes(report).get(picture.name)!;
      const both = await Promise.all([
        remove(first, String(no)).then((reply) => ({ kind: 'remove' as const, reply })),
        addByPost(thread.id, member(`cb${i}`), [named(picture, `contested-${i}-again.jpg`)]).then((reply) => ({ kind: 'add' as const, reply })),
      ]);
      results.push(...both);
    }

    // What the members were told.
    const added = new Map<string, number | null>();
    for (const r of [...seeded, ...results.filter((r) => r.kind === 'add').map((r) => r.reply)]) {
      for (const [name, no] of outcomes(r)) added.set(name, no);
    }
    const removed = results.filter((r) => r.kind === 'remove').flatMap((r) => removedNos(r.reply));
    const contested = [0, 1, 2, 3].map((i) => added.get(`contested-${i}.jpg`)!);
    expect(removed.sort((a, b) => a - b)).toEqual([seedNo(0, 'a'), seedNo(1, 'a'), seedNo(1, 'b'), seedNo(2, 'b'), ...contested].sort((a, b) => a - b));
    const acceptedNos = [...added.values()].filter((n): n is number => n !== null);
    expect(new Set(acceptedNos).size).toBe(acceptedNos.length);

    // Duplicates were accepted once: one of each near pair, one of each exact pair.
    for (let i = 0; i < pairs.length; i++) {
      expect(
        [added.get(`pair-${i}-original.jpg`), added.get(`pair-${i}-resaved.jpg`)].filter((n) => n !== null),
        `pair ${i}`,
      ).toHaveLength(1);
    }
    for (let i = 0; i < rounds.length; i++) {
      expect(
        [added.get(`round-${i}-original.jpg`), added.get(`round-${i}-resaved.jpg`)].filter((n) => n !== null),
        `round ${i}`,
      ).toHaveLength(1);
    }
    for (let i = 0; i < exact.length; i++) {
      expect(
        [added.get(`exact-${i}-first.jpg`), added.get(`exact-${i}-second.jpg`)].filter((n) => n !== null),
        `exact ${i}`,
      ).toHaveLength(1);
    }
    for (let i = 0; i < fresh.length; i++) expect(added.get(`fresh-${i}.jpg`), `fresh ${i}`).toEqual(expect.any(Number));

    // Nothing lost: the dataset holds exactly what was added and not removed.
    const expected = acceptedNos.filter((n) => !removed.includes(n)).sort((a, b) => a - b);
    const nos = await store.imageNumbers(ds.id);
    expect(nos).toEqual(expected);
    expect(await store.imageCount(ds.id)).toBe(expected.length);
    const images = await store.listImages(ds.id);
    expect(images.map((i) => i.no)).toEqual(expected);
    expect(new Set(images.map((i) => i.pixelSha256)).size).toBe(images.length);

    // Every index agrees with the records.
    const k = keys(world.env.REDIS_PREFIX!);
    expect([...(await store.phashes(ds.id)).keys()].sort((a, b) => a - b)).toEqual(expected);
    const pixelIndex = await world.redis.hgetall(k.pixelIndex(ds.id));
    expect(Object.fromEntries(images.map((i) => [i.pixelSha256, String(i.no)]))).toEqual(pixelIndex);

    // Blobs on disk are exactly those the records refer to, each counted once per reference.
    const references = new Map<string, number>();
    for (const img of images) for (const b of [img.originalBlob, img.masterBlob, img.thumbBlob]) references.set(b, (references.get(b) ?? 0) + 1);
    const refCounts = await world.redis.hgetall(k.blobRefs());
    expect(Object.fromEntries([...references].map(([b, n]) => [b, String(n)]))).toEqual(refCounts);
    expect([...(await blobFiles())].sort()).toEqual([...references.keys()].sort());

    // Each event was handled by one process: one acknowledgement per interaction, one reply per post.
    for (const h of handles) {
      expect(
        h.calls().filter((c) => c.path.endsWith('/callback')),
        `interaction ${h.id}`,
      ).toHaveLength(1);
    }
    for (const p of posts)
      expect(
        world.discord.calls.filter((c) => isReplyTo(c, thread.id, p.id)),
        `post ${p.id}`,
      ).toHaveLength(1);

    // Both processes took part, and neither logged an error.
    const intakesBy = bots.map((b) => b.log.lines.filter((l) => l.msg === 'intake finished').length);
    expect(intakesBy[0]! + intakesBy[1]!).toBe(seeders.length + results.filter((r) => r.kind === 'add').length);
    expect(
      intakesBy.every((n) => n > 0),
      `intakes per process: ${intakesBy.join(', ')}`,
    ).toBe(true);
    expect(bots.flatMap((b) => b.log.errors())).toEqual([]);
  });
});
