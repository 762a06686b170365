import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { BlobStore } from '../core/blob-store.ts';
import { bucketSettingsFor, selectBucket, type Size } from '../core/buckets.ts';
import type { Config } from '../core/config.ts';
import { downloadToFile } from '../core/download.ts';
import { errorMessage, isUserError, UserError } from '../core/errors.ts';
import { MAX_CONCEPTS } from '../core/dataset-rules.ts';
import { conceptTriggersFromToml, readKohyaLayout, type KohyaFolder } from '../core/kohya-layout.ts';
import { Limiter, LockTimeoutError, type Mutex, type NamedLocks } from '../core/limiter.ts';
import type { Logger } from '../core/logger.ts';
import { normalizeImage, normalizeOptionsFromConfig, type NormalizeResult } from '../core/media.ts';
import { nearestDuplicate } from '../core/phash.ts';
import { isAbove, type Rating } from '../core/rating.ts';
import { extractZip } from '../core/zip-intake.ts';
import type { Dataset, DatasetStore, ImageFacts } from '../store/dataset-store.ts';

/** A file offered for a dataset: a Discord attachment (downloaded here) or a zip of images. */
export interface IncomingFile {
  name: string;
  url: string;
  size: number;
}

export interface IntakeRequest {
  dataset: Dataset;
  concept: string;
  contributor: { id: string; name: string };
  sourceMessageId: string | null;
  files: IncomingFile[];
  zip?: IncomingFile | undefined;
}

export type FileOutcome =
  | {
      status: 'accepted';
      name: string;
      no: number;
      concept: string;
      width: number;
      height: number;
      bucket: Size;
      upscaled: boolean;
      notes: string[];
      warnings: string[];
      captioned: boolean;
    }
  | { status: 'refused'; name: string; reason: string };

export interface IntakeReport {
  dataset: Dataset;
  concept: string;
  outcomes: FileOutcome[];
  /** Entries of a zip that were not images (told once, not per file where it is noise). */
  skipped: { name: string; reason: string }[];
  /** A problem with the zip as a whole (too many entries, not a zip…). */
  zipProblem: string | null;
  /** What a zip's `N_name` folders became (one short line each), when it had any. */
  layout: string[];
  /** Thumbnails of the accepted images, in outcome order, for the contact sheet (with their rating, when rated). */
  thumbnails: { no: number; image: Buffer; rating: Rating | null }[];
}

interface Prepared {
  name: string;
  path: string | null;
  caption: string | null;
  failure: string | null;
  /** The `N_name` folder it came in, whose concept it joins; absent: the concept the upload named. */
  folder?: KohyaFolder;
}

/**
 * Turns offered files into dataset images: download (Discord CDN only, capped), normalise,
 * refuse duplicates, store blobs atomically, then record each image in one Redis transaction.
 * One bad file never affects the others.
 */
export class IntakeService {
  private readonly downloads = new Limiter(6);

  constructor(
    private readonly deps: {
      config: Config;
      store: DatasetStore;
      blobs: BlobStore;
      /** Held around every blob write + record, and every removal + blob delete (by every process). */
      blobLock: Mutex;
      /** Commits to one dataset take `intake:<datasetId>`, so every bot process sees the others' images. */
      locks: NamedLocks;
      logger: Logger;
      onAccepted?: (dataset: Dataset, nos: number[], captioned: number[]) => Promise<void>;
      /** Rates images (one rating or null each); absent: images arrive unrated. */
      rater?: { rate(images: readonly Buffer[]): Promise<(Rating | null)[]> };
      /** The highest rating the dataset takes, and why (for the refusal); absent: everything is taken. */
      acceptLimit?: (dataset: Dataset) => Promise<{ limit: Rating; where: string }>;
    },
  ) {}

  async ingest(req: IntakeRequest): Promise<IntakeReport> {
    const { config, blobs } = this.deps;
    const log = this.deps.logger.child({ datasetId: req.dataset.id, contributorId: req.contributor.id });
    const workDir = blobs.tempPath('upload');
    await mkdir(workDir, { recursive: true });
    const report: IntakeReport = {
      dataset: req.dataset,
      concept: req.concept,
      outcomes: [],
      skipped: [],
      zipProblem: null,
      layout: [],
      thumbnails: [],
    };
    try {
      const prepared = await Promise.all(req.files.map((file, i) => this.download(file, join(workDir, `a${i}`), config.MAX_IMAGE_BYTES)));
      if (req.zip) prepared.push(...(await this.unzip(req.zip, workDir, report)));

      const normalized = await Promise.all(
        prepared.map((p) =>
          p.failure !== null || p.path === null
            ? Promise.resolve<NormalizeResult>({ ok: false, reason: p.failure ?? 'not available' })
            : this.normalize(p.path),
        ),
      );

      const ratings = await this.rate(normalized);
      const accept = (await this.deps.acceptLimit?.(req.dataset)) ?? null;
      for (const [i, rating] of ratings.entries()) {
        if (rating === null || accept === null || !isAbove(rating, accept.limit)) continue;
        normalized[i] = { ok: false, reason: `rated ${rating}: ${accept.where} takes images up to ${accept.limit}` };
      }

      try {
        await this.deps.locks.run(`intake:${req.dataset.id}`, (lost) => this.commit(req, prepared, normalized, ratings, report, lost));
      } catch (err) {
        if (!(err instanceof LockTimeoutError)) throw err;
        log.warn({ err }, 'intake waited too long for the dataset');
        throw new UserError(`**${req.dataset.name}** is busy taking in another upload. Please try again in a few minutes.`);
      }
      const accepted = report.outcomes.filter((o) => o.status === 'accepted');
      log.info({ accepted: accepted.length, refused: report.outcomes.length - accepted.length }, 'intake finished');
      if (accepted.length > 0 && this.deps.onAccepted) {
        await this.deps.onAccepted(
          req.dataset,
          accepted.map((o) => o.no),
          accepted.filter((o) => o.captioned).map((o) => o.no),
        );
      }
      return report;
    } finally {
      await rm(workDir, { recursive: true, force: true });
    }
  }

  private async download(file: IncomingFile, dest: string, maxBytes: number): Promise<Prepared> {
    const name = displayName(file.name);
    try {
      await this.downloads.run(() =>
        downloadToFile(file.url, dest, {
          allowedHosts: this.deps.config.ATTACHMENT_HOSTS,
          maxBytes,
          declaredSize: file.size,
          timeoutMs: 120_000,
        }),
      );
      return { name, path: dest, caption: null, failure: null };
    } catch (err) {
      if (!isUserError(err)) this.deps.logger.warn({ err, file: name }, 'download failed');
      return { name, path: null, caption: null, failure: isUserError(err) ? err.message : 'the download failed' };
    }
  }

  private async unzip(zip: IncomingFile, workDir: string, report: IntakeReport): Promise<Prepared[]> {
    const { config } = this.deps;
    const zipPath = join(workDir, 'upload.zip');
    const got = await this.download(zip, zipPath, config.MAX_ZIP_BYTES);
    if (got.failure !== null) {
      report.zipProblem = `${got.name}: ${got.failure}`;
      return [];
    }
    try {
      const extracted = await extractZip(zipPath, join(workDir, 'zip'), {
        maxEntries: config.ZIP_MAX_ENTRIES,
        maxTotalUncompressed: config.ZIP_MAX_UNCOMPRESSED_BYTES,
        maxEntryBytes: config.MAX_IMAGE_BYTES,
      });
      report.skipped.push(...extracted.skipped);
      const layout = readKohyaLayout(extracted.images.map((img) => img.folders));
      // A concept's own trigger is not in its folder's name; the dataset.toml that came along says it.
      const triggers = extracted.datasetToml ? conceptTriggersFromToml(extracted.datasetToml) : new Map<string, string>();
      const out: Prepared[] = [];
      const byConcept = new Map<string, KohyaFolder>();
      extracted.images.forEach((img, i) => {
        if (layout?.regularisation[i]) {
          report.skipped.push({ name: img.name, reason: 'regularisation image (not used here)' });
          return;
        }
        let folder = layout?.folders[i] ?? undefined;
        const trigger = folder && triggers.get(folder.path.split('/').at(-1) ?? '');
        if (folder && trigger) folder = { ...folder, trigger };
        if (folder) {
          // Two folders naming one concept: it keeps the first one's repeats, and takes both's images.
          const first = byConcept.get(folder.concept);
          if (first) folder = first;
          else byConcept.set(folder.concept, folder);
        }
        out.push({ name: displayName(img.name), path: img.path, caption: img.caption ?? null, failure: null, ...(folder ? { folder } : {}) });
      });
      if (layout) {
        report.layout.push(...layout.problems.map((p) => `${p}; its images go to \`${report.concept}\``));
        for (const f of layout.recognised) {
          const first = byConcept.get(f.concept);
          if (first && first !== f) report.layout.push(`folder \`${f.path}\` joins \`${f.concept}\` (${first.repeats} repeats, from \`${first.path}\`)`);
        }
      }
      return out;
    } catch (err) {
      report.zipProblem = `${got.name}: ${isUserError(err) ? err.message : 'the zip could not be read'}`;
      if (!isUserError(err)) this.deps.logger.warn({ err }, 'zip extraction failed');
      return [];
    }
  }

  /** One rating (or null) per normalised file, from its master image. */
  private async rate(normalized: NormalizeResult[]): Promise<(Rating | null)[]> {
    const out: (Rating | null)[] = normalized.map(() => null);
    const rater = this.deps.rater;
    if (!rater) return out;
    const todo = normalized.flatMap((n, i) => (n.ok ? [{ i, master: n.master }] : []));
    const got = await rater.rate(todo.map((t) => t.master));
    todo.forEach((t, j) => (out[t.i] = got[j] ?? null));
    return out;
  }

  private async normalize(path: string): Promise<NormalizeResult> {
    const { config } = this.deps;
    try {
      // media.ts bounds how many images are decoded at once, process-wide.
      return await normalizeImage(path, normalizeOptionsFromConfig(config));
    } catch (err) {
      this.deps.logger.warn({ err }, 'normalisation failed unexpectedly');
      return { ok: false, reason: `could not be read as an image (${errorMessage(err)})` };
    }
  }

  /**
   * Runs under the dataset's lock: duplicate checks see every earlier file, this upload's too.
   * Should the lock be lost (`lost` aborts), the files not yet recorded are refused.
   */
  private async commit(
    req: IntakeRequest,
    prepared: Prepared[],
    normalized: NormalizeResult[],
    ratings: (Rating | null)[],
    report: IntakeReport,
    lost: AbortSignal,
  ) {
    const { store, blobs, config } = this.deps;
    const settings = bucketSettingsFor(req.dataset.base, req.dataset.resolution);
    const phashes = await store.phashes(req.dataset.id);
    const conceptOf = await this.settleFolders(req, prepared, normalized, report);
    for (let i = 0; i < prepared.length; i++) {
      const p = prepared[i]!;
      const n = normalized[i]!;
      const concept = conceptOf(p);
      const rating = ratings[i] ?? null;
      if (!n.ok) {
        if (n.detail) this.deps.logger.info({ datasetId: req.dataset.id, file: p.name, detail: n.detail }, 'image refused by the decoder');
        report.outcomes.push({ status: 'refused', name: p.name, reason: n.reason });
        continue;
      }
      try {
        lost.throwIfAborted();
        // The exact check first: a byte-for-byte copy is the same picture, not a near one.
        const exact = await store.pixelOwner(req.dataset.id, n.pixelSha256);
        if (exact !== null) {
          report.outcomes.push({ status: 'refused', name: p.name, reason: await this.duplicateReason(req.dataset.id, exact, 'the same picture as') });
          continue;
        }
        const near = nearestDuplicate(n.phash, phashes, config.NEAR_DUPLICATE_DISTANCE);
        if (near !== null) {
          report.outcomes.push({ status: 'refused', name: p.name, reason: await this.duplicateReason(req.dataset.id, near, 'a near duplicate of') });
          continue;
        }
        // Blobs first, record second: a crash in between leaves an unreferenced blob (swept
        // later), never a record pointing at a missing file.
        const assignment = selectBucket(n.width, n.height, settings);
        const warnings: string[] = [];
        if (assignment.upscaled) {
          warnings.push('small for training: it will be enlarged and look soft (a bigger source helps)');
        }
        const added = await this.deps.blobLock.run(async () => {
          lost.throwIfAborted();
          const [original, master, thumb] = await Promise.all([
            blobs.putFile(p.path!, { move: true }),
            blobs.putBuffer(n.master),
            blobs.putBuffer(n.thumbnail),
          ]);
          const facts: ImageFacts = {
            concept,
            contributorId: req.contributor.id,
            contributorName: req.contributor.name,
            sourceMessageId: req.sourceMessageId,
            sourceName: p.name,
            originalBlob: original.id,
            originalBytes: original.size,
            originalFormat: n.original.format,
            originalSize: [n.original.width, n.original.height],
            masterBlob: master.id,
            thumbBlob: thumb.id,
            width: n.width,
            height: n.height,
            pixelSha256: n.pixelSha256,
            phash: n.phash,
            bucket: assignment.bucket,
            resized: assignment.resized,
            cropped: assignment.cropped,
            upscaled: assignment.upscaled,
            notes: n.notes,
            initialCaption: p.caption,
            addedAt: Date.now(),
            ...(rating !== null ? { ratings: { classifier: rating } } : {}),
          };
          return store.addImage(req.dataset.id, facts);
        });
        if (!added.added) {
          report.outcomes.push({
            status: 'refused',
            name: p.name,
            reason: await this.duplicateReason(req.dataset.id, added.duplicateOf, 'the same picture as'),
          });
          continue;
        }
        phashes.set(added.no, n.phash);
        report.thumbnails.push({ no: added.no, image: n.thumbnail, rating });
        report.outcomes.push({
          status: 'accepted',
          name: p.name,
          no: added.no,
          concept,
          width: n.width,
          height: n.height,
          bucket: assignment.bucket,
          upscaled: assignment.upscaled,
          notes: n.notes,
          warnings,
          captioned: p.caption !== null,
        });
      } catch (err) {
        if (isUserError(err)) {
          report.outcomes.push({ status: 'refused', name: p.name, reason: err.message });
          continue;
        }
        this.deps.logger.error({ err, file: p.name }, 'storing an image failed');
        report.outcomes.push({ status: 'refused', name: p.name, reason: 'could not be stored (a problem on our side; try again)' });
      }
    }
  }

  /**
   * Under the dataset's lock: the concepts a zip's `N_name` folders stand for, created with their
   * repeats (or given them when they had none), one line each for the contributor. Returns which
   * concept each file joins: its folder's, or the upload's when the folder could not become one.
   */
  private async settleFolders(req: IntakeRequest, prepared: Prepared[], normalized: NormalizeResult[], report: IntakeReport): Promise<(p: Prepared) => string> {
    const { store } = this.deps;
    const usable = new Map<string, KohyaFolder>();
    prepared.forEach((p, i) => {
      if (p.folder && normalized[i]?.ok) usable.set(p.folder.concept, p.folder);
    });
    const settled = new Set<string>();
    if (usable.size > 0) {
      const concepts = await store.getConcepts(req.dataset.id);
      let count = concepts.length;
      for (const folder of usable.values()) {
        const existing = concepts.find((c) => c.name === folder.concept);
        const where = `\`${folder.path}\` → concept \`${folder.concept}\``;
        if (!existing) {
          if (count >= MAX_CONCEPTS) {
            report.layout.push(`folder \`${folder.path}\`: the dataset already has ${MAX_CONCEPTS} concepts; its images go to \`${req.concept}\``);
            continue;
          }
          await store.ensureConcept(req.dataset.id, folder.concept, folder.trigger ?? null, folder.repeats);
          count += 1;
          report.layout.push(`${where} (new), ${folder.repeats} repeats${folder.trigger ? `, trigger \`${folder.trigger}\`` : ''}`);
        } else if (existing.repeats === undefined) {
          await store.setConceptRepeats(req.dataset.id, folder.concept, folder.repeats);
          report.layout.push(`${where}, ${folder.repeats} repeats from now on`);
        } else if (existing.repeats === folder.repeats) {
          report.layout.push(`${where}, ${folder.repeats} repeats`);
        } else {
          report.layout.push(`${where}, which keeps its ${existing.repeats} repeats`);
        }
        settled.add(folder.concept);
      }
    }
    return (p) => (p.folder && settled.has(p.folder.concept) ? p.folder.concept : req.concept);
  }

  private async duplicateReason(datasetId: string, no: number, what: string): Promise<string> {
    const other = await this.deps.store.getImage(datasetId, no);
    return other ? `${what} #${no} (added by ${other.contributorName})` : `${what} #${no}`;
  }
}

/** A file name fit for display inside a code span: no path, no control characters or backticks, bounded. */
export function displayName(name: string): string {
  const base = name.split(/[\\/]/).pop() ?? name;
  // eslint-disable-next-line no-control-regex
  const clean = base.replace(/[\u0000-\u001f\u007f`]/g, '').trim();
  const short = clean.length > 60 ? `${clean.slice(0, 57)}…` : clean;
  return short || 'unnamed file';
}
