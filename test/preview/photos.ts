/**
 * Pictures for the preview, generated (nothing is downloaded): portraits in scenes, drawn as SVG
 * with a sky, a sun, hills and a figure, softened and given sensor grain, in the sizes and
 * orientations members upload. Plus what intake must handle: an EXIF-rotated photo, a transparent
 * cut-out, a file cut short, an exact copy, and a zip with captions beside its images.
 */
import sharp, { type OutputInfo } from 'sharp';
import { seededRandom, type ImageFile } from '../fixtures/images.ts';
import { buildZip } from '../fixtures/zip.ts';

const SKIES: [string, string][] = [
  ['#1d3b6e', '#f2a65a'],
  ['#5aa9e6', '#d8ecf7'],
  ['#2b1740', '#e05d5d'],
  ['#87b8d8', '#f5e6c8'],
  ['#0f2027', '#4a7a8c'],
  ['#f6d365', '#fda085'],
];
const GROUNDS = ['#2e4a2b', '#4b6b3a', '#6b5b3a', '#3a4e5e', '#5c3a2e', '#2f3b2a'];
const SKIN = ['#f1c27d', '#e0ac69', '#c68642', '#8d5524', '#ffdbac'];
const HAIR = ['#2c1b10', '#6a4e23', '#b55239', '#e6c15a', '#111111', '#7b7b7b'];
const CLOTHES = ['#b03a2e', '#1f618d', '#f4d03f', '#27ae60', '#8e44ad', '#ecf0f1', '#212f3d'];

function pick<T>(list: readonly T[], rnd: () => number): T {
  return list[Math.floor(rnd() * list.length)]!;
}

function sceneSvg(seed: number, w: number, h: number): string {
  const rnd = seededRandom(seed);
  const [top, bottom] = pick(SKIES, rnd);
  const horizon = h * (0.55 + rnd() * 0.15);
  const hills = Array.from({ length: 3 }, (_, i) => {
    const y = horizon + i * h * 0.07;
    const c1 = y - h * (0.05 + rnd() * 0.12);
    const c2 = y - h * (0.02 + rnd() * 0.1);
    return `<path d="M0 ${y} C ${w * 0.3} ${c1}, ${w * 0.6} ${c2}, ${w} ${y} L ${w} ${h} L 0 ${h} Z" fill="${pick(GROUNDS, rnd)}" opacity="${0.7 + i * 0.1}"/>`;
  }).join('');
  const sun = `<circle cx="${w * (0.1 + rnd() * 0.8)}" cy="${horizon * (0.2 + rnd() * 0.5)}" r="${Math.min(w, h) * (0.04 + rnd() * 0.05)}" fill="#fff6d5" opacity="0.85"/>`;
  const bokeh = Array.from(
    { length: 6 },
    () => `<circle cx="${rnd() * w}" cy="${rnd() * horizon}" r="${Math.min(w, h) * (0.01 + rnd() * 0.03)}" fill="#ffffff" opacity="${0.08 + rnd() * 0.15}"/>`,
  ).join('');
  // The figure: shoulders, neck, head and hair, a little off centre, as people frame themselves.
  const s = Math.min(w, h);
  const cx = w * (0.4 + rnd() * 0.2);
  const headR = s * (0.09 + rnd() * 0.04);
  const headY = h - headR * 4.2;
  const skin = pick(SKIN, rnd);
  const hair = pick(HAIR, rnd);
  const long = rnd() < 0.6;
  const figure = [
    `<ellipse cx="${cx}" cy="${h + headR * 0.6}" rx="${headR * 2.6}" ry="${headR * 2.6}" fill="${pick(CLOTHES, rnd)}"/>`,
    long ? `<rect x="${cx - headR * 1.15}" y="${headY - headR * 0.2}" width="${headR * 2.3}" height="${headR * 3}" rx="${headR}" fill="${hair}"/>` : '',
    `<rect x="${cx - headR * 0.35}" y="${headY + headR * 0.6}" width="${headR * 0.7}" height="${headR * 1.4}" fill="${skin}"/>`,
    `<ellipse cx="${cx}" cy="${headY}" rx="${headR * 0.85}" ry="${headR}" fill="${skin}"/>`,
    `<path d="M ${cx - headR * 0.95} ${headY} A ${headR} ${headR * 1.05} 0 0 1 ${cx + headR * 0.95} ${headY} Q ${cx} ${headY - headR * 0.5} ${cx - headR * 0.95} ${headY} Z" fill="${hair}"/>`,
    `<circle cx="${cx - headR * 0.3}" cy="${headY}" r="${headR * 0.07}" fill="#222"/>`,
    `<circle cx="${cx + headR * 0.3}" cy="${headY}" r="${headR * 0.07}" fill="#222"/>`,
    `<path d="M ${cx - headR * 0.3} ${headY + headR * 0.45} Q ${cx} ${headY + headR * 0.65} ${cx + headR * 0.3} ${headY + headR * 0.45}" stroke="#8a3b3b" stroke-width="${headR * 0.06}" fill="none"/>`,
  ].join('');
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}"><defs><linearGradient id="sky" x1="0" y1="0" x2="0" y2="1"><stop offset="0" stop-color="${top}"/><stop offset="1" stop-color="${bottom}"/></linearGradient></defs><rect width="${w}" height="${h}" fill="url(#sky)"/>${sun}${bokeh}${hills}${figure}</svg>`;
}

/** Raw RGB of a scene, softened as a lens would and with grain as a sensor would. */
async function sceneRaw(seed: number, w: number, h: number): Promise<{ data: Buffer; info: OutputInfo }> {
  const { data, info } = await sharp(Buffer.from(sceneSvg(seed, w, h)))
    .blur(Math.max(0.4, Math.min(w, h) / 900))
    .removeAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });
  const rnd = seededRandom(seed * 7 + 1);
  for (let i = 0; i < data.length; i += 3) {
    const n = (rnd() - 0.5) * 14;
    for (let c = 0; c < 3; c++) data[i + c] = Math.max(0, Math.min(255, data[i + c]! + n));
  }
  return { data, info };
}

export async function scenePhoto(seed: number, w: number, h: number, name: string): Promise<ImageFile> {
  const { data, info } = await sceneRaw(seed, w, h);
  const jpeg = await sharp(data, { raw: { width: info.width, height: info.height, channels: 3 } })
    .jpeg({ quality: 86 })
    .toBuffer();
  return { name, data: jpeg, contentType: 'image/jpeg' };
}

/** Stored on its side with EXIF orientation 6, as phones write; intake must turn it upright. */
async function rotatedPhoto(seed: number, name: string): Promise<ImageFile> {
  const { data, info } = await sceneRaw(seed, 1600, 1200);
  const jpeg = await sharp(data, { raw: { width: info.width, height: info.height, channels: 3 } })
    .rotate(-90)
    .jpeg({ quality: 86 })
    .withMetadata({ orientation: 6 })
    .toBuffer();
  return { name, data: jpeg, contentType: 'image/jpeg' };
}

/** A cut-out PNG: the figure's scene inside an ellipse, transparent around it. */
async function cutout(seed: number, name: string): Promise<ImageFile> {
  const w = 900;
  const h = 1100;
  const { data, info } = await sceneRaw(seed, w, h);
  const mask = Buffer.from(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${w}" height="${h}"><ellipse cx="${w / 2}" cy="${h / 2}" rx="${w * 0.42}" ry="${h * 0.46}" fill="#fff"/></svg>`,
  );
  const alpha = await sharp(mask).extractChannel(3).raw().toBuffer();
  const png = await sharp(data, { raw: { width: info.width, height: info.height, channels: 3 } })
    .joinChannel(alpha, { raw: { width: w, height: h, channels: 1 } })
    .png()
    .toBuffer();
  return { name, data: png, contentType: 'image/png' };
}

export interface PreviewUploads {
  /** Mira's ten: phone photos in both orientations, a rotated one, a cut-out. */
  mira: ImageFile[];
  /** Jonas's post: six photos, one file cut short, one exact copy of Mira's fourth. */
  jonas: ImageFile[];
  /** Jonas's zip: four photos, two with a caption beside them, and a Mac's junk. */
  zip: ImageFile;
  /** One photo for the mistyped command. */
  stray: ImageFile;
}

export async function previewUploads(): Promise<PreviewUploads> {
  const sizes: [number, number][] = [
    [1200, 1600],
    [1600, 1200],
    [1080, 1080],
    [1920, 1080],
    [900, 1350],
    [1365, 2048],
    [1280, 960],
    [1024, 1280],
  ];
  const mira = await Promise.all(sizes.map(([w, h], i) => scenePhoto(10 + i, w, h, `IMG_20${41 + i}.jpg`)));
  mira.push(await rotatedPhoto(30, 'IMG_2049.jpg'), await cutout(31, 'aurora-cutout.png'));
  const jonasSizes: [number, number][] = [
    [1536, 2048],
    [2048, 1536],
    [1200, 1200],
    [1080, 1920],
    [1600, 1067],
    [960, 1280],
  ];
  const jonas = await Promise.all(jonasSizes.map(([w, h], i) => scenePhoto(40 + i, w, h, `PXL_2024${String(i + 1).padStart(2, '0')}.jpg`)));
  const whole = await scenePhoto(50, 1200, 1600, 'PXL_202407.jpg');
  jonas.push({ ...whole, data: whole.data.subarray(0, Math.floor(whole.data.length * 0.4)) });
  jonas.push({ ...mira[3]!, name: 'from-mira.jpg' });
  const zipped = await Promise.all([0, 1, 2, 3].map((i) => scenePhoto(60 + i, i % 2 ? 1024 : 768, i % 2 ? 768 : 1024, `beach_${i + 1}.jpg`)));
  const zip = buildZip([
    ...zipped.map((f) => ({ name: `beach/${f.name}`, data: f.data })),
    { name: 'beach/beach_1.txt', data: 'ohwx_aurora, beach, sunset, looking at viewer\n' },
    { name: 'beach/beach_2.txt', data: 'ohwx_aurora, beach, wind, hair blowing\n' },
    { name: '__MACOSX/beach/._beach_1.jpg', data: 'junk' },
    { name: 'beach/.DS_Store', data: 'junk' },
  ]);
  return { mira, jonas, zip: { name: 'beach-day.zip', data: zip, contentType: 'application/zip' }, stray: await scenePhoto(70, 1000, 1000, 'IMG_2100.jpg') };
}
