import sharp from 'sharp';
import { describe, expect, it } from 'vitest';
import { stackRows } from '../../src/core/image-sheets.ts';

const solid = (r: number, g: number, b: number, width = 300, height = 100) =>
  sharp({ create: { width, height, channels: 3, background: { r, g, b } } }).png().toBuffer();

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
