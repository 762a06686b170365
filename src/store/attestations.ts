import type { Redis } from 'ioredis';

/** A member's one-time statement about what they contribute to a guild's datasets. */
export interface Attestation {
  userId: string;
  /** The member's name when they confirmed, for the record. */
  name: string;
  at: number;
  /** The wording they confirmed (it may change later; the record keeps what was agreed). */
  statement: string;
}

/** Attestations per guild: `<prefix>:guild:<id>:attestations`, member id → record. */
export class AttestationStore {
  constructor(
    private readonly redis: Redis,
    private readonly prefix: string,
  ) {}

  private key(guildId: string) {
    return `${this.prefix}:guild:${guildId}:attestations`;
  }

  async get(guildId: string, userId: string): Promise<Attestation | null> {
    const json = await this.redis.hget(this.key(guildId), userId);
    return json ? (JSON.parse(json) as Attestation) : null;
  }

  /** Records the first confirmation; a second press keeps the first record. Returns the record kept. */
  async record(guildId: string, attestation: Attestation): Promise<Attestation> {
    await this.redis.hsetnx(this.key(guildId), attestation.userId, JSON.stringify(attestation));
    return (await this.get(guildId, attestation.userId)) ?? attestation;
  }
}
