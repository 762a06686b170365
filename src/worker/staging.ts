/**
 * Staging a run's dataset in kohya's DreamBooth layout (reference/kohya-contract.md §3):
 * `<staging>/<repeats>_<concept>/<image id>.png`, hard-linked to the blob store's masters (no
 * copies: a 1,000-image dataset stages in a blink and takes no space), and `<image id>.txt` with the
 * caption and a newline when the image has one. An image without a caption gets no file at all, so
 * kohya uses the subset's class tokens (an empty caption file is an AssertionError in sd-scripts).
 *
 * Staging is idempotent: files already right are left alone, wrong ones are replaced atomically,
 * and leftovers (images or captions no longer in the run, old concept folders) are removed, so a
 * resumed run re-stages safely over what a crashed one left.
 */
import { randomUUID } from 'node:crypto';
import { copyFile, link, lstat, mkdir, readdir, readFile, rename, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { BlobStore } from '../core/blob-store.ts';
import { Limiter } from '../core/limiter.ts';
import { codeOf } from '../core/fs-errors.ts';

export interface StageImage {
  /** File name stem: letters, digits, `.`, `_`, `-` (checked). */
  id: string;
  /** Blob id of the normalised master (a PNG). */
  blob: string;
  /** Caption text; null (or blank): no caption file. */
  caption: string | null;
}

export interface StageConcept {
  /** `{repeats}_{name}` (checked). */
  folder: string;
  images: StageImage[];
}

export interface StageResult {
  images: number;
  /** Images newly hard-linked. */
  linked: number;
  /** Images copied because the file system refused a hard link. */
  copied: number;
  /** Images already staged. */
  unchanged: number;
  /** Caption files written (new or changed). */
  captionsWritten: number;
  /** Files and folders removed because the run no longer has them. */
  removed: number;
}

/** Bad input for staging (an unsafe name, a missing blob): the run cannot be staged as asked. */
export class StagingError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StagingError';
  }
}

const IMAGE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;
const FOLDER = /^\d{1,6}_[\p{L}\p{N}][\p{L}\p{N} _.-]{0,63}$/u;
/** Errors meaning "this file system cannot hard-link here": copy instead. */
const NO_LINK = new Set(['EXDEV', 'EPERM', 'ENOTSUP', 'EOPNOTSUPP', 'EMLINK', 'ENOSYS']);
/** File-system work in flight at once while staging. */
const STAGING_PARALLELISM = 16;

/** The caption file's content, or null when the image gets none. sd-scripts reads the first line only. */
export function captionFileText(caption: string | null): string | null {
  if (caption === null) return null;
  const line = caption.replace(/[\r\n\u2028\u2029]+/g, ' ').trim();
  return line.length > 0 ? `${line}\n` : null;
}

/** Throws a StagingError naming every unsafe folder or image name and every duplicate. */
export function checkStagingNames(concepts: readonly StageConcept[]): void {
  const problems: string[] = [];
  const folders = new Set<string>();
  for (const concept of concepts) {
    if (!FOLDER.test(concept.folder)) problems.push(`concept folder ${JSON.stringify(concept.folder)} is not a safe {repeats}_{name}`);
    if (folders.has(concept.folder)) problems.push(`concept folder ${JSON.stringify(concept.folder)} appears twice`);
    folders.add(concept.folder);
    const ids = new Set<string>();
    for (const image of concept.images) {
      if (!IMAGE_ID.test(image.id)) problems.push(`image id ${JSON.stringify(image.id)} is not a safe file name`);
      else if (ids.has(image.id)) problems.push(`image ${image.id} appears twice in ${concept.folder}`);
      ids.add(image.id);
    }
  }
  if (problems.length > 0) throw new StagingError(problems.slice(0, 5).join('; ') + (problems.length > 5 ? ` (and ${problems.length - 5} more)` : ''));
}

const tempName = (dir: string, name: string) => join(dir, `.${name}.${randomUUID().slice(0, 8)}.tmp`);

/** Puts the blob at `target` as a hard link (or a copy where links are refused). */
async function placeImage(blobs: BlobStore, image: StageImage, target: string, dir: string): Promise<'linked' | 'copied' | 'unchanged'> {
  const source = blobs.path(image.blob);
  let blob;
  try {
    blob = await stat(source);
  } catch (err) {
    if (codeOf(err) === 'ENOENT')
      throw new StagingError(`image ${image.id}: its master (blob ${image.blob.slice(0, 12)}…) is missing from this worker's store`);
    throw err;
  }
  let existing;
  try {
    existing = await lstat(target);
  } catch (err) {
    if (codeOf(err) !== 'ENOENT') throw err;
  }
  if (existing) {
    if (existing.ino === blob.ino && existing.dev === blob.dev) return 'unchanged';
    // A copy made earlier (no hard links here) with the same content is fine as it is.
    if (existing.isFile() && existing.size === blob.size && existing.nlink === 1 && (await sameContent(source, target))) return 'unchanged';
  } else {
    try {
      await link(source, target);
      return 'linked';
    } catch (err) {
      const code = codeOf(err);
      if (code !== 'EEXIST' && !(code !== undefined && NO_LINK.has(code))) throw err;
    }
  }
  // Replace atomically: build the new entry beside the target, then rename it over.
  const tmp = tempName(dir, image.id);
  try {
    let how: 'linked' | 'copied' = 'linked';
    try {
      await link(source, tmp);
    } catch (err) {
      const code = codeOf(err);
      if (code === undefined || !NO_LINK.has(code)) throw err;
      await copyFile(source, tmp);
      how = 'copied';
    }
    await rename(tmp, target);
    return how;
  } finally {
    await rm(tmp, { force: true });
  }
}

async function sameContent(a: string, b: string): Promise<boolean> {
  const [x, y] = await Promise.all([readFile(a), readFile(b)]);
  return x.equals(y);
}

/** Writes (or removes) `<id>.txt`. */
async function placeCaption(image: StageImage, target: string, dir: string): Promise<'written' | 'removed' | 'unchanged'> {
  const text = captionFileText(image.caption);
  if (text === null) {
    try {
      await unlink(target);
      return 'removed';
    } catch (err) {
      if (codeOf(err) !== 'ENOENT') throw err;
      return 'unchanged';
    }
  }
  try {
    if ((await readFile(target, 'utf8')) === text) return 'unchanged';
  } catch (err) {
    if (codeOf(err) !== 'ENOENT') throw err;
  }
  const tmp = tempName(dir, image.id);
  try {
    await writeFile(tmp, text, { encoding: 'utf8', mode: 0o644 });
    await rename(tmp, target);
  } finally {
    await rm(tmp, { force: true });
  }
  return 'written';
}

/**
 * Stages `concepts` under `stagingDir` (created if needed). Files other than the concept folders
 * at the top (the run's TOML files) are left alone; inside a concept folder only `.png`/`.txt`
 * files the run does not have (and our temp files) are removed.
 */
export async function stageDataset(blobs: BlobStore, stagingDir: string, concepts: readonly StageConcept[]): Promise<StageResult> {
  checkStagingNames(concepts);
  await mkdir(stagingDir, { recursive: true });
  const result: StageResult = { images: 0, linked: 0, copied: 0, unchanged: 0, captionsWritten: 0, removed: 0 };
  const limiter = new Limiter(STAGING_PARALLELISM);
  const wanted = new Set(concepts.map((c) => c.folder));

  // Concept folders of an earlier plan (other repeats or names) would be trained too: remove them.
  for (const entry of await readdir(stagingDir, { withFileTypes: true })) {
    if (entry.isDirectory() && /^\d+_/.test(entry.name) && !wanted.has(entry.name)) {
      await rm(join(stagingDir, entry.name), { recursive: true, force: true });
      result.removed++;
    }
  }

  for (const concept of concepts) {
    const dir = join(stagingDir, concept.folder);
    await mkdir(dir, { recursive: true });
    const keep = new Set<string>();
    await Promise.all(
      concept.images.map((image) =>
        limiter.run(async () => {
          const png = `${image.id}.png`;
          const txt = `${image.id}.txt`;
          keep.add(png);
          if (captionFileText(image.caption) !== null) keep.add(txt);
          const how = await placeImage(blobs, image, join(dir, png), dir);
          result[how]++;
          result.images++;
          const caption = await placeCaption(image, join(dir, txt), dir);
          if (caption === 'written') result.captionsWritten++;
          else if (caption === 'removed') result.removed++;
        }),
      ),
    );
    for (const name of await readdir(dir)) {
      const stray = (name.endsWith('.png') || name.endsWith('.txt')) && !keep.has(name);
      if (stray || (name.startsWith('.') && name.endsWith('.tmp'))) {
        await rm(join(dir, name), { force: true, recursive: true });
        result.removed++;
      }
    }
  }
  return result;
}
