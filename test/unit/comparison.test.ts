import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { comparisonSheets, DISCORD_PREVIEW_WIDTH, sheetColumns, stackRows } from '../../src/core/image-sheets.ts';

const solid = (r: number, g: number, b: number, width = 300, height = 100) =>
  sharp({ create: { width, height, channels: 3, background: { r, g, b } } })
    .png()
    .toBuffer();

describe('epoch comparison', () => {
  it('stacks each epoch’s grid as a labelled row, first epoch on top', async () => {
    const jpeg = await stackRows([
      { image: await solid(255, 0, 0), label: 'epoch 1' },
      { image: await solid(0, 0, 255), label: 'epoch 2' },
    ]);
    const { data, info } = await sharp(jpeg).raw().toBuffer({ resolveWithObject: true });
    expect(info.width).toBeGreaterThanOrEqual(300);
    expect(info.height).toBeGreaterThan(200);
    const at = (x: number, y: number) => [...data.subarray((y * info.width + x) * 3, (y * info.width + x) * 3 + 3)];
    // Probe the middle of each row's picture: the red row above the blue one.
    const column = Array.from({ length: info.height }, (_, y) => at(Math.floor(info.width / 2), y));
    const firstRed = column.findIndex(([r, g, b]) => r! > 200 && g! < 60 && b! < 60);
    const firstBlue = column.findIndex(([r, g, b]) => b! > 200 && r! < 60 && g! < 60);
    expect(firstRed).toBeGreaterThan(0);
    expect(firstBlue).toBeGreaterThan(firstRed + 100);
  });

  it('refuses an empty comparison', async () => {
    await expect(stackRows([])).rejects.toThrow(RangeError);
  });
});

describe('epochs compared for Discord’s preview', () => {
  it('puts three tall epoch grids side by side: the sheet is wider than tall, epochs left to right', async () => {
    // The shape of a real epoch grid: 1071×629 (three prompts with their labels).
    const grids = [await solid(255, 0, 0, 1071, 629), await solid(0, 200, 0, 1071, 629), await solid(0, 0, 255, 1071, 629)];
    const [sheet, ...more] = await comparisonSheets(grids.map((image, i) => ({ image, label: `Epoch ${i + 1}` })));
    expect(more).toEqual([]);
    const { data, info } = await sharp(sheet).raw().toBuffer({ resolveWithObject: true });
    expect(info.width).toBeGreaterThan(info.height);
    // Epochs in reading order: red, then green, then blue.
    const first = (test: (r: number, g: number, b: number) => boolean) => {
      for (let i = 0; i < data.length; i += 3) if (test(data[i]!, data[i + 1]!, data[i + 2]!)) return i / 3;
      return -1;
    };
    const red = first((r, g, b) => r > 200 && g < 60 && b < 60);
    const green = first((r, g, b) => g > 150 && r < 60 && b < 60);
    const blue = first((r, g, b) => b > 200 && r < 60 && g < 60);
    expect(red).toBeGreaterThanOrEqual(0);
    expect(green).toBeGreaterThan(red);
    expect(blue).toBeGreaterThan(green);
    // Side by side: green starts on the first cell's top line.
    expect(Math.floor(green / info.width)).toBe(Math.floor(red / info.width));
  });

  it('spreads many epochs over several images, a few per image', async () => {
    const grids = await Promise.all(Array.from({ length: 10 }, (_, i) => solid(20 * i, 100, 100, 600, 400)));
    const sheets = await comparisonSheets(grids.map((image, i) => ({ image, label: `Epoch ${i + 1}` })));
    expect(sheets).toHaveLength(3);
    for (const sheet of sheets) {
      const meta = await sharp(sheet).metadata();
      expect(meta.width).toBeGreaterThanOrEqual(meta.height);
    }
  });

  it("heads each epoch's grid with its name, readable at Discord's preview width", async () => {
    // Four real-sized grids of black: the only light pixels are the headings' letters.
    const grids = await Promise.all([1, 2, 3, 4].map(async (e) => ({ image: await solid(0, 0, 0, 1071, 629), label: `Epoch ${e}` })));
    const [sheet] = await comparisonSheets(grids);
    const { data, info } = await sharp(sheet).greyscale().raw().toBuffer({ resolveWithObject: true });
    const litRows: number[] = [];
    const litColumns = new Set<number>();
    for (let y = 0; y < info.height; y++) {
      for (let x = 0; x < info.width; x++) {
        if (data[y * info.width + x]! > 160) {
          litRows.push(y);
          litColumns.add(x < info.width / 2 ? 0 : 1);
        }
      }
    }
    // Headings over both halves of the sheet (two epochs a row, or four side by side).
    expect(litColumns).toEqual(new Set([0, 1]));
    // The first heading's capitals ("E") are at least 6 px tall once the sheet is scaled to 550 px.
    const top = Math.min(...litRows);
    let bottom = top;
    while (litRows.includes(bottom + 1)) bottom++;
    expect(((bottom - top + 1) * DISCORD_PREVIEW_WIDTH) / info.width).toBeGreaterThanOrEqual(6);
  });

  it('picks columns that keep a sheet wide', () => {
    expect(sheetColumns(1, { width: 1071, height: 629 })).toBe(1);
    expect(sheetColumns(2, { width: 1071, height: 629 })).toBe(2);
    expect(sheetColumns(4, { width: 1071, height: 629 })).toBeGreaterThanOrEqual(2);
    expect(sheetColumns(4, { width: 400, height: 1200 })).toBe(4);
  });
});
