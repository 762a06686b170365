import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { FONT_METRICS, measureText } from '../../src/core/bitmap-font.ts';
import { DISCORD_PREVIEW_WIDTH, makeSampleGrid, sampleGridLayout } from '../../src/core/image-sheets.ts';
import { photoRgb } from '../fixtures/images.ts';

type Rgb = [number, number, number];

const solid = (width: number, height: number, [r, g, b]: Rgb) =>
  sharp({ create: { width, height, channels: 3, background: { r, g, b } } })
    .png()
    .toBuffer();

async function decode(jpeg: Buffer) {
  const { data, info } = await sharp(jpeg).raw().toBuffer({ resolveWithObject: true });
  const at = (x: number, y: number): Rgb => {
    const i = (y * info.width + x) * info.channels;
    return [data[i]!, data[i + 1]!, data[i + 2]!];
  };
  return { info, at };
}

const near = (a: Rgb, b: Rgb, tolerance = 14) => a.every((v, i) => Math.abs(v - b[i]!) <= tolerance);

describe('makeSampleGrid', () => {
  it('puts the samples side by side in prompt order, at the layout it announces, as a JPEG', async () => {
    const colours: Rgb[] = [
      [220, 40, 40],
      [40, 200, 60],
      [50, 80, 230],
    ];
    const tiles = await Promise.all(colours.map(async (c, i) => ({ image: await solid(128, 192, c), label: `#${i + 1} prompt ${i + 1}` })));
    const jpeg = await makeSampleGrid(tiles, { title: 'zkchar - epoch 2/3' });
    const meta = await sharp(jpeg).metadata();
    expect(meta.format).toBe('jpeg');

    const layout = sampleGridLayout(
      { width: 128, height: 192 },
      tiles.map((t) => t.label),
    );
    expect(layout.cell).toEqual({ width: 128, height: 192 });
    expect([meta.width, meta.height]).toEqual([layout.width, layout.height]);

    const { at } = await decode(jpeg);
    const background = at(1, layout.height - 1);
    for (const [i, cell] of layout.cells.entries()) {
      // The middle of each cell is its sample; the cells are left to right in the order given.
      expect(near(at(cell.left + 64, cell.top + 96), colours[i]!)).toBe(true);
      // Under each cell, the label: some light (text) pixels on the dark background.
      let ink = 0;
      for (let y = cell.top + 192; y < cell.top + 192 + 20; y++) {
        for (let x = cell.left; x < cell.left + 128; x++) if (at(x, y)[0] > 180) ink++;
      }
      expect(ink).toBeGreaterThan(20);
    }
    // The title sits above the cells.
    let titleInk = 0;
    for (let y = 0; y < layout.cells[0]!.top; y++) for (let x = 0; x < layout.width; x++) if (at(x, y)[0] > 180) titleInk++;
    expect(titleInk).toBeGreaterThan(40);
    expect(background[0]).toBeLessThan(60);
  });

  it('scales big samples down to the cell size, keeping their aspect ratio', async () => {
    const tiles = await Promise.all([0, 1].map(async (i) => ({ image: await solid(1024, 1536, [200, 200 - i * 100, 50]), label: `#${i + 1}` })));
    const jpeg = await makeSampleGrid(tiles, { title: 'big', maxCell: 512 });
    const layout = sampleGridLayout(
      { width: 341, height: 512 },
      tiles.map((t) => t.label),
    );
    const meta = await sharp(jpeg).metadata();
    expect([meta.width, meta.height]).toEqual([layout.width, layout.height]);
    expect(layout.textScale).toBe(2);
  });

  it('keeps a grid of four detailed 1024 px samples well under 8 MiB', async () => {
    const tiles = await Promise.all(
      [0, 1, 2, 3].map(async (i) => {
        const img = photoRgb(500 + i, 1024, 1024);
        return {
          image: await sharp(img.data, { raw: { width: 1024, height: 1024, channels: 3 } })
            .png()
            .toBuffer(),
          label: `#${i + 1} a long prompt text that has to be cut somewhere because it does not fit`,
        };
      }),
    );
    const jpeg = await makeSampleGrid(tiles, { title: 'four prompts' });
    expect(jpeg.length).toBeLessThan(4 * 1024 * 1024);
    const meta = await sharp(jpeg).metadata();
    expect(meta.width).toBe(
      sampleGridLayout(
        { width: 512, height: 512 },
        tiles.map((t) => t.label),
      ).width,
    );
  });

  it("writes a long prompt under its sample in full, on as many lines as it takes, in a font readable in Discord's preview", async () => {
    const labels = [
      '#1 ohwx_hero, portrait',
      '#2 ohwx_hero, 1girl, solo, red dress, long hair, standing in a sunny park, looking at viewer, smile, cherry blossoms, detailed background',
      '#3 ohwx_hero, 1girl, sitting on a bench',
      '#4 ohwx_hero, night city',
    ];
    const tiles = await Promise.all(labels.map(async (label, i) => ({ image: await solid(512, 512, [30 + 20 * i, 40, 70]), label })));
    const jpeg = await makeSampleGrid(tiles, { title: 'hero - epoch 3/8' });
    const layout = sampleGridLayout({ width: 512, height: 512 }, labels);
    const meta = await sharp(jpeg).metadata();
    expect([meta.width, meta.height]).toEqual([layout.width, layout.height]);

    // Every word of every prompt is there, none cut off or ended with "…", and each line fits its cell.
    const pad = 2 * layout.textScale;
    for (const [i, lines] of layout.labels.entries()) {
      expect(lines.join(' ')).toBe(labels[i]);
      for (const line of lines) expect(measureText(line, layout.textScale).width).toBeLessThanOrEqual(512 - 2 * pad);
    }
    expect(layout.labels[1]!.length).toBeGreaterThan(2);
    // Scaled down to Discord's preview width, a capital letter is still at least 6 px tall.
    expect((FONT_METRICS.ascent * layout.textScale * DISCORD_PREVIEW_WIDTH) / layout.width).toBeGreaterThanOrEqual(6);

    // Drawn: ink on every line of the long label, under its own cell, and nothing below the last line.
    const { at } = await decode(jpeg);
    const cell = layout.cells[1]!;
    const lineHeight = FONT_METRICS.lineHeight * layout.textScale;
    const inkIn = (top: number, bottom: number, left: number, right: number) => {
      let ink = 0;
      for (let y = top; y < bottom; y++) for (let x = left; x < right; x++) if (at(x, y)[0] > 180) ink++;
      return ink;
    };
    const labelTop = cell.top + 512 + pad;
    for (let k = 0; k < layout.labels[1]!.length; k++) {
      const top = labelTop + k * lineHeight;
      expect(inkIn(top, top + FONT_METRICS.ascent * layout.textScale, cell.left, cell.left + 512), `line ${k + 1}`).toBeGreaterThan(100);
    }
    expect(inkIn(labelTop + layout.labels[1]!.length * lineHeight, layout.height, 0, layout.width)).toBe(0);
  });

  it('refuses no samples and samples that are cut short', async () => {
    await expect(makeSampleGrid([], { title: 'x' })).rejects.toThrow(RangeError);
    const png = await solid(128, 128, [10, 20, 30]);
    const cut = png.subarray(0, Math.floor(png.length / 2));
    await expect(
      makeSampleGrid(
        [
          { image: png, label: '#1' },
          { image: cut, label: '#2' },
        ],
        { title: 'x' },
      ),
    ).rejects.toThrow();
  });
});
