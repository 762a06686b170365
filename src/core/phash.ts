/**
 * DCT perceptual hash (pHash), pure: 32×32 greyscale pixels in, 64 bits (16 hex chars) out.
 *
 * The 2-D DCT-II of the 32×32 image is taken; the 8×8 lowest frequencies, skipping the DC row and
 * column (u, v = 1..8), are compared with their median: bit = coefficient > median. Re-encoding,
 * mild resizing, or small colour shifts move few of these coefficients across the median, so a
 * re-saved copy lands within a few bits while different pictures differ in about half of them.
 * The caller (media.ts) produces the 32×32 input with sharp.
 */

export const PHASH_SIZE = 32;
const LOW = 8;

/** Default Hamming distance at or below which two images count as near-duplicates. */
export const NEAR_DUPLICATE_DISTANCE = 6;

// COS[u][x] = cos((2x + 1) u π / 64) for u = 0..8; only these rows of the DCT are ever needed.
const COS: Float64Array[] = Array.from({ length: LOW + 1 }, (_, u) => {
  const row = new Float64Array(PHASH_SIZE);
  for (let x = 0; x < PHASH_SIZE; x++) row[x] = Math.cos(((2 * x + 1) * u * Math.PI) / (2 * PHASH_SIZE));
  return row;
});

/**
 * pHash of 32×32 8-bit greyscale pixels (row-major, 1024 bytes).
 * @returns 16 lowercase hex characters; the first is the most significant nibble.
 */
export function phashFromGrey32(pixels: Uint8Array): string {
  const n = PHASH_SIZE;
  if (pixels.length !== n * n) throw new RangeError(`phash needs ${n}×${n} grey pixels, got ${pixels.length} bytes`);

  // Separable DCT: rows first (only frequencies 1..8 are kept), then columns.
  const rowDct = new Float64Array(n * LOW); // [y][u-1]
  for (let y = 0; y < n; y++) {
    for (let u = 1; u <= LOW; u++) {
      const cos = COS[u]!;
      let sum = 0;
      for (let x = 0; x < n; x++) sum += pixels[y * n + x]! * cos[x]!;
      rowDct[y * LOW + (u - 1)] = sum;
    }
  }
  const coeffs = new Float64Array(LOW * LOW); // [v-1][u-1]
  for (let v = 1; v <= LOW; v++) {
    const cos = COS[v]!;
    for (let u = 0; u < LOW; u++) {
      let sum = 0;
      for (let y = 0; y < n; y++) sum += rowDct[y * LOW + u]! * cos[y]!;
      coeffs[(v - 1) * LOW + u] = sum;
    }
  }

  const sorted = Float64Array.from(coeffs).sort();
  const median = (sorted[31]! + sorted[32]!) / 2;
  let hex = '';
  for (let nibble = 0; nibble < 16; nibble++) {
    let value = 0;
    for (let bit = 0; bit < 4; bit++) value = (value << 1) | (coeffs[nibble * 4 + bit]! > median ? 1 : 0);
    hex += value.toString(16);
  }
  return hex;
}

const HEX64 = /^[0-9a-f]{16}$/i;

/** Number of differing bits between two 16-hex-char hashes (0–64). */
export function hammingDistance(a: string, b: string): number {
  if (!HEX64.test(a) || !HEX64.test(b)) throw new RangeError('a perceptual hash is 16 hex characters');
  let distance = 0;
  for (let i = 0; i < 16; i += 8) {
    let x = (parseInt(a.slice(i, i + 8), 16) ^ parseInt(b.slice(i, i + 8), 16)) >>> 0;
    while (x !== 0) {
      x &= x - 1;
      distance++;
    }
  }
  return distance;
}

/**
 * Of the `known` hashes (by image number), the closest one within `maxDistance` bits of `phash`
 * (the first of equally close ones), or null when none is that close.
 */
export function nearestDuplicate(phash: string, known: ReadonlyMap<number, string>, maxDistance: number): number | null {
  let best: number | null = null;
  let bestDistance = Infinity;
  for (const [no, other] of known) {
    const d = hammingDistance(phash, other);
    if (d <= maxDistance && d < bestDistance) {
      best = no;
      bestDistance = d;
    }
  }
  return best;
}
