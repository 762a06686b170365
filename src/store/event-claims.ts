import type { Redis } from 'ioredis';
import { keys, type Keys } from './keys.ts';

/**
 * Discord sends every gateway event to every connected session of the bot, so each bot process
 * sharing a deployment (a rolling restart, a second instance) receives the same interactions and
 * messages. The first process to claim an event handles it; the others leave it alone.
 */
export class EventClaims {
  private readonly k: Keys;

  constructor(
    private readonly redis: Redis,
    prefix: string,
    /** Who claims: kept in the claim, for whoever investigates. */
    private readonly owner: string,
    /** Longer than Discord redelivers an event (an interaction's token lives 15 minutes). */
    private readonly ttlSeconds = 3600,
  ) {
    this.k = keys(prefix);
  }

  /** True for the one caller, across processes, that claims this event first. */
  async claim(kind: 'interaction' | 'message', id: string): Promise<boolean> {
    return (await this.redis.set(this.k.eventClaim(kind, id), this.owner, 'EX', this.ttlSeconds, 'NX')) === 'OK';
  }
}
