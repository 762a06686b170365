/**
 * Images out: contact sheets of a dataset, an epoch's sample grid, and epochs stacked for
 * comparison; one JPEG each, labelled with the built-in bitmap font (no system fonts needed) and
 * kept well under Discord's upload limits.
 */
import type { JpegOptions, OverlayOptions, ResizeOptions } from 'sharp';
import { FONT_METRICS, renderLabel, wrapText } from './bitmap-font.ts';
import { blankCanvas, decodeImage as decoder, inSlot, jpegWithin } from './sharp.ts';

export interface ContactSheetTile {
  /** Any image sharp reads (a master, a thumbnail). */
  image: Buffer;
  /** Drawn at the tile's top-left corner, e.g. "#3". */
  label: string;
}

export interface ContactSheetOptions {
  /** Tiles per row (default: about square). */
  columns?: number;
  /** Tile edge in pixels (default 256). */
  tile?: number;
}

const SHEET_BACKGROUND = '#1e1f22';
const SHEET_MAX_PIXELS = 16_000_000;
const SHEET_MAX_BYTES = 8 * 1024 * 1024;

/** `image` decoded, fitted by `resize` onto `background` and placed at (left, top) of a sheet. */
async function placed(
  image: Buffer | string,
  resize: ResizeOptions,
  background: string,
  at: { left: number; top: number },
  badge?: OverlayOptions,
): Promise<OverlayOptions & { width: number; height: number }> {
  let pipeline = decoder(image, { limitInputPixels: 100_000_000, autoOrient: true, pages: 1 })
    .resize({ kernel: 'lanczos3', background, ...resize })
    .flatten({ background });
  if (badge) pipeline = pipeline.composite([badge]);
  const { data, info } = await pipeline.toColourspace('srgb').raw({ depth: 'uchar' }).toBuffer({ resolveWithObject: true });
  return { input: data, raw: { width: info.width, height: info.height, channels: info.channels }, ...at, width: info.width, height: info.height };
}

/** A rendered label placed at (left, top). */
function labelAt(label: { data: Buffer; width: number; height: number }, left: number, top: number): OverlayOptions {
  return { input: label.data, raw: { width: label.width, height: label.height, channels: 4 }, left, top };
}

/** The overlays composed on a `width`×`height` canvas of `background`, as a JPEG within `maxBytes`. */
async function composedJpeg(
  size: { width: number; height: number },
  background: string,
  overlays: OverlayOptions[],
  fit: { maxBytes: number; qualities: readonly number[]; what: string; options?: Omit<JpegOptions, 'quality'> },
): Promise<Buffer> {
  // Compositing leaves an alpha channel behind; drop it before reading the canvas back as RGB.
  const canvas = await blankCanvas(size.width, size.height, background)
    .composite(overlays)
    .removeAlpha()
    .raw({ depth: 'uchar' })
    .toBuffer({ resolveWithObject: true });
  if (canvas.info.channels !== 3) throw new Error(`media: ${fit.what} has ${canvas.info.channels} channels`);
  return jpegWithin(
    { data: canvas.data, width: canvas.info.width, height: canvas.info.height, channels: 3 },
    fit.maxBytes,
    fit.qualities,
    fit.what,
    fit.options,
  );
}

/**
 * One JPEG showing every tile scaled to fit a square cell, labelled with the built-in bitmap
 * font (no system fonts needed), kept well under Discord's 10 MiB.
 */
export async function makeContactSheet(tiles: ContactSheetTile[], opts: ContactSheetOptions = {}): Promise<Buffer> {
  if (tiles.length === 0) throw new RangeError('a contact sheet needs at least one tile');
  const columns = Math.max(1, Math.min(tiles.length, Math.floor(opts.columns ?? Math.ceil(Math.sqrt(tiles.length)))));
  const rows = Math.ceil(tiles.length / columns);
  let tile = Math.max(32, Math.min(1024, Math.floor(opts.tile ?? 256)));
  const gapFor = (t: number) => Math.max(2, Math.round(t / 64));
  const sheetSize = (t: number) => ({ width: columns * t + (columns + 1) * gapFor(t), height: rows * t + (rows + 1) * gapFor(t) });
  while (tile > 32 && sheetSize(tile).width * sheetSize(tile).height > SHEET_MAX_PIXELS) tile = Math.floor(tile * 0.9);
  const gap = gapFor(tile);
  const { width, height } = sheetSize(tile);
  const scale = tile >= 96 ? Math.max(2, Math.round(tile / 128)) : 1;
  const margin = Math.max(2, Math.round(tile / 64));

  return inSlot(async () => {
    const cells: OverlayOptions[] = [];
    for (let i = 0; i < tiles.length; i++) {
      const { image, label } = tiles[i]!;
      const badge = renderLabel(label, { scale, maxWidth: tile - 2 * margin, maxLines: 2 });
      const at = { left: gap + (i % columns) * (tile + gap), top: gap + Math.floor(i / columns) * (tile + gap) };
      cells.push(await placed(image, { width: tile, height: tile, fit: 'contain' }, SHEET_BACKGROUND, at, labelAt(badge, margin, margin)));
    }
    return composedJpeg({ width, height }, SHEET_BACKGROUND, cells, {
      maxBytes: SHEET_MAX_BYTES,
      qualities: [85, 70, 50],
      what: `contact sheet of ${tiles.length} tiles`,
      options: { chromaSubsampling: '4:2:0' },
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Sample grids.

export interface SampleGridTile {
  /** A sample image (a Buffer or a file path). */
  image: Buffer | string;
  /** Written under the sample, e.g. "#1 zkchar, 1girl, smile": wrapped to as many lines as it takes. */
  label: string;
}

export interface SampleGridOptions {
  /** Written above the samples, e.g. "aria-r3k9 - epoch 3/10". */
  title: string;
  /** Longest side of one cell in pixels (default 512); samples are scaled down to fit, never up. */
  maxCell?: number;
}

export interface SampleGridLayout {
  width: number;
  height: number;
  /** Size of every cell; samples are fitted inside, centred. */
  cell: { width: number; height: number };
  /** Top-left corner of each cell, in tile order. */
  cells: { left: number; top: number }[];
  /** Integer scale of the bitmap font. */
  textScale: number;
  /** Each tile's label as drawn under its cell, one entry per line. */
  labels: string[][];
}

const GRID_BACKGROUND = '#1e1f22';
const GRID_TEXT = '#f2f3f5';
const GRID_MAX_BYTES = 8 * 1024 * 1024;
/** Space around label text, in font pixels (renderLabel's default). */
const LABEL_PADDING = 2;
/** A label longer than this many lines (a prompt of a few hundred characters) ends in "…". */
const GRID_MAX_LABEL_LINES = 10;
/** About how wide Discord shows an attached image in a channel before it is opened. */
export const DISCORD_PREVIEW_WIDTH = 550;
/** The height of a capital letter, in screen pixels, that stays readable in that preview. */
const READABLE_CAP_HEIGHT = 6;
/** The fewest characters a label line should hold, so a bigger font never leaves one word per line. */
const MIN_LINE_CHARACTERS = 16;

/**
 * The font scale of a grid `width` px wide with cells `cellWidth` px wide: large enough that a
 * capital letter is READABLE_CAP_HEIGHT px tall once Discord scales the grid to its preview width,
 * at least 2 on cells of 256 px and more, and small enough to keep MIN_LINE_CHARACTERS on a line.
 */
function gridTextScale(width: number, cell: { width: number; height: number }): number {
  const readable = Math.ceil((READABLE_CAP_HEIGHT * width) / (FONT_METRICS.ascent * DISCORD_PREVIEW_WIDTH));
  const floor = Math.min(cell.width, cell.height) >= 256 ? 2 : 1;
  const fits = Math.floor(cell.width / (MIN_LINE_CHARACTERS * FONT_METRICS.advance));
  return Math.max(1, Math.min(Math.max(readable, floor), Math.max(1, fits)));
}

/**
 * Where everything goes in a sample grid of one cell of `cell` size per label: a title strip on
 * top, then the cells side by side, each with its label wrapped under it, the label area as tall
 * as the longest label needs. Pure; exported so callers and tests can find a sample in the grid.
 */
export function sampleGridLayout(cell: { width: number; height: number }, labels: readonly string[]): SampleGridLayout {
  const count = labels.length;
  if (count < 1) throw new RangeError('a sample grid needs at least one sample');
  const gap = Math.max(4, Math.round(Math.max(cell.width, cell.height) / 64));
  const width = count * cell.width + (count + 1) * gap;
  const textScale = gridTextScale(width, cell);
  const pad = LABEL_PADDING * textScale;
  const wrapped = labels.map((label) => wrapText(label, cell.width - 2 * pad, textScale, GRID_MAX_LABEL_LINES));
  const lines = Math.max(1, ...wrapped.map((l) => l.length));
  const lineHeight = FONT_METRICS.lineHeight * textScale;
  const titleHeight = lineHeight + 2 * pad;
  const labelHeight = lines * lineHeight + 2 * pad;
  const top = gap + titleHeight + gap;
  return {
    width,
    height: top + cell.height + labelHeight + gap,
    cell: { ...cell },
    cells: Array.from({ length: count }, (_, i) => ({ left: gap + i * (cell.width + gap), top })),
    textScale,
    labels: wrapped,
  };
}

/**
 * One JPEG of an epoch's samples side by side (the run's prompts in order), each labelled under
 * it in full, with a title on top; labels use the built-in bitmap font, sized to stay readable in
 * Discord's preview. The cell takes the first sample's aspect ratio (a run samples every prompt
 * at one size). Kept well under Discord's limits.
 */
export async function makeSampleGrid(tiles: SampleGridTile[], opts: SampleGridOptions): Promise<Buffer> {
  if (tiles.length === 0) throw new RangeError('a sample grid needs at least one sample');
  const maxCell = Math.max(64, Math.min(1024, Math.floor(opts.maxCell ?? 512)));

  return inSlot(async () => {
    const first = await decoder(tiles[0]!.image, { limitInputPixels: false }).metadata();
    const longest = Math.max(first.width, first.height, 1);
    const fit = Math.min(1, maxCell / longest);
    const cell = { width: Math.max(16, Math.round(first.width * fit)), height: Math.max(16, Math.round(first.height * fit)) };
    const layout = sampleGridLayout(
      cell,
      tiles.map((t) => t.label),
    );
    const scale = layout.textScale;
    const text = { scale, colour: GRID_TEXT, background: GRID_BACKGROUND, padding: LABEL_PADDING };

    const overlays: OverlayOptions[] = [];
    const gap = layout.cells[0]!.left;
    const title = renderLabel(opts.title, { ...text, maxWidth: layout.width - 2 * gap, maxLines: 1 });
    overlays.push({ input: title.data, raw: { width: title.width, height: title.height, channels: 4 }, top: gap, left: gap });
    for (let i = 0; i < tiles.length; i++) {
      const at = layout.cells[i]!;
      const sample = await decoder(tiles[i]!.image, { limitInputPixels: 100_000_000, autoOrient: true, pages: 1 })
        .resize(cell.width, cell.height, { fit: 'contain', background: GRID_BACKGROUND, kernel: 'lanczos3' })
        .flatten({ background: GRID_BACKGROUND })
        .toColourspace('srgb')
        .raw({ depth: 'uchar' })
        .toBuffer({ resolveWithObject: true });
      overlays.push({
        input: sample.data,
        raw: { width: sample.info.width, height: sample.info.height, channels: sample.info.channels },
        left: at.left,
        top: at.top,
      });
      // The lines the layout made room for, drawn as they are (no second wrap).
      const badge = renderLabel(layout.labels[i]!.join('\n'), text);
      overlays.push({ input: badge.data, raw: { width: badge.width, height: badge.height, channels: 4 }, left: at.left, top: at.top + cell.height });
    }
    const { width, height } = layout;
    const canvas = await blankCanvas(width, height, GRID_BACKGROUND)
      .composite(overlays)
      .removeAlpha()
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    if (canvas.info.channels !== 3) throw new Error(`media: sample grid has ${canvas.info.channels} channels`);
    return jpegWithin({ data: canvas.data, width, height, channels: 3 }, GRID_MAX_BYTES, [90, 75, 55], `sample grid of ${tiles.length} samples`, {
      chromaSubsampling: '4:4:4',
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Comparison of epochs: each epoch's sample grid as one row, top to bottom (an X/Y plot of
// epochs × prompts); a row's label is drawn above it unless empty (grids carry their own title).

const COMPARISON_MAX_WIDTH = 2048;

export async function stackRows(rows: { image: Buffer; label: string }[]): Promise<Buffer> {
  if (rows.length === 0) throw new RangeError('a comparison needs at least one row');
  return inSlot(async () => {
    const first = await decoder(rows[0]!.image, { limitInputPixels: 100_000_000 }).metadata();
    const width = Math.min(COMPARISON_MAX_WIDTH, Math.max(64, first.width));
    const scale = Math.max(1, Math.round(width / 512));
    const gap = 4 * scale;
    const overlays: OverlayOptions[] = [];
    let top = gap;
    for (const row of rows) {
      if (row.label) {
        const label = renderLabel(row.label, { scale: scale + 1, colour: GRID_TEXT, background: GRID_BACKGROUND, maxWidth: width, maxLines: 1 });
        overlays.push(labelAt(label, gap, top));
        top += label.height + gap;
      }
      const image = await placed(row.image, { width, withoutEnlargement: true }, GRID_BACKGROUND, { left: gap, top });
      overlays.push(image);
      top += image.height + gap;
    }
    return composedJpeg({ width: width + 2 * gap, height: top }, GRID_BACKGROUND, overlays, {
      maxBytes: GRID_MAX_BYTES,
      qualities: [85, 70, 50],
      what: `a comparison of ${rows.length} rows`,
    });
  });
}

// ---------------------------------------------------------------------------------------------
// A picture to judge a caption by: the master, at most PREVIEW_MAX_SIDE on its long side.

export const PREVIEW_MAX_SIDE = 1024;

export async function previewJpeg(path: string, maxSide = PREVIEW_MAX_SIDE): Promise<Buffer> {
  return inSlot(() =>
    decoder(path, { limitInputPixels: 100_000_000 })
      .resize({ width: maxSide, height: maxSide, fit: 'inside', withoutEnlargement: true, kernel: 'lanczos3' })
      .flatten({ background: GRID_BACKGROUND })
      .jpeg({ quality: 88 })
      .toBuffer(),
  );
}

// ---------------------------------------------------------------------------------------------
// Epochs compared for Discord's preview: Discord shows an attachment at most about 550 px wide
// and crops a tall one to a thin strip, so the epochs' grids go side by side (wide, not tall),
// at most EPOCHS_PER_SHEET per image, and as many images as it takes.

export const EPOCHS_PER_SHEET = 4;
/** The widest a cell gets: Discord scales the sheet down to its preview width anyway. */
const SHEET_CELL_MAX_WIDTH = 1024;

/** Columns for `count` cells of `cell` size whose sheet is closest to 16:9 and never taller than wide when it can be. */
export function sheetColumns(count: number, cell: { width: number; height: number }): number {
  let best = 1;
  let bestScore = Infinity;
  for (let cols = 1; cols <= count; cols++) {
    const rows = Math.ceil(count / cols);
    const aspect = (cols * cell.width) / (rows * cell.height);
    const score = Math.abs(Math.log(aspect / (16 / 9))) + (aspect < 1 ? 10 : 0) + (rows * cols - count) * 0.01;
    if (score < bestScore) {
      best = cols;
      bestScore = score;
    }
  }
  return best;
}

/** One epoch's grid on a comparison sheet, with the heading drawn above it (e.g. "Epoch 3"). */
export interface ComparedGrid {
  image: Buffer;
  label: string;
}

/**
 * The epochs' grids, in order, laid out wide on one or more sheets (each a JPEG). Each grid has
 * its heading above it, in a font readable at Discord's preview width: the grids' own prompt
 * labels shrink with the sheet, the headings say which epoch is which.
 */
export async function comparisonSheets(grids: ComparedGrid[], perSheet = EPOCHS_PER_SHEET): Promise<Buffer[]> {
  if (grids.length === 0) throw new RangeError('a comparison needs at least one grid');
  const sheets: Buffer[] = [];
  for (let i = 0; i < grids.length; i += perSheet) sheets.push(await comparisonSheet(grids.slice(i, i + perSheet)));
  return sheets;
}

async function comparisonSheet(grids: ComparedGrid[]): Promise<Buffer> {
  return inSlot(async () => {
    const first = await decoder(grids[0]!.image, { limitInputPixels: 100_000_000 }).metadata();
    const cellWidth = Math.min(SHEET_CELL_MAX_WIDTH, Math.max(64, first.width));
    const cellHeight = Math.max(1, Math.round((first.height * cellWidth) / Math.max(1, first.width)));
    const cols = sheetColumns(grids.length, { width: cellWidth, height: cellHeight });
    const rows = Math.ceil(grids.length / cols);
    const gap = 8;
    const width = gap + cols * (cellWidth + gap);
    const scale = Math.max(1, Math.ceil((READABLE_CAP_HEIGHT * width) / (FONT_METRICS.ascent * DISCORD_PREVIEW_WIDTH)));
    const heading = FONT_METRICS.lineHeight * scale + 2 * LABEL_PADDING * scale;
    const rowHeight = heading + cellHeight + gap;
    const overlays: OverlayOptions[] = [];
    for (const [i, grid] of grids.entries()) {
      const left = gap + (i % cols) * (cellWidth + gap);
      const top = gap + Math.floor(i / cols) * rowHeight;
      const label = renderLabel(grid.label, {
        scale,
        colour: GRID_TEXT,
        background: GRID_BACKGROUND,
        padding: LABEL_PADDING,
        maxWidth: cellWidth,
        maxLines: 1,
      });
      overlays.push(labelAt(label, left, top));
      overlays.push(await placed(grid.image, { width: cellWidth, height: cellHeight, fit: 'contain' }, GRID_BACKGROUND, { left, top: top + heading }));
    }
    return composedJpeg({ width, height: gap + rows * rowHeight }, GRID_BACKGROUND, overlays, {
      maxBytes: GRID_MAX_BYTES,
      qualities: [85, 70, 50],
      what: `a comparison of ${grids.length} epochs`,
    });
  });
}
