/**
 * A dataset as the trainer reads it: its concepts with their images and the caption each image's
 * `.txt` holds (triggers first, then tags or sentence, as the dataset's caption mode says). One
 * function, so that a run and a dataset export give the trainer the same thing.
 */
import { composeForMode, type CaptionMode } from '../core/caption-text.ts';
import type { PlanConceptInput } from '../core/plan.ts';
import { composeCaption } from '../core/tag-ops.ts';
import { sentenceOf, type CaptionVersion } from '../store/caption-store.ts';
import { DEFAULT_CONCEPT, type Concept, type Dataset, type ImageRecord } from '../store/dataset-store.ts';

export interface TrainingImage {
  no: number;
  /** The master the trainer trains on. */
  blob: string;
  caption: string;
}

/** The plan's concepts (those with images, in the dataset's order) and every image with its blob and caption. */
export function trainingConcepts(
  dataset: Dataset,
  mode: CaptionMode,
  concepts: readonly Concept[],
  images: readonly ImageRecord[],
  captions: ReadonlyMap<number, CaptionVersion>,
  sentences: ReadonlyMap<number, CaptionVersion>,
): { concepts: PlanConceptInput[]; images: Map<number, TrainingImage> } {
  const byConcept = new Map<string, ImageRecord[]>();
  for (const img of images) byConcept.set(img.concept, [...(byConcept.get(img.concept) ?? []), img]);
  const out = new Map<number, TrainingImage>();
  const planConcepts = concepts
    .filter((c) => (byConcept.get(c.name)?.length ?? 0) > 0)
    .map((c) => ({
      name: c.name,
      ...(c.trigger ? { trigger: c.trigger } : {}),
      ...(c.repeats !== undefined ? { repeats: c.repeats } : {}),
      isMain: c.name === DEFAULT_CONCEPT,
      images: (byConcept.get(c.name) ?? []).map((img) => {
        const tags = captions.get(img.no)?.tags ?? null;
        const sentence = sentences.get(img.no);
        const caption =
          composeForMode(mode, dataset.trigger, c.trigger, tags, sentence ? sentenceOf(sentence) : null) ?? composeCaption(dataset.trigger, c.trigger, []);
        out.set(img.no, { no: img.no, blob: img.masterBlob, caption });
        return { id: String(img.no), width: img.width, height: img.height, captioned: true, caption };
      }),
    }));
  return { concepts: planConcepts, images: out };
}
