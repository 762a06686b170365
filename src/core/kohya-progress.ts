/**
 * An incremental parser for sd-scripts' console output (reference/kohya-contract.md §6). Feed it raw
 * chunks of stdout and stderr as they arrive; it splits on `\r` and `\n` (tqdm redraws with `\r`),
 * keeps partial lines per stream, and returns the events each chunk completes. It keeps the last
 * lines for failure reports, with consecutive progress-bar redraws collapsed into one.
 *
 * Messages are bilingual (`english / 日本語`); only the English prefix is matched.
 */

import { StringDecoder } from 'node:string_decoder';

export type KohyaStream = 'stdout' | 'stderr';

export type KohyaEvent =
  | {
      type: 'progress';
      /** Optimizer steps done in this process (restarts at 0 after a resume). */
      step: number;
      total: number;
      percent: number;
      /** Steps per second; null while tqdm shows `?`. */
      rate: number | null;
      elapsed: string;
      remaining: string;
      /** avr_loss, NaN when the trainer prints `nan`. */
      loss?: number;
    }
  | { type: 'epoch'; epoch: number; total: number }
  /** `epoch` is set for epoch checkpoints (`name-000003.safetensors`), absent for the final one. */
  | { type: 'checkpoint'; path: string; epoch?: number }
  | { type: 'state'; epoch?: number; step?: number; path?: string; last?: true }
  /** The first time avr_loss reads nan. */
  | { type: 'nan'; step: number }
  | { type: 'totals'; stepsPerEpoch?: number; totalSteps?: number; epochs?: number; imagesWithRepeats?: number }
  | { type: 'samples'; step: number }
  | { type: 'saved' }
  /** The exception line closing a Python traceback. */
  | { type: 'error'; exception: string; message: string };

export const PROGRESS_RE = /^steps:\s+(\d+)%\|[^|]*\|\s*(\d+)\/(\d+)\s*\[([^\]<]*)<([^,\]]*),\s*([\d.?]+)(it\/s|s\/it)(?:,\s*(.*))?\]\s*$/;
const EPOCH_RE = /^epoch (\d+)\/(\d+)$/;
const CHECKPOINT_RE = /^saving checkpoint: (.+?)\s*$/;
const EPOCH_FILE_RE = /-(\d{6})\.[A-Za-z0-9]+$/;
const STATE_EPOCH_RE = /\bsaving state at epoch (\d+)\b/;
const STATE_STEP_RE = /\bsaving state at step (\d+)\b/;
const STATE_LAST_RE = /\bsaving last state\./;
const TRAIN_STATE_RE = /\bsave train state to (.+?)[\\/]train_state\.json at epoch (\d+) step (\d+)/;
const IMAGES_RE = /^num train images \* repeats\b.*:\s*(\d+)$/;
const BATCHES_RE = /^num batches per epoch\b.*:\s*(\d+)$/;
const EPOCHS_RE = /^num epochs\b.*:\s*(\d+)$/;
const ACCUM_RE = /^gradient accumulation steps\b.*=\s*(\d+)$/;
const TOTAL_RE = /^total optimization steps\b.*:\s*(\d+)$/;
const OVERRIDE_RE = /^override steps\. steps for (\d+) epochs is\b.*:\s*(\d+)$/;
const SAMPLES_RE = /\bgenerating sample images at step\b.*:\s*(\d+)$/;
const SAVED_RE = /^model saved\.$/;
/** Not anchored: a traceback often follows the last bar redraw on the same line. */
const TRACEBACK_RE = /Traceback \(most recent call last\):$/;
const EXCEPTION_RE = /^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)(?::\s?(.*))?$/;
const BAR_RE = /^(?:([^|]*?):\s*)?\d+%\|/;
// eslint-disable-next-line no-control-regex
const ANSI_RE = /\x1b\[[0-9;?]*[ -/]*[@-~]/g;

const normalize = (text: string) => text.replace(ANSI_RE, '').trim();

function parseLoss(postfix: string | undefined): number | undefined {
  if (!postfix) return undefined;
  const m = /(?:^|,\s*)avr_loss=([^,\]]+)/.exec(postfix);
  if (!m?.[1]) return undefined;
  const text = m[1].trim().toLowerCase();
  if (text === 'nan' || text === '-nan') return Number.NaN;
  const n = Number(text);
  return Number.isFinite(n) || text === 'inf' || text === '-inf' ? n : undefined;
}

/** Parses one progress-bar line; null when it isn't the main `steps:` bar. */
export function parseProgressLine(line: string): Extract<KohyaEvent, { type: 'progress' }> | null {
  const m = PROGRESS_RE.exec(line.trim());
  if (!m) return null;
  const [, percent, step, total, elapsed, remaining, rateText, unit, postfix] = m;
  const rateValue = Number(rateText);
  const rate = Number.isFinite(rateValue) && rateText !== '?' ? (unit === 's/it' ? (rateValue > 0 ? 1 / rateValue : null) : rateValue) : null;
  const event: Extract<KohyaEvent, { type: 'progress' }> = {
    type: 'progress',
    step: Number(step),
    total: Number(total),
    percent: Number(percent),
    rate,
    elapsed: (elapsed ?? '').trim(),
    remaining: (remaining ?? '').trim(),
  };
  const loss = parseLoss(postfix);
  if (loss !== undefined) event.loss = loss;
  return event;
}

interface StreamState {
  decoder: StringDecoder;
  buffer: string;
  /** The partial line already reported as progress (tqdm's last redraw has no terminator yet). */
  reported: string | null;
  /**
   * Traceback state, per stream: a traceback is written to one stream, and a line of the other one
   * arriving in the middle of it must not end it.
   */
  inTraceback: boolean;
  tracebackBody: boolean;
}

export class KohyaProgressParser {
  readonly #tailSize: number;
  readonly #tail: string[] = [];
  readonly #streams: Record<KohyaStream, StreamState>;
  #sawNan = false;
  #batchesPerEpoch: number | null = null;
  #accumulation = 1;

  constructor(options: { tailLines?: number } = {}) {
    this.#tailSize = options.tailLines ?? 30;
    const stream = (): StreamState => ({
      decoder: new StringDecoder('utf8'),
      buffer: '',
      reported: null,
      inTraceback: false,
      tracebackBody: false,
    });
    this.#streams = { stdout: stream(), stderr: stream() };
  }

  /** Feed a chunk; returns the events it completed. */
  push(chunk: string | Uint8Array, stream: KohyaStream = 'stdout'): KohyaEvent[] {
    const state = this.#streams[stream];
    state.buffer += typeof chunk === 'string' ? chunk : state.decoder.write(chunk);
    const parts = state.buffer.split(/\r\n|\r|\n/);
    state.buffer = parts.pop() ?? '';
    const events: KohyaEvent[] = [];
    for (const raw of parts) {
      const reported = state.reported;
      state.reported = null;
      this.#line(raw, events, reported, state);
    }
    // tqdm's latest redraw stays unterminated until the next one: report it now if it is complete.
    const partial = normalize(state.buffer);
    if (partial.endsWith(']') && state.reported !== partial) {
      const progress = parseProgressLine(partial);
      if (progress) {
        this.#progress(progress, events);
        state.reported = partial;
      }
    }
    return events;
  }

  /** The stream ended: flush partial lines. */
  end(): KohyaEvent[] {
    const events: KohyaEvent[] = [];
    for (const state of Object.values(this.#streams)) {
      const rest = state.buffer + state.decoder.end();
      state.buffer = '';
      if (rest.length > 0) this.#line(rest, events, state.reported, state);
      state.reported = null;
    }
    return events;
  }

  /** The last lines seen (progress redraws collapsed), oldest first, including unterminated ones. */
  tail(): string[] {
    const lines = [...this.#tail];
    for (const state of Object.values(this.#streams)) {
      const partial = normalize(state.buffer);
      if (partial) this.#remember(lines, partial);
    }
    return lines.slice(-this.#tailSize);
  }

  #remember(lines: string[], line: string): void {
    const bar = BAR_RE.exec(line);
    const last = lines.at(-1);
    if (bar && last !== undefined) {
      const lastBar = BAR_RE.exec(last);
      if (lastBar && lastBar[1] === bar[1]) {
        lines[lines.length - 1] = line;
        return;
      }
    }
    lines.push(line);
    if (lines.length > this.#tailSize * 2) lines.splice(0, lines.length - this.#tailSize);
  }

  #progress(event: Extract<KohyaEvent, { type: 'progress' }>, events: KohyaEvent[]): void {
    events.push(event);
    if (event.loss !== undefined && Number.isNaN(event.loss) && !this.#sawNan) {
      this.#sawNan = true;
      events.push({ type: 'nan', step: event.step });
    }
  }

  /** `reported`: the unterminated bar redraw of this stream already reported as progress. */
  #line(raw: string, events: KohyaEvent[], reported: string | null, state: StreamState): void {
    const untrimmed = raw.replace(ANSI_RE, '').trimEnd();
    const line = untrimmed.trim();
    if (!line) return;

    // A traceback glued to the last bar redraw: the redraw first, then the traceback.
    const traceback = TRACEBACK_RE.exec(line);
    if (traceback && traceback.index > 0) {
      this.#line(line.slice(0, traceback.index), events, reported, state);
      this.#line(line.slice(traceback.index), events, null, state);
      return;
    }
    this.#remember(this.#tail, line);

    if (line.startsWith('steps:')) {
      const progress = parseProgressLine(line);
      if (progress) {
        if (line !== reported) this.#progress(progress, events);
        return;
      }
    }

    // Tracebacks: the first unindented line after the indented frames is the exception.
    if (traceback) {
      state.inTraceback = true;
      state.tracebackBody = false;
      return;
    }
    if (state.inTraceback) {
      if (/^\s/.test(untrimmed)) {
        state.tracebackBody = true;
        return;
      }
      if (state.tracebackBody) {
        const m = EXCEPTION_RE.exec(line);
        if (m?.[1] && !line.startsWith('During handling') && !line.startsWith('The above exception')) {
          events.push({ type: 'error', exception: m[1], message: (m[2] ?? '').trim() });
        }
        state.inTraceback = false;
      }
    }

    let m: RegExpExecArray | null;
    if ((m = EPOCH_RE.exec(line))) {
      events.push({ type: 'epoch', epoch: Number(m[1]), total: Number(m[2]) });
    } else if ((m = CHECKPOINT_RE.exec(line)) && m[1]) {
      const path = m[1];
      const epoch = EPOCH_FILE_RE.exec(path);
      events.push(epoch?.[1] ? { type: 'checkpoint', path, epoch: Number(epoch[1]) } : { type: 'checkpoint', path });
    } else if ((m = TRAIN_STATE_RE.exec(line)) && m[1]) {
      events.push({ type: 'state', path: m[1], epoch: Number(m[2]), step: Number(m[3]) });
    } else if ((m = STATE_EPOCH_RE.exec(line))) {
      events.push({ type: 'state', epoch: Number(m[1]) });
    } else if ((m = STATE_STEP_RE.exec(line))) {
      events.push({ type: 'state', step: Number(m[1]) });
    } else if (STATE_LAST_RE.test(line)) {
      events.push({ type: 'state', last: true });
    } else if ((m = OVERRIDE_RE.exec(line))) {
      events.push({ type: 'totals', epochs: Number(m[1]), totalSteps: Number(m[2]) });
    } else if ((m = IMAGES_RE.exec(line))) {
      events.push({ type: 'totals', imagesWithRepeats: Number(m[1]) });
    } else if ((m = BATCHES_RE.exec(line))) {
      this.#batchesPerEpoch = Number(m[1]);
      events.push({ type: 'totals', stepsPerEpoch: Math.ceil(this.#batchesPerEpoch / this.#accumulation) });
    } else if ((m = EPOCHS_RE.exec(line))) {
      events.push({ type: 'totals', epochs: Number(m[1]) });
    } else if ((m = ACCUM_RE.exec(line))) {
      this.#accumulation = Math.max(1, Number(m[1]));
      if (this.#accumulation > 1 && this.#batchesPerEpoch !== null) {
        events.push({ type: 'totals', stepsPerEpoch: Math.ceil(this.#batchesPerEpoch / this.#accumulation) });
      }
    } else if ((m = TOTAL_RE.exec(line))) {
      events.push({ type: 'totals', totalSteps: Number(m[1]) });
    } else if ((m = SAMPLES_RE.exec(line))) {
      events.push({ type: 'samples', step: Number(m[1]) });
    } else if (SAVED_RE.test(line)) {
      events.push({ type: 'saved' });
    }
  }
}
