/** A mistake of the user's, with a message fit to show them (an ephemeral reply). */
export class UserError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UserError';
  }
}

export function isUserError(err: unknown): err is UserError {
  return err instanceof UserError;
}

/** One image of a batch could not be read; `index` is its position in the call, and the others are fine. */
export class BatchImageError extends Error {
  constructor(
    readonly index: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'BatchImageError';
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
