/**
 * Which of the optimizers the recipes offer the trainer's Python can import. sd-scripts imports an
 * optimizer's package only when a run uses it, so a missing one (e.g. `dadaptation` for DAdaptAdam)
 * would fail runs one by one; the worker checks them all once at start-up, with one short Python
 * run, and advertises only those that import.
 */
import { execFile } from 'node:child_process';
import { OPTIMIZERS, type OptimizerType } from '../core/recipe-table.ts';

/** The module sd-scripts imports for each optimizer (library/train_util.py, get_optimizer). */
export const OPTIMIZER_MODULES: Record<OptimizerType, string> = {
  AdamW: 'torch',
  AdamW8bit: 'bitsandbytes',
  Adafactor: 'transformers.optimization',
  Lion: 'lion_pytorch',
  Prodigy: 'prodigyopt',
  DAdaptAdam: 'dadaptation',
};

/** Imports each module named on its command line; prints `{"module": true|false}`. Fixed text: the names come as arguments. */
const PROBE = [
  'import importlib, json, sys',
  'found = {}',
  'for name in sys.argv[1:]:',
  '    try:',
  '        importlib.import_module(name)',
  '        found[name] = True',
  '    except Exception:',
  '        found[name] = False',
  'print(json.dumps(found))',
].join('\n');

export interface OptimizerProbe {
  available: OptimizerType[];
  /** Optimizers whose module did not import. */
  missing: OptimizerType[];
}

export interface ProbeOptions {
  /** The trainer's Python (TRAINER_PYTHON). */
  python: string;
  env?: NodeJS.ProcessEnv;
  /** Importing torch and transformers takes a while on a cold disk. */
  timeoutMs?: number;
}

/**
 * Runs the probe; rejects when Python cannot be run, times out or answers something else (then no
 * optimizer can be vouched for).
 */
export function probeOptimizers(options: ProbeOptions): Promise<OptimizerProbe> {
  const modules = [...new Set(Object.values(OPTIMIZER_MODULES))];
  return new Promise((resolve, reject) => {
    execFile(
      options.python,
      ['-B', '-c', PROBE, ...modules],
      { timeout: options.timeoutMs ?? 120_000, killSignal: 'SIGKILL', env: options.env ?? process.env, windowsHide: true, maxBuffer: 64 * 1024 },
      (err, stdout) => {
        if (err) {
          reject(new Error(`the optimizer check with ${options.python} failed: ${err.killed ? 'it timed out' : err.message.split('\n')[0]}`));
          return;
        }
        let found: unknown;
        try {
          found = JSON.parse(stdout.trim().split('\n').at(-1) ?? '');
        } catch {
          found = null;
        }
        if (typeof found !== 'object' || found === null) {
          reject(new Error(`the optimizer check with ${options.python} printed no answer`));
          return;
        }
        const ok = found as Record<string, unknown>;
        const available = OPTIMIZERS.filter((o) => ok[OPTIMIZER_MODULES[o]] === true);
        resolve({ available, missing: OPTIMIZERS.filter((o) => !available.includes(o)) });
      },
    );
  });
}
