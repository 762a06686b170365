/**
 * A tiny built-in 5×7 bitmap font, drawn straight into raw pixel buffers.
 *
 * Labels on contact sheets and sample grids must render on a slim container with no fonts
 * installed (sharp's text input and SVG <text> need fontconfig and a font file). This module is
 * pure: it knows nothing of sharp; callers composite the raw RGBA it returns.
 *
 * Glyphs are 5 px wide; rows 0–6 sit on the baseline, rows 7–8 are descenders (g, j, p, q, y, ",",
 * ";"). Characters outside the set fall back to their unaccented letter (é → e) or to "?".
 */

/** Raw, interleaved 8-bit pixels (RGB or RGBA), row-major, as sharp's `raw` option describes them. */
export interface RawImage {
  data: Buffer;
  width: number;
  height: number;
  channels: 3 | 4;
}

const GLYPH_WIDTH = 5;
const ASCENT = 7;
const DESCENT = 2;
const LETTER_SPACING = 1;
const LINE_GAP = 2;

/** Cell metrics at scale 1, in pixels. */
export const FONT_METRICS = {
  glyphWidth: GLYPH_WIDTH,
  advance: GLYPH_WIDTH + LETTER_SPACING,
  ascent: ASCENT,
  lineHeight: ASCENT + DESCENT + LINE_GAP,
} as const;

// Each glyph: 7 rows (cap height) or 9 rows (with 2 descender rows); '#' is ink.
const GLYPH_ROWS: Record<string, string> = {
  ' ': '..... ..... ..... ..... ..... ..... .....',
  '!': '..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..',
  '"': '.#.#. .#.#. .#.#. ..... ..... ..... .....',
  '#': '.#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.',
  $: '..#.. .#### #.#.. .###. ..#.# ####. ..#..',
  '%': '##... ##..# ...#. ..#.. .#... #..## ...##',
  '&': '.##.. #..#. #.#.. .#... #.#.# #..#. .##.#',
  "'": '..#.. ..#.. ..#.. ..... ..... ..... .....',
  '(': '...#. ..#.. .#... .#... .#... ..#.. ...#.',
  ')': '.#... ..#.. ...#. ...#. ...#. ..#.. .#...',
  '*': '..... ..#.. #.#.# .###. #.#.# ..#.. .....',
  '+': '..... ..#.. ..#.. ##### ..#.. ..#.. .....',
  ',': '..... ..... ..... ..... ..... .##.. .##.. ..#.. .#...',
  '-': '..... ..... ..... ##### ..... ..... .....',
  '.': '..... ..... ..... ..... ..... .##.. .##..',
  '/': '..... ....# ...#. ..#.. .#... #.... .....',
  '0': '.###. #...# #..## #.#.# ##..# #...# .###.',
  '1': '..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.',
  '2': '.###. #...# ....# ...#. ..#.. .#... #####',
  '3': '##### ...#. ..#.. ...#. ....# #...# .###.',
  '4': '...#. ..##. .#.#. #..#. ##### ...#. ...#.',
  '5': '##### #.... ####. ....# ....# #...# .###.',
  '6': '..##. .#... #.... ####. #...# #...# .###.',
  '7': '##### ....# ...#. ..#.. .#... .#... .#...',
  '8': '.###. #...# #...# .###. #...# #...# .###.',
  '9': '.###. #...# #...# .#### ....# ...#. .##..',
  ':': '..... .##.. .##.. ..... .##.. .##.. .....',
  ';': '..... ..... .##.. .##.. ..... .##.. .##.. ..#.. .#...',
  '<': '...#. ..#.. .#... #.... .#... ..#.. ...#.',
  '=': '..... ..... ##### ..... ##### ..... .....',
  '>': '.#... ..#.. ...#. ....# ...#. ..#.. .#...',
  '?': '.###. #...# ....# ...#. ..#.. ..... ..#..',
  '@': '.###. #...# ....# .##.# #.#.# #.#.# .###.',
  A: '.###. #...# #...# ##### #...# #...# #...#',
  B: '####. #...# #...# ####. #...# #...# ####.',
  C: '.###. #...# #.... #.... #.... #...# .###.',
  D: '###.. #..#. #...# #...# #...# #..#. ###..',
  E: '##### #.... #.... ####. #.... #.... #####',
  F: '##### #.... #.... ####. #.... #.... #....',
  G: '.###. #...# #.... #.### #...# #...# .####',
  H: '#...# #...# #...# ##### #...# #...# #...#',
  I: '.###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.',
  J: '..### ...#. ...#. ...#. ...#. #..#. .##..',
  K: '#...# #..#. #.#.. ##... #.#.. #..#. #...#',
  L: '#.... #.... #.... #.... #.... #.... #####',
  M: '#...# ##.## #.#.# #.#.# #...# #...# #...#',
  N: '#...# #...# ##..# #.#.# #..## #...# #...#',
  O: '.###. #...# #...# #...# #...# #...# .###.',
  P: '####. #...# #...# ####. #.... #.... #....',
  Q: '.###. #...# #...# #...# #.#.# #..#. .##.#',
  R: '####. #...# #...# ####. #.#.. #..#. #...#',
  S: '.#### #.... #.... .###. ....# ....# ####.',
  T: '##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..',
  U: '#...# #...# #...# #...# #...# #...# .###.',
  V: '#...# #...# #...# #...# #...# .#.#. ..#..',
  W: '#...# #...# #...# #.#.# #.#.# #.#.# .#.#.',
  X: '#...# #...# .#.#. ..#.. .#.#. #...# #...#',
  Y: '#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..',
  Z: '##### ....# ...#. ..#.. .#... #.... #####',
  '[': '.###. .#... .#... .#... .#... .#... .###.',
  '\\': '..... #.... .#... ..#.. ...#. ....# .....',
  ']': '.###. ...#. ...#. ...#. ...#. ...#. .###.',
  '^': '..#.. .#.#. #...# ..... ..... ..... .....',
  _: '..... ..... ..... ..... ..... ..... #####',
  '`': '.#... ..#.. ...#. ..... ..... ..... .....',
  a: '..... ..... .###. ....# .#### #...# .####',
  b: '#.... #.... #.##. ##..# #...# #...# ####.',
  c: '..... ..... .###. #.... #.... #...# .###.',
  d: '....# ....# .##.# #..## #...# #...# .####',
  e: '..... ..... .###. #...# ##### #.... .###.',
  f: '..##. .#..# .#... ###.. .#... .#... .#...',
  g: '..... ..... .#### #...# #...# #...# .#### ....# .###.',
  h: '#.... #.... #.##. ##..# #...# #...# #...#',
  i: '..#.. ..... .##.. ..#.. ..#.. ..#.. .###.',
  j: '...#. ..... ..##. ...#. ...#. ...#. ...#. #..#. .##..',
  k: '#.... #.... #..#. #.#.. ##... #.#.. #..#.',
  l: '.##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.',
  m: '..... ..... ##.#. #.#.# #.#.# #...# #...#',
  n: '..... ..... #.##. ##..# #...# #...# #...#',
  o: '..... ..... .###. #...# #...# #...# .###.',
  p: '..... ..... ####. #...# #...# #...# ####. #.... #....',
  q: '..... ..... .#### #...# #...# #...# .#### ....# ....#',
  r: '..... ..... #.##. ##..# #.... #.... #....',
  s: '..... ..... .###. #.... .###. ....# ####.',
  t: '.#... .#... ###.. .#... .#... .#..# ..##.',
  u: '..... ..... #...# #...# #...# #..## .##.#',
  v: '..... ..... #...# #...# #...# .#.#. ..#..',
  w: '..... ..... #...# #...# #.#.# #.#.# .#.#.',
  x: '..... ..... #...# .#.#. ..#.. .#.#. #...#',
  y: '..... ..... #...# #...# #...# #...# .#### ....# .###.',
  z: '..... ..... ##### ...#. ..#.. .#... #####',
  '{': '...#. ..#.. ..#.. .#... ..#.. ..#.. ...#.',
  '|': '..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..',
  '}': '.#... ..#.. ..#.. ...#. ..#.. ..#.. .#...',
  '~': '..... ..... .#... #.#.# ...#. ..... .....',
  '×': '..... #...# .#.#. ..#.. .#.#. #...# .....',
  '·': '..... ..... ..... ..#.. ..... ..... .....',
  '–': '..... ..... ..... .###. ..... ..... .....',
  '—': '..... ..... ..... ##### ..... ..... .....',
  '…': '..... ..... ..... ..... ..... ..... #.#.#',
  '°': '.##.. #..#. #..#. .##.. ..... ..... .....',
};

/** Glyph bitmaps: per glyph, a list of [x, y] ink pixels (y from the top of the cell). */
const GLYPHS: ReadonlyMap<string, readonly (readonly [number, number])[]> = new Map(
  Object.entries(GLYPH_ROWS).map(([ch, rows]) => {
    const lines = rows.split(' ');
    if ((lines.length !== ASCENT && lines.length !== ASCENT + DESCENT) || lines.some((l) => l.length !== GLYPH_WIDTH)) {
      throw new Error(`bitmap font: malformed glyph ${JSON.stringify(ch)}`);
    }
    const ink: [number, number][] = [];
    lines.forEach((line, y) => {
      for (let x = 0; x < GLYPH_WIDTH; x++) if (line[x] === '#') ink.push([x, y]);
    });
    return [ch, ink] as const;
  }),
);

/** The characters the font draws as themselves. */
export const FONT_CHARACTERS: string = [...GLYPHS.keys()].join('');

function glyphFor(ch: string): readonly (readonly [number, number])[] {
  const direct = GLYPHS.get(ch);
  if (direct) return direct;
  const base = ch.normalize('NFD').replace(/\p{M}/gu, '');
  return GLYPHS.get(base) ?? GLYPHS.get('?')!;
}

/** Parses '#rgb', '#rrggbb' or '#rrggbbaa' into [r, g, b, a]. */
export function parseHexColour(colour: string): [number, number, number, number] {
  let hex = /^#([0-9a-f]{3}|[0-9a-f]{6}|[0-9a-f]{8})$/i.exec(colour)?.[1];
  if (hex === undefined) throw new RangeError(`not a colour like #rrggbb: ${JSON.stringify(colour)}`);
  if (hex.length === 3) hex = [...hex].map((c) => c + c).join('');
  const n = (i: number) => parseInt(hex.slice(i, i + 2), 16);
  return [n(0), n(2), n(4), hex.length === 8 ? n(6) : 255];
}

/** Width and height in pixels of `text` (lines split on "\n") at `scale`. */
export function measureText(text: string, scale = 1): { width: number; height: number } {
  const lines = text.split('\n');
  const longest = Math.max(...lines.map((l) => [...l].length));
  const width = longest === 0 ? 0 : (longest * FONT_METRICS.advance - LETTER_SPACING) * scale;
  const height = (lines.length * FONT_METRICS.lineHeight - LINE_GAP) * scale;
  return { width, height };
}

/**
 * Word-wraps `text` to lines at most `maxWidth` px wide at `scale`; a word longer than a line is
 * cut. With `maxLines`, the last kept line ends in "…" when text was left out.
 */
export function wrapText(text: string, maxWidth: number, scale = 1, maxLines = Infinity): string[] {
  const perLine = Math.max(1, Math.floor((maxWidth / scale + LETTER_SPACING) / FONT_METRICS.advance));
  const lines: string[] = [];
  for (const paragraph of text.split('\n')) {
    let line = '';
    for (const word of paragraph.split(/\s+/).filter((w) => w.length > 0)) {
      let rest = [...word];
      while (rest.length > 0) {
        const candidate = line === '' ? rest.join('') : `${line} ${rest.join('')}`;
        if ([...candidate].length <= perLine) {
          line = candidate;
          rest = [];
        } else if (line !== '') {
          lines.push(line);
          line = '';
        } else {
          lines.push(rest.slice(0, perLine).join(''));
          rest = rest.slice(perLine);
        }
      }
    }
    lines.push(line);
  }
  if (lines.length <= maxLines) return lines;
  const kept = lines.slice(0, maxLines);
  const last = [...(kept[kept.length - 1] ?? '')];
  kept[kept.length - 1] = (last.length >= perLine ? last.slice(0, perLine - 1) : last).join('') + '…';
  return kept;
}

export interface DrawTextOptions {
  /** Integer pixel scale: each font pixel becomes a scale×scale square (default 1). */
  scale?: number;
  /** Ink colour, '#rrggbb' or '#rrggbbaa' (default white). */
  colour?: string;
}

/**
 * Draws `text` (lines split on "\n") into `target` with its top-left corner at (x, y).
 * Ink is blended over what is there (by the colour's alpha); pixels outside the target are skipped.
 */
export function drawText(target: RawImage, text: string, x: number, y: number, options: DrawTextOptions = {}): void {
  const scale = Math.max(1, Math.floor(options.scale ?? 1));
  const [r, g, b, a] = parseHexColour(options.colour ?? '#ffffff');
  const alpha = a / 255;
  const { data, width, height, channels } = target;
  const plot = (px: number, py: number) => {
    if (px < 0 || py < 0 || px >= width || py >= height) return;
    const i = (py * width + px) * channels;
    data[i] = Math.round(r * alpha + data[i]! * (1 - alpha));
    data[i + 1] = Math.round(g * alpha + data[i + 1]! * (1 - alpha));
    data[i + 2] = Math.round(b * alpha + data[i + 2]! * (1 - alpha));
    if (channels === 4) data[i + 3] = Math.round(255 * alpha + data[i + 3]! * (1 - alpha));
  };
  text.split('\n').forEach((line, row) => {
    let cx = x;
    const cy = y + row * FONT_METRICS.lineHeight * scale;
    for (const ch of line) {
      for (const [gx, gy] of glyphFor(ch)) {
        for (let sy = 0; sy < scale; sy++) for (let sx = 0; sx < scale; sx++) plot(cx + gx * scale + sx, cy + gy * scale + sy);
      }
      cx += FONT_METRICS.advance * scale;
    }
  });
}

export interface LabelOptions extends DrawTextOptions {
  /** Fill behind the text, '#rrggbb' or '#rrggbbaa' (default translucent black). */
  background?: string;
  /** Space around the text, in font pixels (default 2, scaled with the text). */
  padding?: number;
  /** Wrap to at most this many pixels wide (padding included). */
  maxWidth?: number;
  /** With `maxWidth`, keep at most this many lines (the last ends in "…"). */
  maxLines?: number;
}

/**
 * Renders `text` as a standalone RGBA label: a filled box with the text inside, ready to composite
 * (sharp: `{ input: label.data, raw: { width, height, channels: 4 } }`).
 */
export function renderLabel(text: string, options: LabelOptions = {}): RawImage {
  const scale = Math.max(1, Math.floor(options.scale ?? 1));
  const pad = Math.max(0, Math.floor(options.padding ?? 2)) * scale;
  const lines =
    options.maxWidth === undefined ? text.split('\n') : wrapText(text, Math.max(1, options.maxWidth - 2 * pad), scale, options.maxLines ?? Infinity);
  const body = lines.join('\n');
  const size = measureText(body, scale);
  const width = Math.max(1, size.width + 2 * pad);
  const height = Math.max(1, size.height + 2 * pad);
  const [br, bg, bb, ba] = parseHexColour(options.background ?? '#000000b0');
  const data = Buffer.alloc(width * height * 4);
  for (let i = 0; i < data.length; i += 4) {
    data[i] = br;
    data[i + 1] = bg;
    data[i + 2] = bb;
    data[i + 3] = ba;
  }
  const label: RawImage = { data, width, height, channels: 4 };
  drawText(label, body, pad, pad, { scale, colour: options.colour ?? '#ffffff' });
  return label;
}
