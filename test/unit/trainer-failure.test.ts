import { describe, expect, it } from 'vitest';
import { KohyaProgressParser } from '../../src/core/kohya-progress.ts';
import { TrainerErrors } from '../../src/worker/trainer-failure.ts';

const LAUNCHER_FRAMES = [
  'Traceback (most recent call last):',
  '  File "/venv/bin/accelerate", line 8, in <module>',
  '    sys.exit(main())',
  '  File "/venv/lib/python3.10/site-packages/accelerate/commands/launch.py", line 763, in simple_launcher',
  '    raise subprocess.CalledProcessError(returncode=process.returncode, cmd=cmd)',
];

/** The errors the console parser reads from `stderr`, gathered as the worker does. */
function errorsOf(stderr: string[]): TrainerErrors {
  const parser = new KohyaProgressParser();
  const errors = new TrainerErrors();
  for (const e of [...parser.push(`${stderr.join('\n')}\n`, 'stderr'), ...parser.end()]) if (e.type === 'error') errors.add(e);
  return errors;
}

describe('why the trainer failed', () => {
  it("names the script's error, not the launcher's that follows it, with the script's exit code", () => {
    const errors = errorsOf([
      'Traceback (most recent call last):',
      '  File "/sd-scripts/train_network.py", line 1500, in <module>',
      "voluptuous.error.MultipleInvalid: extra keys not allowed @ data['general']['shufle_caption']",
      ...LAUNCHER_FRAMES,
      "subprocess.CalledProcessError: Command '['/venv/bin/python', 'train_network.py', '--config_file', 'c.toml']' returned non-zero exit status 3.",
    ]);
    expect(errors.first).toBe("voluptuous.error.MultipleInvalid: extra keys not allowed @ data['general']['shufle_caption']");
    expect(errors.reason({ code: 1, signal: null })).toBe(
      "the trainer exited with code 3: voluptuous.error.MultipleInvalid: extra keys not allowed @ data['general']['shufle_caption']",
    );
  });

  it('keeps the first exception of a chained traceback: the cause', () => {
    const errors = errorsOf([
      'Traceback (most recent call last):',
      '  File "/sd-scripts/library/train_util.py", line 10, in load',
      'AssertionError: caption file is empty / キャプションファイルが空です: /s/1_a/x.txt',
      '',
      'During handling of the above exception, another exception occurred:',
      '',
      'Traceback (most recent call last):',
      '  File "/sd-scripts/train_network.py", line 20, in <module>',
      'RuntimeError: DataLoader worker exited unexpectedly',
      ...LAUNCHER_FRAMES,
      "subprocess.CalledProcessError: Command '['python', 'train_network.py']' returned non-zero exit status 1.",
    ]);
    expect(errors.reason({ code: 1, signal: null })).toBe(
      'the trainer exited with code 1: AssertionError: caption file is empty / キャプションファイルが空です: /s/1_a/x.txt',
    );
  });

  it('says which signal killed the script when only the launcher could tell', () => {
    const errors = errorsOf([...LAUNCHER_FRAMES, "subprocess.CalledProcessError: Command '['python', 'train_network.py']' died with <Signals.SIGKILL: 9>."]);
    expect(errors.first).toBeNull();
    expect(errors.reason({ code: 1, signal: null })).toBe('the trainer was killed by SIGKILL (out of memory?)');
  });

  it('without a launcher: the exit code or signal of the process itself', () => {
    expect(new TrainerErrors().reason({ code: 2, signal: null })).toBe('the trainer exited with code 2');
    expect(new TrainerErrors().reason({ code: null, signal: 'SIGTERM' })).toBe('the trainer was killed by SIGTERM');
    const errors = errorsOf(['Traceback (most recent call last):', '  File "x.py", line 1', 'torch.OutOfMemoryError: CUDA out of memory']);
    expect(errors.reason({ code: 1, signal: null })).toBe('the trainer exited with code 1: torch.OutOfMemoryError: CUDA out of memory');
  });

  it("treats a CalledProcessError of another shape as the script's own error", () => {
    const errors = errorsOf(['Traceback (most recent call last):', '  File "x.py", line 1', "subprocess.CalledProcessError: Command 'git rev-parse' failed"]);
    expect(errors.reason({ code: 1, signal: null })).toBe("the trainer exited with code 1: subprocess.CalledProcessError: Command 'git rev-parse' failed");
  });
});
