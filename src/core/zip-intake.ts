import { mkdir, open, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, Writable, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { getFileNameLowLevel, openPromise, validateFileName, type Entry, type ZipFile } from 'yauzl';
import { formatBytes } from './download.ts';
import { UserError } from './errors.ts';

/**
 * Zip intake: reads a contributed zip's directory first (counting, classifying, pairing
 * captions with images, checking declared sizes against the limits), then streams the chosen
 * entries to disk one at a time while counting the bytes that really come out.
 *
 * Entry names are only ever shown, never used as paths: every extracted file is named by its
 * number under `destDir`, so a `../../evil.png` entry cannot escape it.
 */

export type ZipLimits = {
  /** More entries than this (of any kind) and the whole zip is refused before reading any data. */
  maxEntries: number;
  /** The bytes all extracted entries may add up to, counted as they are written. */
  maxTotalUncompressed: number;
  /** An entry larger than this is skipped. */
  maxEntryBytes: number;
};

export type ZipImage = {
  /** The entry's path inside the zip, cleaned for display (not escaped for Markdown). */
  name: string;
  /** The extracted file under destDir, named by number (`00001.png`). */
  path: string;
  /** The text of a `.txt` (or `.caption`) beside it (same folder, same stem): trimmed, lines joined with ", ". */
  caption?: string;
  /** The folders it sits in inside the zip, outermost first (NFC), e.g. `['img', '10_aria']`. */
  folders: string[];
};

export type ZipSkip = { name: string; reason: string };

/** `datasetToml`: the text of a `dataset.toml` that came with the images (sd-scripts' dataset settings), when one did. */
export type ZipIntake = { images: ZipImage[]; skipped: ZipSkip[]; datasetToml?: string };

export const IMAGE_EXTENSIONS: ReadonlySet<string> = new Set(['.png', '.jpg', '.jpeg', '.webp', '.gif', '.avif', '.tif', '.tiff', '.bmp', '.heic', '.heif']);

/**
 * Caption files beside an image, in order of preference when an image has both: `.txt` is what the
 * guides and most tools write, `.caption` is sd-scripts' own default `--caption_extension`.
 */
export const CAPTION_EXTENSIONS: readonly string[] = ['.txt', '.caption'];

/** Captions longer than this are not read; the image comes in without one. */
export const MAX_CAPTION_BYTES = 8 * 1024;

/** Entries that are operating-system litter, ignored without a note. */
const LITTER = new Set(['thumbs.db', 'desktop.ini']);

const MAX_DISPLAY_CHARS = 120;

/** An entry name made safe to show: no control or bidi characters, one line, bounded length. */
export function sanitizeDisplayName(raw: string): string {
  const cleaned = raw
    .normalize('NFC')
    .replace(/\s+/gu, ' ')
    .replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\uFFFD]/gu, '')
    .trim();
  const chars = [...cleaned];
  if (chars.length === 0) return '(unnamed)';
  if (chars.length <= MAX_DISPLAY_CHARS) return cleaned;
  // Keep the end (the file name and extension) and the start (the folder).
  const head = Math.floor(MAX_DISPLAY_CHARS / 3);
  const tail = MAX_DISPLAY_CHARS - head - 1;
  return `${chars.slice(0, head).join('')}…${chars.slice(chars.length - tail).join('')}`;
}

/** Normalises caption text: BOM and control characters dropped, lines trimmed and joined with ", ". */
export function normalizeCaption(text: string): string {
  return text
    .replace(/^\uFEFF/, '')
    .replace(/\t/g, ' ')
    .split(/\r\n|\r|\n/)
    .map((line) => line.replace(/[\p{Cc}\p{Cf}]/gu, '').trim())
    .filter((line) => line.length > 0)
    .join(', ');
}

const NOT_A_ZIP = 'not a valid zip file';

class TotalExceeded extends Error {}
class EntryExceeded extends Error {}

/** A local file-system error (ENOSPC, EIO, …), as opposed to bad data inside the zip. */
function isSystemError(err: unknown): boolean {
  if (typeof err !== 'object' || err === null || !('code' in err) || typeof err.code !== 'string') return false;
  return /^E[A-Z]+$/.test(err.code);
}

type Candidate = {
  index: number;
  entry: Entry;
  display: string;
  ext: string;
  /** folder + stem, the key that pairs an image with its caption */
  key: string;
  folders: string[];
};

type CaptionResult = { text: string } | { note: string } | { none: true };

/** Counts every byte leaving the zip against the per-entry and total budgets. */
class BudgetMeter extends Transform {
  bytes = 0;
  constructor(
    private readonly budget: { used: number; max: number },
    private readonly maxEntry: number,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    this.budget.used += chunk.length;
    if (this.budget.used > this.budget.max) {
      callback(new TotalExceeded());
      return;
    }
    if (this.bytes > this.maxEntry) {
      callback(new EntryExceeded());
      return;
    }
    callback(null, chunk);
  }
}

function tooMuchData(max: number): UserError {
  return new UserError(`the zip unpacks to more than ${formatBytes(max)}; the limit is ${formatBytes(max)}`);
}

/**
 * Extracts the images of `zipPath` into `destDir` (created if missing). Refuses the whole zip
 * (UserError) when it is not a zip, holds more than `maxEntries` entries, or unpacks to more
 * than `maxTotalUncompressed`; on refusal nothing it extracted is left behind. Skips, with a
 * reason, entries that are not images, too large, encrypted, damaged or unsafely named;
 * ignores folders, `__MACOSX/`, dotfiles and dot-folders silently.
 */
export async function extractZip(zipPath: string, destDir: string, limits: ZipLimits): Promise<ZipIntake> {
  let zip: ZipFile;
  try {
    zip = await openPromise(zipPath, {
      lazyEntries: true,
      autoClose: false,
      decodeStrings: false,
      validateEntrySizes: true,
      strictFileNames: false,
    });
  } catch (err) {
    if (isSystemError(err)) throw err;
    throw new UserError(NOT_A_ZIP);
  }

  const written: string[] = [];
  try {
    if (zip.entryCount > limits.maxEntries) {
      throw new UserError(`the zip holds ${zip.entryCount} entries; the limit is ${limits.maxEntries}`);
    }

    // Phase 1: the central directory only.
    const skipped: (ZipSkip & { index: number })[] = [];
    const images: Candidate[] = [];
    const captions = new Map<string, Candidate>();
    let datasetToml: { entry: Entry; depth: number } | undefined;
    const classify = (entry: Entry, at: number): void => {
      const rawName = getFileNameLowLevel(entry.generalPurposeBitFlag, entry.fileNameRaw, entry.extraFields, false);
      if (rawName.endsWith('/')) return; // a folder
      const display = sanitizeDisplayName(rawName);
      if (validateFileName(rawName) !== null) {
        skipped.push({ index: at, name: display, reason: 'unsafe file name' });
        return;
      }
      const segments = rawName.split('/').filter((s) => s !== '' && s !== '.');
      const base = segments.at(-1);
      if (base === undefined) return;
      if (segments.some((s) => s === '__MACOSX' || s.startsWith('.'))) return;
      if (LITTER.has(base.toLowerCase())) return;
      // sd-scripts' settings (a dataset or config TOML) travel with a dataset in its layout; the
      // dataset's (the shallowest `dataset.toml`) is read for what the folders do not say.
      if (base.toLowerCase().endsWith('.toml')) {
        if (base.toLowerCase() === 'dataset.toml' && !entry.isEncrypted() && entry.canDecodeFileData()) {
          if (!datasetToml || segments.length < datasetToml.depth) datasetToml = { entry, depth: segments.length };
        }
        return;
      }

      const dot = base.lastIndexOf('.');
      const ext = dot > 0 ? base.slice(dot).toLowerCase() : '';
      const key = [...segments.slice(0, -1), dot > 0 ? base.slice(0, dot) : base].join('/');
      const folders = segments.slice(0, -1).map((s) => s.normalize('NFC'));
      const candidate: Candidate = { index: at, entry, display, ext, key, folders };

      const preference = CAPTION_EXTENSIONS.indexOf(ext);
      if (preference >= 0) {
        const held = captions.get(key);
        if (!held || CAPTION_EXTENSIONS.indexOf(held.ext) > preference) captions.set(key, candidate);
        return;
      }
      if (!IMAGE_EXTENSIONS.has(ext)) {
        skipped.push({ index: at, name: display, reason: 'not an image' });
        return;
      }
      if (entry.isEncrypted()) {
        skipped.push({ index: at, name: display, reason: 'encrypted' });
        return;
      }
      if (!entry.canDecodeFileData()) {
        skipped.push({ index: at, name: display, reason: 'compressed in a way that is not supported' });
        return;
      }
      if (entry.uncompressedSize > limits.maxEntryBytes) {
        skipped.push({ index: at, name: display, reason: `larger than ${formatBytes(limits.maxEntryBytes)}, the limit for one file` });
        return;
      }
      images.push(candidate);
    };

    let index = 0;
    try {
      for await (const entry of zip.eachEntry()) {
        index += 1;
        classify(entry, index);
      }
    } catch (err) {
      if (isSystemError(err)) throw err;
      if (err instanceof Error && /encryption/i.test(err.message)) {
        throw new UserError('the zip uses a kind of encryption that is not supported');
      }
      throw new UserError(NOT_A_ZIP);
    }

    // The declared sizes are exact for every entry that extracts (yauzl checks them), so an
    // archive that declares too much is refused before a byte is written.
    let declared = 0;
    for (const image of images) {
      declared += image.entry.uncompressedSize;
      const caption = captions.get(image.key);
      if (caption) declared += Math.min(caption.entry.uncompressedSize, MAX_CAPTION_BYTES);
    }
    if (declared > limits.maxTotalUncompressed) throw tooMuchData(limits.maxTotalUncompressed);

    // Phase 2: the data, one entry at a time.
    await mkdir(destDir, { recursive: true });
    const budget = { used: 0, max: limits.maxTotalUncompressed };
    const captionResults = new Map<string, CaptionResult>();
    const out: ZipImage[] = [];
    let number = 0;

    for (const image of images) {
      number += 1;
      const path = join(destDir, `${String(number).padStart(5, '0')}${image.ext}`);
      const problem = await extractEntry(zip, image.entry, path, budget, limits, written);
      if (problem) {
        skipped.push({ index: image.index, name: image.display, reason: problem });
        continue;
      }

      const result: ZipImage = { name: image.display, path, folders: image.folders };
      const captionEntry = captions.get(image.key);
      if (captionEntry) {
        let caption = captionResults.get(image.key);
        if (!caption) {
          caption = await readCaption(zip, captionEntry.entry, budget, limits);
          captionResults.set(image.key, caption);
          if ('note' in caption) skipped.push({ index: captionEntry.index, name: captionEntry.display, reason: caption.note });
        }
        if ('text' in caption) result.caption = caption.text;
      }
      out.push(result);
    }

    skipped.sort((a, b) => a.index - b.index);
    // Only when it fits what is left of the budget: the settings never cost a zip its images.
    const fits = datasetToml && budget.used + Math.min(datasetToml.entry.uncompressedSize, MAX_CAPTION_BYTES) <= budget.max;
    const settings = datasetToml && fits ? await readText(zip, datasetToml.entry, budget, limits) : null;
    return {
      images: out,
      skipped: skipped.map(({ name, reason }) => ({ name, reason })),
      ...(settings && 'text' in settings ? { datasetToml: settings.text } : {}),
    };
  } catch (err) {
    await Promise.all(written.map((p) => rm(p, { force: true })));
    throw err;
  } finally {
    zip.close();
  }
}

/**
 * Pipes an entry's data through `meter` into `sink`. The pipeline is attached in yauzl's callback,
 * before any data can flow: yauzl inflates ahead into a buffer, and an inflate or size error
 * raised before a listener exists would be an uncaught exception. If the entry cannot be opened,
 * `sink` is destroyed (closing its file).
 */
function pipeEntry(zip: ZipFile, entry: Entry, meter: Transform, sink: Writable): Promise<void> {
  return new Promise((resolve, reject) => {
    zip.openReadStream(entry, (err, stream) => {
      if (err) {
        sink.destroy();
        meter.destroy();
        reject(err);
        return;
      }
      pipeline(stream, meter, sink).then(resolve, reject);
    });
  });
}

/**
 * Streams one entry to a new file at `path`. Returns a reason to skip it, or undefined when it
 * was written. Throws (a UserError) when the total budget runs out, or on local I/O errors.
 */
async function extractEntry(
  zip: ZipFile,
  entry: Entry,
  path: string,
  budget: { used: number; max: number },
  limits: ZipLimits,
  written: string[],
): Promise<string | undefined> {
  let created = false;
  try {
    const file = await open(path, 'wx');
    created = true;
    written.push(path);
    await pipeEntry(zip, entry, new BudgetMeter(budget, limits.maxEntryBytes), file.createWriteStream());
    return undefined;
  } catch (err) {
    if (created) {
      await rm(path, { force: true });
      written.splice(written.indexOf(path), 1);
    }
    if (err instanceof TotalExceeded) throw tooMuchData(limits.maxTotalUncompressed);
    if (err instanceof EntryExceeded) return `larger than ${formatBytes(limits.maxEntryBytes)}, the limit for one file`;
    if (isSystemError(err)) throw err;
    return 'damaged (its data does not match the zip)';
  }
}

/** Reads a caption entry (bounded), or says why it was not used. */
async function readCaption(zip: ZipFile, entry: Entry, budget: { used: number; max: number }, limits: ZipLimits): Promise<CaptionResult> {
  const read = await readText(zip, entry, budget, limits);
  if ('note' in read) return read;
  const caption = normalizeCaption(read.text);
  return caption === '' ? { none: true } : { text: caption };
}

/** Reads a small text entry (a caption, sd-scripts' settings) of at most MAX_CAPTION_BYTES, or says why it was not used. */
async function readText(zip: ZipFile, entry: Entry, budget: { used: number; max: number }, limits: ZipLimits): Promise<{ text: string } | { note: string }> {
  if (entry.isEncrypted()) return { note: 'caption not used: encrypted' };
  if (!entry.canDecodeFileData()) return { note: 'caption not used: compressed in a way that is not supported' };
  if (entry.uncompressedSize > MAX_CAPTION_BYTES) {
    return { note: `caption not used: larger than ${formatBytes(MAX_CAPTION_BYTES)}` };
  }
  const chunks: Buffer[] = [];
  try {
    const sink = new Writable({
      write(chunk: Buffer, _encoding, callback) {
        chunks.push(chunk);
        callback();
      },
    });
    await pipeEntry(zip, entry, new BudgetMeter(budget, Math.min(MAX_CAPTION_BYTES, limits.maxEntryBytes)), sink);
  } catch (err) {
    if (err instanceof TotalExceeded) throw tooMuchData(limits.maxTotalUncompressed);
    if (err instanceof EntryExceeded) return { note: `caption not used: larger than ${formatBytes(MAX_CAPTION_BYTES)}` };
    if (isSystemError(err)) throw err;
    return { note: 'caption not used: damaged' };
  }
  try {
    return { text: new TextDecoder('utf-8', { fatal: true }).decode(Buffer.concat(chunks)) };
  } catch {
    return { note: 'caption not used: not valid UTF-8' };
  }
}
