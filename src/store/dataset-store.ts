import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import type { BaseFamily, Size } from '../core/buckets.ts';
import type { CaptionMode } from '../core/caption-text.ts';
import { UserError } from '../core/errors.ts';
import { CAS_LUA, updateJsonRecord } from './json-record.ts';
import { keys, type Keys } from './keys.ts';
import type { Rating, RatingSource } from '../core/rating.ts';

export type DatasetKind = 'character' | 'style' | 'concept';

export interface Dataset {
  id: string;
  guildId: string;
  name: string;
  trigger: string;
  className: string;
  kind: DatasetKind;
  base: BaseFamily;
  resolution: number;
  ownerId: string;
  channelId: string;
  threadId: string | null;
  createdAt: number;
  /** Tags the tagger leaves out for this dataset (compared after `_` → space). */
  undesiredTags?: string[];
  /** What the trainer reads; absent: the default for the kind and base (see `captionModeOf`). */
  captionMode?: CaptionMode;
  /** Prompts the trainer samples each epoch with (at most 4); absent: derived from the plan. */
  samplePrompts?: string[];
}

export interface Concept {
  name: string;
  trigger: string | null;
  createdAt: number;
  /** Repeats the concept trains with (from a `N_name` folder it came in); absent: the recipe balances them. */
  repeats?: number;
}

export const DEFAULT_CONCEPT = 'main';

/** Facts of one accepted image. Immutable after it is recorded, except its concept. */
export interface ImageFacts {
  concept: string;
  contributorId: string;
  contributorName: string;
  sourceMessageId: string | null;
  /** The file name as the contributor gave it; for display only, never a path. */
  sourceName: string;
  originalBlob: string;
  originalBytes: number;
  originalFormat: string;
  originalSize: Size;
  masterBlob: string;
  thumbBlob: string;
  width: number;
  height: number;
  pixelSha256: string;
  phash: string;
  bucket: Size;
  resized: Size;
  cropped: Size;
  upscaled: boolean;
  notes: string[];
  initialCaption: string | null;
  addedAt: number;
  /** Content ratings by source (the classifier at intake, the tagger when it tags); the highest counts. */
  ratings?: Partial<Record<RatingSource, Rating>>;
}

export interface ImageRecord extends ImageFacts {
  /** The image's number inside its dataset: #1, #2, … never reused. */
  no: number;
  datasetId: string;
}

export type AddImageOutcome = { added: true; no: number } | { added: false; duplicateOf: number };

// Atomically: refuse exact duplicates, take the next number, write the record and its indexes.
const ADD_IMAGE_LUA = `
if redis.call('EXISTS', KEYS[5]) == 0 then return {-1, 0} end
local existing = redis.call('HGET', KEYS[3], ARGV[1])
if existing then return {0, tonumber(existing)} end
local n = redis.call('INCR', KEYS[1])
redis.call('SET', ARGV[4] .. n, ARGV[3])
redis.call('ZADD', KEYS[2], n, n)
redis.call('HSET', KEYS[3], ARGV[1], n)
redis.call('HSET', KEYS[4], n, ARGV[2])
for i = 5, 7 do redis.call('HINCRBY', KEYS[6], ARGV[i], 1) end
return {1, n}
`;

// Atomically remove images and release their blobs. Returns {no, json, …} pairs, then '--',
// then the blob ids nothing refers to any more (the caller deletes those files).
const REMOVE_IMAGES_LUA = `
local out = {}
local freed = {}
for i = 1, #ARGV do
  local key = KEYS[4] .. ARGV[i]
  local json = redis.call('GET', key)
  if json then
    local rec = cjson.decode(json)
    redis.call('DEL', key)
    redis.call('ZREM', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], rec.pixelSha256)
    redis.call('HDEL', KEYS[3], ARGV[i])
    for _, blob in ipairs({rec.originalBlob, rec.masterBlob, rec.thumbBlob}) do
      if redis.call('HINCRBY', KEYS[5], blob, -1) <= 0 then
        redis.call('HDEL', KEYS[5], blob)
        table.insert(freed, blob)
      end
    end
    table.insert(out, ARGV[i])
    table.insert(out, json)
  end
end
table.insert(out, '--')
for _, blob in ipairs(freed) do table.insert(out, blob) end
return out
`;

// Take a dataset out of its guild: its name (if still its own), its thread's index, its record.
// Adding an image needs the record, so nothing is added after this.
const DELETE_DATASET_LUA = `
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
if KEYS[3] ~= '' and redis.call('GET', KEYS[3]) == ARGV[2] then redis.call('DEL', KEYS[3]) end
return redis.call('DEL', KEYS[2])
`;

// Create a dataset only if its name is free in the guild.
const CREATE_DATASET_LUA = `
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('SET', KEYS[2], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
return 1
`;

// Replace one hash field only if it still holds what was read.
const HASH_CAS_LUA = `
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
`;

export function newId(bytes = 6): string {
  return randomBytes(bytes).toString('base64url').replace(/[-_]/g, 'x').toLowerCase();
}

export class DatasetStore {
  readonly k: Keys;

  constructor(
    private readonly redis: Redis,
    prefix: string,
  ) {
    this.k = keys(prefix);
  }

  async createDataset(input: Omit<Dataset, 'id' | 'createdAt' | 'threadId'>): Promise<Dataset> {
    const dataset: Dataset = { ...input, id: newId(), createdAt: Date.now(), threadId: null };
    const concept: Concept = { name: DEFAULT_CONCEPT, trigger: null, createdAt: dataset.createdAt };
    const ok = await this.redis.eval(
      CREATE_DATASET_LUA,
      3,
      this.k.guildDatasets(input.guildId),
      this.k.dataset(dataset.id),
      this.k.concepts(dataset.id),
      input.name.toLowerCase(),
      dataset.id,
      JSON.stringify(dataset),
      DEFAULT_CONCEPT,
      JSON.stringify(concept),
    );
    if (ok !== 1) throw new UserError(`A dataset named \`${input.name}\` already exists in this server.`);
    return dataset;
  }

  async setThread(datasetId: string, threadId: string): Promise<void> {
    // The thread's index first: a dataset never names a thread that does not lead back to it.
    await this.redis.set(this.k.thread(threadId), datasetId);
    await updateJsonRecord<Dataset>(this.redis, this.k.dataset(datasetId), (ds) => ({ ...ds, threadId }));
  }

  /** Changes settings of a dataset (not its name, guild or owner). */
  async updateDataset(id: string, patch: Partial<Pick<Dataset, 'undesiredTags' | 'captionMode' | 'samplePrompts'>>): Promise<Dataset | null> {
    return updateJsonRecord<Dataset>(this.redis, this.k.dataset(id), (ds) => ({ ...ds, ...patch }));
  }

  async getDataset(id: string): Promise<Dataset | null> {
    const json = await this.redis.get(this.k.dataset(id));
    return json ? (JSON.parse(json) as Dataset) : null;
  }

  async findDataset(guildId: string, name: string): Promise<Dataset | null> {
    const id = await this.redis.hget(this.k.guildDatasets(guildId), name.toLowerCase());
    return id ? this.getDataset(id) : null;
  }

  async datasetForThread(threadId: string): Promise<Dataset | null> {
    const id = await this.redis.get(this.k.thread(threadId));
    return id ? this.getDataset(id) : null;
  }

  async listDatasets(guildId: string): Promise<Dataset[]> {
    const ids = await this.redis.hvals(this.k.guildDatasets(guildId));
    if (ids.length === 0) return [];
    const jsons = await this.redis.mget(ids.map((id) => this.k.dataset(id)));
    return jsons
      .filter((j): j is string => j !== null)
      .map((j) => JSON.parse(j) as Dataset)
      .sort((a, b) => a.name.localeCompare(b.name));
  }

  async getConcepts(datasetId: string): Promise<Concept[]> {
    const all = await this.redis.hvals(this.k.concepts(datasetId));
    return all.map((j) => JSON.parse(j) as Concept).sort((a, b) => a.createdAt - b.createdAt || a.name.localeCompare(b.name));
  }

  async getConcept(datasetId: string, name: string): Promise<Concept | null> {
    const json = await this.redis.hget(this.k.concepts(datasetId), name);
    return json ? (JSON.parse(json) as Concept) : null;
  }

  /** Creates the concept when missing; returns it either way. */
  async ensureConcept(datasetId: string, name: string, trigger: string | null = null, repeats?: number): Promise<Concept> {
    const concept: Concept = { name, trigger, createdAt: Date.now(), ...(repeats !== undefined ? { repeats } : {}) };
    await this.redis.hsetnx(this.k.concepts(datasetId), name, JSON.stringify(concept));
    return (await this.getConcept(datasetId, name)) ?? concept;
  }

  /** Sets a concept's own repeats (null: balanced by the recipe again); false when the concept does not exist. */
  async setConceptRepeats(datasetId: string, name: string, repeats: number | null): Promise<boolean> {
    const key = this.k.concepts(datasetId);
    for (let attempt = 0; attempt < 5; attempt++) {
      const json = await this.redis.hget(key, name);
      if (!json) return false;
      const { repeats: _old, ...concept } = JSON.parse(json) as Concept;
      const next = JSON.stringify(repeats === null ? concept : { ...concept, repeats });
      if ((await this.redis.eval(HASH_CAS_LUA, 1, key, name, json, next)) === 1) return true;
    }
    throw new Error(`concept ${name} kept changing while its repeats were set`);
  }

  async addImage(datasetId: string, facts: ImageFacts): Promise<AddImageOutcome> {
    const result = (await this.redis.eval(
      ADD_IMAGE_LUA,
      6,
      this.k.imageSeq(datasetId),
      this.k.images(datasetId),
      this.k.pixelIndex(datasetId),
      this.k.phashIndex(datasetId),
      this.k.dataset(datasetId),
      this.k.blobRefs(),
      facts.pixelSha256,
      facts.phash,
      JSON.stringify(facts),
      this.k.imagePrefix(datasetId),
      facts.originalBlob,
      facts.masterBlob,
      facts.thumbBlob,
    )) as [number, number];
    const [status, no] = result;
    if (status === -1) throw new UserError('That dataset no longer exists.');
    return status === 1 ? { added: true, no } : { added: false, duplicateOf: no };
  }

  /** The image already holding exactly these pixels, if any. */
  async pixelOwner(datasetId: string, pixelSha256: string): Promise<number | null> {
    const no = await this.redis.hget(this.k.pixelIndex(datasetId), pixelSha256);
    return no === null ? null : Number(no);
  }

  /** Moves images to a concept (which must exist). Returns the numbers actually moved. */
  async moveImages(datasetId: string, nos: number[], concept: string): Promise<number[]> {
    const moved: number[] = [];
    for (const no of nos) {
      const key = this.k.image(datasetId, no);
      for (let attempt = 0; attempt < 5; attempt++) {
        const json = await this.redis.get(key);
        if (!json) break;
        const facts = JSON.parse(json) as ImageFacts;
        if (facts.concept === concept) break;
        if ((await this.redis.eval(CAS_LUA, 1, key, json, JSON.stringify({ ...facts, concept }))) === 1) {
          moved.push(no);
          break;
        }
      }
    }
    return moved;
  }

  /** Records one source's rating of an image (a no-op when the image is gone). */
  async setRating(datasetId: string, no: number, source: RatingSource, rating: Rating): Promise<ImageRecord | null> {
    const next = await updateJsonRecord<ImageFacts>(this.redis, this.k.image(datasetId, no), (facts) =>
      facts.ratings?.[source] === rating ? null : { ...facts, ratings: { ...facts.ratings, [source]: rating } },
    );
    return next ? { ...next, no, datasetId } : null;
  }

  /** Image numbers with their perceptual hashes, for near-duplicate checks. */
  async phashes(datasetId: string): Promise<Map<number, string>> {
    const all = await this.redis.hgetall(this.k.phashIndex(datasetId));
    return new Map(Object.entries(all).map(([no, h]) => [Number(no), h]));
  }

  async imageCount(datasetId: string): Promise<number> {
    return this.redis.zcard(this.k.images(datasetId));
  }

  async imageNumbers(datasetId: string, offset = 0, limit = -1): Promise<number[]> {
    const stop = limit < 0 ? -1 : offset + limit - 1;
    return (await this.redis.zrange(this.k.images(datasetId), String(offset), String(stop))).map(Number);
  }

  async getImages(datasetId: string, nos: number[]): Promise<ImageRecord[]> {
    if (nos.length === 0) return [];
    const jsons = await this.redis.mget(nos.map((no) => this.k.image(datasetId, no)));
    const out: ImageRecord[] = [];
    jsons.forEach((json, i) => {
      if (json) out.push({ ...(JSON.parse(json) as ImageFacts), no: nos[i]!, datasetId });
    });
    return out;
  }

  async getImage(datasetId: string, no: number): Promise<ImageRecord | null> {
    return (await this.getImages(datasetId, [no]))[0] ?? null;
  }

  async listImages(datasetId: string): Promise<ImageRecord[]> {
    return this.getImages(datasetId, await this.imageNumbers(datasetId));
  }

  /**
   * Removes images in one transaction. Returns the removed records and the blobs no record
   * refers to any more, which the caller deletes (under the same lock as blob writes).
   */
  async removeImages(datasetId: string, nos: number[]): Promise<{ removed: ImageRecord[]; freedBlobs: string[] }> {
    if (nos.length === 0) return { removed: [], freedBlobs: [] };
    const flat = (await this.redis.eval(
      REMOVE_IMAGES_LUA,
      5,
      this.k.images(datasetId),
      this.k.pixelIndex(datasetId),
      this.k.phashIndex(datasetId),
      this.k.imagePrefix(datasetId),
      this.k.blobRefs(),
      ...nos.map(String),
    )) as string[];
    const sep = flat.indexOf('--');
    const removed: ImageRecord[] = [];
    for (let i = 0; i + 1 < sep; i += 2) {
      removed.push({ ...(JSON.parse(flat[i + 1]!) as ImageFacts), no: Number(flat[i]), datasetId });
    }
    return { removed, freedBlobs: flat.slice(sep + 1) };
  }

  /**
   * Takes a dataset out of its guild (name, thread, record) so nothing is added, planned or
   * started any more; its images stay until `removeImages`, then `deleteLeftovers` clears the rest.
   */
  async deleteDataset(dataset: Dataset): Promise<boolean> {
    const deleted = await this.redis.eval(
      DELETE_DATASET_LUA,
      3,
      this.k.guildDatasets(dataset.guildId),
      this.k.dataset(dataset.id),
      dataset.threadId ? this.k.thread(dataset.threadId) : '',
      dataset.name.toLowerCase(),
      dataset.id,
    );
    return Number(deleted) === 1;
  }

  /** The keys a deleted dataset leaves once its images are removed: concepts, counters, indexes. */
  async deleteLeftovers(datasetId: string): Promise<void> {
    const k = this.k;
    await this.redis.del(k.concepts(datasetId), k.imageSeq(datasetId), k.images(datasetId), k.pixelIndex(datasetId), k.phashIndex(datasetId));
  }

  async blobRefCount(blobId: string): Promise<number> {
    return Number((await this.redis.hget(this.k.blobRefs(), blobId)) ?? 0);
  }

  /** Every blob id an image record points at (for the orphan sweep). */
  async referencedBlobs(): Promise<Set<string>> {
    return new Set(await this.redis.hkeys(this.k.blobRefs()));
  }
}
