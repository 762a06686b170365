/**
 * The folder layout the guides teach for sd-scripts (`img/10_name/*.png`, captions beside the
 * images): each `<repeats>_<name>` folder is a concept trained `repeats` times per epoch. Reading a
 * zip's folders here turns such a dataset into our concepts as it is. Pure: folder names in, a
 * reading out, with a short line for the contributor about every folder.
 */
import { parse as parseToml } from 'smol-toml';
import { z } from 'zod';
import { CONCEPT_NAME, validateTrigger } from './dataset-rules.ts';

/** The most repeats a folder may ask for (the plan's own limit for fixed repeats). */
export const MAX_FOLDER_REPEATS = 1000;

const FOLDER = /^(\d+)_(.+)$/;
/** sd-scripts' regularisation images sit beside `img/` in a folder of this name (the guides' `reg/`). */
const REGULARISATION = /^(reg|regs|regularization|regularisation|reg_images?)$/i;

export interface KohyaFolder {
  /** The folder's path inside the zip, for display. */
  path: string;
  concept: string;
  repeats: number;
  /** The concept's own trigger, when the dataset.toml that came with the folder names one. */
  trigger?: string;
}

export interface LayoutReading {
  /** Per image (in the order given): the folder it belongs to, or null for the concept the upload named. */
  folders: (KohyaFolder | null)[];
  /** Per image: true when it is a regularisation image, which is not taken. */
  regularisation: boolean[];
  /** One entry per distinct folder recognised, in first-seen order. */
  recognised: KohyaFolder[];
  /** Folders that look like `N_name` but cannot be used, each with why (for the contributor). */
  problems: string[];
}

/** The concept name a folder's name part stands for: lower case, spaces as `-`; null when it can't be one. */
export function conceptNameFromFolder(namePart: string): string | null {
  const name = namePart.trim().toLowerCase().replace(/\s+/g, '-');
  return CONCEPT_NAME.test(name) ? name : null;
}

/**
 * Reads the layout from each image's folders (outermost first). Null when no image sits in a
 * `<repeats>_<name>` folder: an ordinary zip, whose images all go to the concept the upload named.
 */
export function readKohyaLayout(imageFolders: readonly (readonly string[])[]): LayoutReading | null {
  const byPath = new Map<string, KohyaFolder | string>();
  const folders: (KohyaFolder | null)[] = [];
  const regularisation: boolean[] = [];
  let anyFolder = false;

  for (const path of imageFolders) {
    const parent = path.at(-1);
    const match = parent === undefined ? null : FOLDER.exec(parent);
    const isReg = match !== null && path.slice(0, -1).some((s) => REGULARISATION.test(s));
    regularisation.push(isReg);
    if (match === null || isReg) {
      folders.push(null);
      if (isReg) anyFolder = true;
      continue;
    }
    anyFolder = true;
    const display = path.join('/');
    let reading = byPath.get(display);
    if (reading === undefined) {
      const [, digits = '', namePart = ''] = match;
      const repeats = Number(digits);
      const concept = conceptNameFromFolder(namePart);
      if (!(repeats >= 1 && repeats <= MAX_FOLDER_REPEATS)) {
        reading = `folder \`${display}\`: ${digits} repeats is not between 1 and ${MAX_FOLDER_REPEATS}`;
      } else if (concept === null) {
        reading = `folder \`${display}\`: \`${namePart.slice(0, 40)}\` can't be a concept name (letters, digits, \`-\` and \`_\`, up to 32)`;
      } else {
        reading = { path: display, concept, repeats };
      }
      byPath.set(display, reading);
    }
    folders.push(typeof reading === 'string' ? null : reading);
  }
  if (!anyFolder) return null;

  const recognised: KohyaFolder[] = [];
  const problems: string[] = [];
  for (const reading of byPath.values()) {
    if (typeof reading === 'string') problems.push(reading);
    else recognised.push(reading);
  }
  return { folders, regularisation, recognised, problems };
}

/**
 * The own trigger of each concept folder, read from the `dataset.toml` that came with it: a subset
 * whose `keep_tokens` is 2 or more keeps its captions' first tags in front, the dataset's trigger
 * and then the concept's, as its `class_tokens` start. So a subset with `keep_tokens = 2` and
 * `class_tokens = "ohwx_aria, blue outfit, woman"` gives its folder the trigger `blue outfit`.
 * Keyed by the folder's name (`3_outfit-blue`); what does not parse, or reads otherwise, is left out.
 */
export function conceptTriggersFromToml(text: string): Map<string, string> {
  const triggers = new Map<string, string>();
  let doc: unknown;
  try {
    doc = parseToml(text);
  } catch {
    return triggers;
  }
  const parsed = DatasetTomlSchema.safeParse(doc);
  if (!parsed.success) return triggers;
  const generalKeep = parsed.data.general?.keep_tokens;
  for (const dataset of parsed.data.datasets ?? []) {
    for (const subset of dataset.subsets ?? []) {
      const folder = subset.image_dir.split(/[\\/]/).filter(Boolean).at(-1);
      const keep = subset.keep_tokens ?? dataset.keep_tokens ?? generalKeep ?? 0;
      if (!folder || !FOLDER.test(folder) || keep < 2 || !subset.class_tokens) continue;
      const own = subset.class_tokens.split(',')[1]?.trim();
      try {
        if (own) triggers.set(folder, validateTrigger(own));
      } catch {
        // Not a trigger we could take: the concept comes without one.
      }
    }
  }
  return triggers;
}

const KeepTokens = z.number().int().min(0).max(100);
const DatasetTomlSchema = z.object({
  general: z.object({ keep_tokens: KeepTokens.optional() }).loose().optional(),
  datasets: z
    .array(
      z
        .object({
          keep_tokens: KeepTokens.optional(),
          subsets: z.array(z.object({ image_dir: z.string(), keep_tokens: KeepTokens.optional(), class_tokens: z.string().optional() }).loose()).optional(),
        })
        .loose(),
    )
    .optional(),
});
