/**
 * Content ratings, in the WD14 tagger's words and order: each image we handle gets one, and a
 * guild's policy says which are shown, spoilered or refused.
 */
export const RATINGS = ['general', 'sensitive', 'questionable', 'explicit'] as const;
export type Rating = (typeof RATINGS)[number];

export function isRating(value: unknown): value is Rating {
  return typeof value === 'string' && (RATINGS as readonly string[]).includes(value);
}

export function ratingRank(rating: Rating): number {
  return RATINGS.indexOf(rating);
}

/** The highest of the given ratings (null when none is given). */
export function highestRating(ratings: readonly (Rating | null | undefined)[]): Rating | null {
  let best: Rating | null = null;
  for (const r of ratings) if (r && (best === null || ratingRank(r) > ratingRank(best))) best = r;
  return best;
}

/** Whether `rating` is above `limit` (null limit: nothing is allowed). */
export function isAbove(rating: Rating, limit: Rating | null): boolean {
  return limit === null || ratingRank(rating) > ratingRank(limit);
}

/** Where a rating came from: the photo classifier at intake, or the anime tagger when it tags. */
export type RatingSource = 'classifier' | 'tagger';

/** What a guild shows where nothing age-restricted is involved. */
export interface ContentPolicy {
  /** Highest rating posted as it is. */
  shown: Rating;
  /** Highest rating posted behind a spoiler (at least `shown`). */
  spoilered: Rating;
  /** Highest rating a dataset accepts at all (at least `spoilered`); above it uploads are refused. */
  accepted: Rating;
}

/** Safe defaults for a channel anyone may read. */
export const DEFAULT_POLICY: ContentPolicy = { shown: 'general', spoilered: 'sensitive', accepted: 'sensitive' };

/** What an age-restricted channel allows (Discord's rules keep adult content there). */
export const AGE_RESTRICTED_POLICY: ContentPolicy = { shown: 'explicit', spoilered: 'explicit', accepted: 'explicit' };

/** How an image with `rating` may be posted under `policy`. */
export function postingOf(rating: Rating | null, policy: ContentPolicy): 'show' | 'spoiler' | 'withhold' {
  if (rating === null) return 'show';
  if (!isAbove(rating, policy.shown)) return 'show';
  if (!isAbove(rating, policy.spoilered)) return 'spoiler';
  return 'withhold';
}

/** Checks a policy's order (shown ≤ spoilered ≤ accepted). */
export function policyProblem(policy: ContentPolicy): string | null {
  if (ratingRank(policy.spoilered) < ratingRank(policy.shown)) return 'The spoilered rating cannot be below the shown one.';
  if (ratingRank(policy.accepted) < ratingRank(policy.spoilered)) return 'The accepted rating cannot be below the spoilered one.';
  return null;
}

/** The rating an image is treated as: the highest any source gave (null while none has). */
export function effectiveRating(ratings: Partial<Record<RatingSource, Rating>> | undefined): Rating | null {
  return highestRating(Object.values(ratings ?? {}));
}
