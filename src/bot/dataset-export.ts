/**
 * `/dataset export`: the dataset as a zip in the layout the guides teach for sd-scripts —
 * `img/<repeats>_<concept>/<no>.png` with `<no>.txt` captions beside them, and the `dataset.toml`
 * a run would hand the trainer (its `image_dir`s relative to the folder the zip is unpacked in).
 *
 * The link is signed and expiring (signed-url.ts); the zip is assembled when the link is fetched,
 * from the dataset as it is then: an image withdrawn after the link was made is not in it. Entries
 * are stored (the masters are PNG already), so the size is known before the first byte, and each
 * master is streamed from the blob store as the zip reaches it: nothing is held in memory whole.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import type { ServerResponse } from 'node:http';
import { Transform, type TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ZipFile } from 'yazl';
import type { BlobStore } from '../core/blob-store.ts';
import { captionModeOf } from '../core/caption-text.ts';
import { UserError } from '../core/errors.ts';
import { codeOf } from '../core/fs-errors.ts';
import { buildDatasetToml, KOHYA_FILE_NAMES } from '../core/kohya-config.ts';
import type { Logger } from '../core/logger.ts';
import { planRun, type Plan } from '../core/plan.ts';
import { defaultRecipeFor, resolveRecipe } from '../core/recipes.ts';
import { downloadFileName, makeExportUrl } from '../core/signed-url.ts';
import type { CaptionStore, CaptionVersion } from '../store/caption-store.ts';
import type { Dataset, DatasetStore } from '../store/dataset-store.ts';
import { trainingConcepts } from './training-input.ts';

/** Where the concept folders go inside the zip (the guides' `img/`). */
export const EXPORT_IMAGE_ROOT = 'img';
/** How long an export link works. */
export const EXPORT_LINK_LIFETIME_MS = 24 * 3600_000;

export interface ExportEntry {
  /** Path inside the zip. */
  path: string;
  /** A master in the blob store, or the text of a file we write. */
  source: { blob: string } | { text: string };
}

export interface ExportContents {
  plan: Plan;
  entries: ExportEntry[];
}

export interface DatasetExporterDeps {
  store: DatasetStore;
  captions: CaptionStore;
  sentences: CaptionStore;
  blobs: BlobStore;
  logger: Logger;
}

/** What the zip of a dataset holds, and the signed links to it. */
export class DatasetExporter {
  constructor(private readonly deps: DatasetExporterDeps) {}

  /**
   * The files of the export, planned with the dataset kind's default recipe (the repeats a run
   * would use unless a concept has its own). Throws a UserError when the dataset has no images.
   */
  async contents(dataset: Dataset): Promise<ExportContents> {
    const { store } = this.deps;
    const images = await store.listImages(dataset.id);
    if (images.length === 0) throw new UserError(`**${dataset.name}** has no images yet: there is nothing to export.`);
    const mode = captionModeOf(dataset);
    const nos = images.map((i) => i.no);
    const [concepts, captions, sentences] = await Promise.all([
      store.getConcepts(dataset.id),
      mode === 'sentences' ? new Map<number, CaptionVersion>() : this.deps.captions.getMany(dataset.id, nos),
      mode === 'tags' ? new Map<number, CaptionVersion>() : this.deps.sentences.getMany(dataset.id, nos),
    ]);
    const input = trainingConcepts(dataset, mode, concepts, images, captions, sentences);
    const recipe = resolveRecipe(defaultRecipeFor(dataset.kind), dataset.base, {}, { captionMode: mode });
    const plan = planRun({ base: dataset.base, trigger: dataset.trigger, className: dataset.className, concepts: input.concepts, recipe });
    const entries: ExportEntry[] = [{ path: KOHYA_FILE_NAMES.datasetToml, source: { text: buildDatasetToml(plan, recipe, EXPORT_IMAGE_ROOT) } }];
    for (const concept of plan.concepts) {
      for (const planned of concept.images) {
        const image = input.images.get(Number(planned.id));
        if (!image) continue;
        const stem = `${EXPORT_IMAGE_ROOT}/${concept.folder}/${image.no}`;
        entries.push({ path: `${stem}.png`, source: { blob: image.blob } }, { path: `${stem}.txt`, source: { text: `${image.caption}\n` } });
      }
    }
    return { plan, entries };
  }

  /** A signed link to the export of `dataset` (which the link names by id, not by contents). */
  link(dataset: Dataset, publicUrl: string, secret: string, now = Date.now()): { url: string; expiresAt: Date } {
    const expiresAt = new Date(now + EXPORT_LINK_LIFETIME_MS);
    const fileName = downloadFileName(`${dataset.name}-dataset`, '.zip');
    return { url: makeExportUrl(publicUrl, { secret, datasetId: dataset.id, fileName, expiresAt }), expiresAt };
  }

  /**
   * Streams the export of dataset `datasetId` as the response (a signed link was checked already).
   * Returns 'missing' without writing when the dataset or all its images are gone.
   */
  async serve(
    datasetId: string,
    fileName: string,
    res: ServerResponse,
    head: boolean,
    onBytes: (n: number) => void,
  ): Promise<'missing' | 'served' | 'aborted'> {
    const dataset = await this.deps.store.getDataset(datasetId);
    if (!dataset) return 'missing';
    let contents: ExportContents;
    try {
      contents = await this.contents(dataset);
    } catch (err) {
      if (err instanceof UserError) return 'missing';
      throw err;
    }
    const zip = new ZipFile();
    // A master that cannot be read part-way (withdrawn and deleted since): the response is cut,
    // so the member gets a broken download rather than a zip that silently lacks the file.
    zip.on('error', (err: unknown) => {
      this.deps.logger.warn({ err, datasetId }, 'dataset export cut short');
      res.destroy();
    });
    const mtime = new Date();
    for (const entry of contents.entries) {
      if ('text' in entry.source) {
        zip.addBuffer(Buffer.from(entry.source.text, 'utf8'), entry.path, { mtime, compress: false });
        continue;
      }
      const path = this.deps.blobs.path(entry.source.blob);
      let size: number;
      try {
        size = (await stat(path)).size;
      } catch (err) {
        // Withdrawn while the zip was being put together: it stays out.
        if (codeOf(err) === 'ENOENT') continue;
        throw err;
      }
      zip.addReadStreamLazy(entry.path, { mtime, compress: false, size }, (cb) => cb(null, createReadStream(path)));
    }
    // yazl passes the total size it calculated (or -1); @types/yazl declares the callback without it.
    const total = await new Promise<number>((resolve) => zip.end(undefined, ((n: number) => resolve(n)) as unknown as () => void));
    res.writeHead(200, {
      'content-type': 'application/zip',
      'content-disposition': `attachment; filename="${fileName}"`,
      ...(total >= 0 ? { 'content-length': String(total) } : {}),
      'cache-control': 'private, no-store',
      'x-content-type-options': 'nosniff',
      'referrer-policy': 'no-referrer',
    });
    if (head) {
      res.end();
      (zip.outputStream as NodeJS.ReadableStream & { destroy?: () => void }).destroy?.();
      return 'served';
    }
    const meter = new Transform({
      transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback) {
        onBytes(chunk.length);
        callback(null, chunk);
      },
    });
    try {
      await pipeline(zip.outputStream, meter, res);
      this.deps.logger.info({ datasetId, files: contents.entries.length }, 'dataset export served');
      return 'served';
    } catch (err) {
      if (codeOf(err) === 'ERR_STREAM_PREMATURE_CLOSE') return 'aborted';
      throw err;
    }
  }
}
