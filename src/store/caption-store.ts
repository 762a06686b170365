import type { Redis } from 'ioredis';
import { normalizeSentence, validateSentence, type CaptionTrack } from '../core/caption-text.ts';
import { UserError } from '../core/errors.ts';
import { tidyTags, validateTags } from '../core/tag-ops.ts';
import { newId } from './dataset-store.ts';
import { keys, type Keys } from './keys.ts';

/**
 * Versioned captions, one store per track (see caption-text.ts): `tags` keeps the tag list of each
 * image, `sentences` its sentence (stored as a list of one string, so both tracks share the
 * versions, undo and bulk edits below; read it with `sentenceOf`).
 *
 * The tags track: a caption is the tag list of one image (triggers excluded: they are composed
 * in front when the caption is written, see `composeCaption`).
 *
 * Key layout (all under the dataset's `${prefix}:ds:${id}:`):
 * - `captions`      HASH  image no → the current version (JSON). One HMGET reads many captions.
 * - `caphist:<no>`  LIST  every kept version of one image, newest first, at most `MAX_VERSIONS`.
 *                         The current version is the first one not marked undone, and is the same
 *                         string as the `captions` field.
 * - `capbatches`    LIST  bulk edits (id, who, when, description, changed images), newest first,
 *                         at most `MAX_BULK_EDITS`.
 * The sentences track uses `sentences`, `senthist:<no>` and `sentbatches` the same way.
 *
 * Undo marks the current version undone (it stays in the history, with who undid it and when) and
 * makes the previous version that is not undone current again; undoing twice goes back two
 * versions. Version numbers only grow: a write after an undo takes the next number after the
 * newest version in the history, undone or not. A caption is never undone to nothing: the first
 * version of an image cannot be undone (edit it instead).
 *
 * Every write is one Lua script, so it is atomic without a dedicated connection (WATCH is
 * per-connection state and would break on the shared client). A bulk edit reads, runs its
 * operation in TypeScript, then commits only if no listed image changed since the read (compare
 * and set on version numbers), retrying otherwise.
 *
 * Captions are written only for images whose record exists; call `deleteForImages` after
 * `DatasetStore.removeImages` and `deleteDataset` after the images are gone, so that a tagger
 * finishing late cannot leave captions behind.
 */

export type CaptionSource = 'tagger' | 'captioner' | 'upload' | 'edit' | 'bulk' | 'undo';

export interface UndoMark {
  by: string;
  at: number;
}

export interface CaptionVersion {
  tags: string[];
  /** 1, 2, … per image; never reused. */
  version: number;
  /** A user id, or 'tagger' / 'captioner'. */
  by: string;
  at: number;
  source: CaptionSource;
  /** The bulk edit that wrote this version, if one did. */
  batchId: string | null;
  /** Set when the version was undone (it then is history only). */
  undone: UndoMark | null;
}

export interface CaptionMeta {
  by: string;
  source: CaptionSource;
  /**
   * Write only if the current version is this one (0: only if the image has no caption yet);
   * otherwise a UserError says the caption changed meanwhile. For a modal edit: pass the version
   * the member saw.
   */
  ifVersion?: number;
}

export type TaggerWrite =
  { written: true; caption: CaptionVersion } | { written: false; reason: 'captioned'; caption: CaptionVersion } | { written: false; reason: 'no-image' };

export interface BulkEdit {
  id: string;
  by: string;
  at: number;
  description: string;
  /** The images the edit changed. */
  changed: number[];
  undone: UndoMark | null;
}

export interface BulkResult {
  batchId: string;
  /** Images that got a new version. No bulk edit is recorded when this is empty. */
  changed: number[];
  /** Listed images without a caption (still being tagged, or gone): the operation was not applied. */
  skipped: number[];
}

export interface BulkUndoResult {
  batchId: string;
  description: string;
  /** Images whose previous version is current again. */
  restored: number[];
  /** Images of the bulk edit left alone: edited or undone since, removed, or out of history. */
  skipped: number[];
}

export const MAX_VERSIONS = 50;
export const MAX_BULK_EDITS = 50;
const MAX_BULK_ATTEMPTS = 10;

// Entries are built in TypeScript with a fixed field order: `{"version":N,…,"undone":null}`.
// Lua reads the version with a pattern and marks an entry undone by replacing its last field, so
// it never re-encodes JSON (cjson would turn an empty tag list into `{}`).
const LUA_HELPERS = `
local LIVE = '"undone":null}'
local function live(e) return string.sub(e, -#LIVE) == LIVE end
local function mark(e, m) return string.sub(e, 1, -#LIVE - 1) .. '"undone":' .. m .. '}' end
local function version_of(e)
  if not e then return 0 end
  return tonumber(string.match(e, '^{"version":(%d+),'))
end
local function push(hash, hist, no, rest, max)
  local v = version_of(redis.call('LINDEX', hist, 0)) + 1
  local entry = '{"version":' .. v .. ',' .. rest
  redis.call('LPUSH', hist, entry)
  redis.call('LTRIM', hist, 0, max - 1)
  redis.call('HSET', hash, no, entry)
  return entry
end
-- Marks the current version undone and makes the previous live one current. With batch set,
-- only when the current version was written by that batch. Returns the restored entry or nil.
local function undo_one(hash, hist, no, m, batch)
  local cur = redis.call('HGET', hash, no)
  if not cur then return nil end
  if batch and cjson.decode(cur).batchId ~= batch then return nil end
  local list = redis.call('LRANGE', hist, 0, -1)
  local ci
  for i = 1, #list do
    if live(list[i]) then
      if not ci then
        if list[i] ~= cur then return nil end
        ci = i
      else
        redis.call('LSET', hist, ci - 1, mark(list[ci], m))
        redis.call('HSET', hash, no, list[i])
        return list[i]
      end
    end
  end
  return nil
end
`;

// KEYS: captions, history, image record. ARGV: no, entry rest, mode, expected version, max, tags JSON.
// Returns {1, entry} written, {0, current} same tags, {-1} no image, {-2, current} already
// captioned, {-3, current or ''} not the expected version.
const SET_LUA = `${LUA_HELPERS}
if redis.call('EXISTS', KEYS[3]) == 0 then return {-1} end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[3] == 'untagged' and cur then return {-2, cur} end
if ARGV[3] == 'version' and version_of(cur) ~= tonumber(ARGV[4]) then return {-3, cur or ''} end
if cur then
  local old = cjson.decode(cur).tags
  local new = cjson.decode(ARGV[6])
  if #old == #new then
    local same = true
    for i = 1, #new do
      if old[i] ~= new[i] then same = false break end
    end
    if same then return {0, cur} end
  end
end
return {1, push(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[5]))}
`;

// KEYS: captions, history. ARGV: no, undo mark JSON. Returns the restored entry or nil.
const UNDO_LUA = `${LUA_HELPERS}
return undo_one(KEYS[1], KEYS[2], ARGV[1], ARGV[2], nil)
`;

// KEYS: captions, batches, then one history key per listed image.
// ARGV: batch record, max versions, max batches, then per image: no, version read, entry rest or ''.
// Commits nothing and returns 0 when any listed image's current version is not the one read.
const BULK_LUA = `${LUA_HELPERS}
local n = (#ARGV - 3) / 3
for i = 1, n do
  local cur = redis.call('HGET', KEYS[1], ARGV[3 * i + 1])
  if version_of(cur) ~= tonumber(ARGV[3 * i + 2]) then return 0 end
end
local max = tonumber(ARGV[2])
for i = 1, n do
  local rest = ARGV[3 * i + 3]
  if rest ~= '' then push(KEYS[1], KEYS[2 + i], ARGV[3 * i + 1], rest, max) end
end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
return 1
`;

// KEYS: captions, batches, then one history key per image of the batch.
// ARGV: batch id, undo mark JSON, then the batch's image numbers.
// Returns {0} when that batch is no longer the newest one not undone, else {1, restored no, …}.
const UNDO_BULK_LUA = `${LUA_HELPERS}
local list = redis.call('LRANGE', KEYS[2], 0, -1)
local bi
for i = 1, #list do
  if live(list[i]) then bi = i break end
end
if not bi or cjson.decode(list[bi]).id ~= ARGV[1] then return {0} end
redis.call('LSET', KEYS[2], bi - 1, mark(list[bi], ARGV[2]))
local out = {1}
for i = 3, #ARGV do
  if undo_one(KEYS[1], KEYS[i], ARGV[i], ARGV[2], ARGV[1]) then table.insert(out, ARGV[i]) end
end
return out
`;

function sameTags(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((t, i) => t === b[i]);
}

function parseVersion(json: string): CaptionVersion {
  return JSON.parse(json) as CaptionVersion;
}

/** The sentence of a version of the sentences track. */
export function sentenceOf(version: Pick<CaptionVersion, 'tags'>): string {
  return version.tags[0] ?? '';
}

interface TrackRules {
  tidy(parts: readonly string[]): string[];
  validate(parts: readonly string[]): void;
  current(k: Keys, datasetId: string): string;
  history(k: Keys, datasetId: string, no: number): string;
  batches(k: Keys, datasetId: string): string;
}

const TRACKS: Record<CaptionTrack, TrackRules> = {
  tags: {
    tidy: tidyTags,
    validate: validateTags,
    current: (k, id) => k.captions(id),
    history: (k, id, no) => k.captionHistory(id, no),
    batches: (k, id) => k.captionBatches(id),
  },
  sentences: {
    tidy: (parts) => {
      const s = normalizeSentence(parts.join(' '));
      return s === '' ? [] : [s];
    },
    validate: (parts) => validateSentence(parts[0] ?? ''),
    current: (k, id) => k.sentences(id),
    history: (k, id, no) => k.sentenceHistory(id, no),
    batches: (k, id) => k.sentenceBatches(id),
  },
};

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export class CaptionStore {
  readonly k: Keys;
  private readonly rules: TrackRules;

  constructor(
    private readonly redis: Redis,
    prefix: string,
    readonly track: CaptionTrack = 'tags',
  ) {
    this.k = keys(prefix);
    this.rules = TRACKS[track];
  }

  private currentKey(datasetId: string): string {
    return this.rules.current(this.k, datasetId);
  }

  private historyKey(datasetId: string, no: number): string {
    return this.rules.history(this.k, datasetId, no);
  }

  private batchesKey(datasetId: string): string {
    return this.rules.batches(this.k, datasetId);
  }

  /** The current caption of an image, or null when it has none. */
  async get(datasetId: string, no: number): Promise<CaptionVersion | null> {
    const json = await this.redis.hget(this.currentKey(datasetId), String(no));
    return json === null ? null : parseVersion(json);
  }

  /** Current captions of the listed images (one HMGET); images without a caption are absent. */
  async getMany(datasetId: string, nos: readonly number[]): Promise<Map<number, CaptionVersion>> {
    const out = new Map<number, CaptionVersion>();
    if (nos.length === 0) return out;
    const jsons = await this.redis.hmget(this.currentKey(datasetId), ...nos.map(String));
    jsons.forEach((json, i) => {
      if (json !== null) out.set(nos[i]!, parseVersion(json));
    });
    return out;
  }

  /** Kept versions of one image, newest first, undone ones included (marked). */
  async history(datasetId: string, no: number, limit = MAX_VERSIONS): Promise<CaptionVersion[]> {
    if (limit <= 0) return [];
    const jsons = await this.redis.lrange(this.historyKey(datasetId, no), 0, limit - 1);
    return jsons.map(parseVersion);
  }

  /**
   * Writes a new version (tags are tidied and validated; a UserError says what is wrong). Tags
   * equal to the current ones write nothing and return the current version. `source: 'tagger'`
   * here is an explicit retag, which replaces a member's edit; the tagger's first pass uses
   * `setIfUntagged`.
   */
  async set(datasetId: string, no: number, tags: readonly string[], meta: CaptionMeta): Promise<CaptionVersion> {
    const mode = meta.ifVersion === undefined ? 'any' : 'version';
    const [status, json] = await this.write(datasetId, no, tags, meta, mode);
    if (status === -1) throw new UserError(`Image #${no} is not in this dataset any more.`);
    if (status === -3) {
      throw new UserError(
        json === ''
          ? `The caption of #${no} was removed while you were editing it.`
          : `The caption of #${no} was changed by someone else while you were editing it (it is now version ${parseVersion(json).version}); open it again.`,
      );
    }
    return parseVersion(json);
  }

  /**
   * For the tagger: writes only when the image has no caption yet, so a caption that arrived or
   * was edited while the tagger ran is never overwritten.
   */
  async setIfUntagged(datasetId: string, no: number, tags: readonly string[], meta: Omit<CaptionMeta, 'ifVersion'>): Promise<TaggerWrite> {
    const [status, json] = await this.write(datasetId, no, tags, meta, 'untagged');
    if (status === -1) return { written: false, reason: 'no-image' };
    if (status === -2) return { written: false, reason: 'captioned', caption: parseVersion(json) };
    return { written: true, caption: parseVersion(json) };
  }

  private async write(
    datasetId: string,
    no: number,
    tags: readonly string[],
    meta: CaptionMeta,
    mode: 'any' | 'untagged' | 'version',
  ): Promise<[number, string]> {
    const tidy = this.rules.tidy(tags);
    this.rules.validate(tidy);
    const result = (await this.redis.eval(
      SET_LUA,
      3,
      this.currentKey(datasetId),
      this.historyKey(datasetId, no),
      this.k.image(datasetId, no),
      String(no),
      entryRest(tidy, meta.by, Date.now(), meta.source, null),
      mode,
      String(meta.ifVersion ?? 0),
      String(MAX_VERSIONS),
      JSON.stringify(tidy),
    )) as [number, string?];
    return [result[0], result[1] ?? ''];
  }

  /**
   * Applies `op` to the current tags of every listed image, atomically: either every change lands
   * or none does (then it re-reads and retries, so `op` must be pure; it may run more than once).
   * `op` returns the new tags, or null for "unchanged". Images without a caption are skipped.
   * Each new version carries the batch id; the batch is recorded for `undoLastBulk`.
   */
  async applyBulk(
    datasetId: string,
    nos: readonly number[],
    op: (tags: string[]) => string[] | null,
    meta: { by: string; description: string },
  ): Promise<BulkResult> {
    const listed = [...new Set(nos)];
    const batchId = newId();
    for (let attempt = 1; ; attempt++) {
      const current = await this.getMany(datasetId, listed);
      const at = Date.now();
      const histKeys: string[] = [];
      const items: string[] = [];
      const changed: number[] = [];
      const skipped: number[] = [];
      for (const no of listed) {
        const cur = current.get(no);
        if (!cur) {
          skipped.push(no);
          continue;
        }
        let rest = '';
        const result = op([...cur.tags]);
        if (result !== null) {
          const tags = this.rules.tidy(result);
          if (!sameTags(tags, cur.tags)) {
            try {
              this.rules.validate(tags);
            } catch (err) {
              if (err instanceof UserError) throw new UserError(`Nothing was changed: on #${no}, ${lowerFirst(err.message)}`);
              throw err;
            }
            rest = entryRest(tags, meta.by, at, 'bulk', batchId);
            changed.push(no);
          }
        }
        histKeys.push(this.historyKey(datasetId, no));
        items.push(String(no), String(cur.version), rest);
      }
      if (changed.length === 0) return { batchId, changed, skipped };

      const record: BulkEdit = { id: batchId, by: meta.by, at, description: meta.description, changed, undone: null };
      const ok = await this.redis.eval(
        BULK_LUA,
        2 + histKeys.length,
        this.currentKey(datasetId),
        this.batchesKey(datasetId),
        ...histKeys,
        JSON.stringify(record),
        String(MAX_VERSIONS),
        String(MAX_BULK_EDITS),
        ...items,
      );
      if (ok === 1) return { batchId, changed, skipped };
      if (attempt >= MAX_BULK_ATTEMPTS) {
        throw new UserError('The captions kept changing while the bulk edit ran, so nothing was changed. Try again.');
      }
      await delay(Math.random() * 10 * attempt);
    }
  }

  /**
   * Undoes the current version of one image: it stays in the history marked undone, and the
   * previous version not undone is current again. Returns that version, or null when there is
   * nothing to go back to (no caption, only one version, or older versions out of history).
   */
  async undo(datasetId: string, no: number, by: string): Promise<CaptionVersion | null> {
    const json = (await this.redis.eval(UNDO_LUA, 2, this.currentKey(datasetId), this.historyKey(datasetId, no), String(no), undoMark(by))) as string | null;
    return json === null ? null : parseVersion(json);
  }

  /** Recorded bulk edits, newest first. */
  async listBulkEdits(datasetId: string, limit = 10): Promise<BulkEdit[]> {
    if (limit <= 0) return [];
    const jsons = await this.redis.lrange(this.batchesKey(datasetId), 0, limit - 1);
    return jsons.map((j) => JSON.parse(j) as BulkEdit);
  }

  /**
   * Reverts the newest bulk edit not undone yet: every image whose current version that edit
   * wrote gets its previous version back; images edited (or undone) since are left alone and
   * reported as skipped. The edit is marked undone either way. Null when none is left to undo.
   */
  async undoLastBulk(datasetId: string, by: string): Promise<BulkUndoResult | null> {
    for (let attempt = 1; ; attempt++) {
      const batch = (await this.listBulkEdits(datasetId, MAX_BULK_EDITS)).find((b) => b.undone === null);
      if (!batch) return null;
      const result = (await this.redis.eval(
        UNDO_BULK_LUA,
        2 + batch.changed.length,
        this.currentKey(datasetId),
        this.batchesKey(datasetId),
        ...batch.changed.map((no) => this.historyKey(datasetId, no)),
        batch.id,
        undoMark(by),
        ...batch.changed.map(String),
      )) as [number, ...string[]];
      if (result[0] === 1) {
        const restored = result.slice(1).map(Number);
        const done = new Set(restored);
        return {
          batchId: batch.id,
          description: batch.description,
          restored,
          skipped: batch.changed.filter((no) => !done.has(no)),
        };
      }
      if (attempt >= MAX_BULK_ATTEMPTS) {
        throw new UserError('Bulk edits kept landing while undoing the last one, so nothing was undone. Try again.');
      }
    }
  }

  /** Forgets the captions and history of removed images, on both tracks. */
  async deleteForImages(datasetId: string, nos: readonly number[]): Promise<void> {
    if (nos.length === 0) return;
    const multi = this.redis.multi();
    for (const rules of Object.values(TRACKS)) {
      multi.hdel(rules.current(this.k, datasetId), ...nos.map(String)).del(...nos.map((no) => rules.history(this.k, datasetId, no)));
    }
    await multi.exec();
  }

  /** Forgets every caption, version and bulk edit of a dataset, on both tracks. */
  async deleteDataset(datasetId: string): Promise<void> {
    for (const rules of Object.values(TRACKS)) {
      const current = rules.current(this.k, datasetId);
      const nos = (await this.redis.hkeys(current)).map(Number);
      const CHUNK = 500;
      for (let i = 0; i < nos.length; i += CHUNK) {
        await this.redis.del(...nos.slice(i, i + CHUNK).map((no) => rules.history(this.k, datasetId, no)));
      }
      await this.redis.del(current, rules.batches(this.k, datasetId));
    }
  }
}

/** An entry without its leading `{"version":N,`, ending in `"undone":null}` (see LUA_HELPERS). */
function entryRest(tags: string[], by: string, at: number, source: CaptionSource, batchId: string | null): string {
  const rest: Omit<CaptionVersion, 'version'> = { tags, by, at, source, batchId, undone: null };
  return JSON.stringify(rest).slice(1);
}

function undoMark(by: string): string {
  const mark: UndoMark = { by, at: Date.now() };
  return JSON.stringify(mark);
}

function lowerFirst(s: string): string {
  return s.charAt(0).toLowerCase() + s.slice(1);
}
