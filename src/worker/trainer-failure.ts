/**
 * Why the trainer failed, in one line. Under `accelerate launch` a failing script's traceback is
 * followed by the launcher's own (`subprocess.CalledProcessError: Command '[…]' returned non-zero
 * exit status 1.`), and the launcher exits 1 whatever the script did: the reason is the script's
 * first error (a chained traceback's first exception is the cause), and the script's exit code or
 * signal as the launcher tells it.
 */

import type { TrainerExit } from './trainer-process.ts';
import { StagingError } from './staging.ts';

const LAUNCHER_EXCEPTION = 'subprocess.CalledProcessError';
const LAUNCHER_EXIT_RE = /^Command '.*' returned non-zero exit status (-?\d+)\.?$/s;
const LAUNCHER_SIGNAL_RE = /^Command '.*' died with <Signals\.(SIG[A-Z0-9]+): \d+>\.?$/s;

export class TrainerErrors {
  #script: string | null = null;
  #launcher: { code: number } | { signal: string } | null = null;

  /** An `error` event of the console parser. */
  add(error: { exception: string; message: string }): void {
    if (error.exception === LAUNCHER_EXCEPTION) {
      const code = LAUNCHER_EXIT_RE.exec(error.message);
      const signal = LAUNCHER_SIGNAL_RE.exec(error.message);
      if (code?.[1] !== undefined) {
        this.#launcher = { code: Number(code[1]) };
        return;
      }
      if (signal?.[1] !== undefined) {
        this.#launcher = { signal: signal[1] };
        return;
      }
    }
    this.#script ??= error.message ? `${error.exception}: ${error.message}` : error.exception;
  }

  /** The script's first error, null if it printed none. */
  get first(): string | null {
    return this.#script;
  }

  /** Why a trainer that exited with `exit` (not 0) failed. */
  reason(exit: TrainerExit): string {
    const launcher = this.#launcher;
    const signal = exit.signal ?? (launcher && 'signal' in launcher ? launcher.signal : null);
    if (signal !== null) {
      const killed = `the trainer was killed by ${signal}${signal === 'SIGKILL' ? ' (out of memory?)' : ''}`;
      return this.#script ? `${killed}: ${this.#script}` : killed;
    }
    const code = launcher && 'code' in launcher ? launcher.code : exit.code;
    return `the trainer exited with code ${code ?? '?'}${this.#script ? `: ${this.#script}` : ''}`;
  }
}

export type StopReason = 'cancel' | 'shutdown' | 'nan';

/** Thrown inside a run to end it with a `failed` event and a failed job. */
export class RunFailure extends Error {
  constructor(
    readonly reason: string,
    readonly logTail: string[] = [],
  ) {
    super(reason);
    this.name = 'RunFailure';
  }
}

/**
 * How a run that threw is reported: the reason members read, the trainer's last lines, and whether
 * it is the run's own failure (bad input, a failed trainer: never retried) or the worker's.
 */
export function describeRunError(err: unknown): { reason: string; logTail: string[]; runFailure: boolean } {
  if (err instanceof RunFailure) return { reason: err.reason, logTail: err.logTail, runFailure: true };
  if (err instanceof StagingError) return { reason: err.message, logTail: [], runFailure: true };
  return { reason: `the worker failed: ${err instanceof Error ? err.message : String(err)}`, logTail: [], runFailure: false };
}
