import { DiscordAPIError } from 'discord.js';
import { describe, expect, it } from 'vitest';
import { isPermanentDiscordError, isUneditableMessageError } from '../../src/bot/discord-errors.ts';

function refusal(code: number, status = 403) {
  return new DiscordAPIError({ code, message: `refused ${code}` }, code, status, 'POST', 'https://discord.test/api/v10/channels/1/messages', {});
}

describe('Discord refusals', () => {
  it('are permanent for a missing channel, access, permission or a malformed body', () => {
    for (const code of [10003, 50001, 50013, 50035]) expect(isPermanentDiscordError(refusal(code)), String(code)).toBe(true);
  });

  it('are worth retrying otherwise: rate limits, server errors, anything that is not from Discord', () => {
    for (const code of [0, 10008, 30046, 40060, 130000]) expect(isPermanentDiscordError(refusal(code)), String(code)).toBe(false);
    expect(isPermanentDiscordError(new Error('socket hang up'))).toBe(false);
    expect(isPermanentDiscordError({ code: 50013 })).toBe(false);
  });

  it('tell a message that can no longer be edited (gone, or too old to edit again) from other failures', () => {
    expect(isUneditableMessageError(refusal(10008, 404))).toBe(true);
    expect(isUneditableMessageError(refusal(30046, 400))).toBe(true);
    expect(isUneditableMessageError(refusal(50013))).toBe(false);
    expect(isUneditableMessageError(new Error('Unknown Message'))).toBe(false);
  });
});
