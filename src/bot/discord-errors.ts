import { DiscordAPIError } from 'discord.js';

/**
 * Discord refusals that no retry will fix: unknown channel (10003), missing access (50001),
 * missing permissions (50013), invalid form body (50035).
 */
const PERMANENT_CODES: ReadonlySet<number> = new Set([10003, 50001, 50013, 50035]);

/** Codes for a message that can no longer be edited: unknown message (10008), too many edits to an old message (30046). */
const UNEDITABLE_CODES: ReadonlySet<number> = new Set([10008, 30046]);

/** Whether Discord refused for good: retrying the same request cannot succeed. */
export function isPermanentDiscordError(err: unknown): err is DiscordAPIError {
  return err instanceof DiscordAPIError && typeof err.code === 'number' && PERMANENT_CODES.has(err.code);
}

/** Whether an edit failed because the message is gone or too old to edit (post a new one instead). */
export function isUneditableMessageError(err: unknown): err is DiscordAPIError {
  return err instanceof DiscordAPIError && typeof err.code === 'number' && UNEDITABLE_CODES.has(err.code);
}
