import { describe, expect, it } from 'vitest';
import type { KohyaEvent, KohyaStream } from '../../src/core/kohya-progress.ts';
import { KohyaProgressParser, parseProgressLine } from '../../src/core/kohya-progress.ts';

/** One run as it appears on the two pipes (captured-style, 2 epochs × 3 steps, batch 1). */
const STDOUT = [
  'Loading settings from /runs/r1/config.toml...',
  'prepare tokenizer',
  'found directory /staging/r1/30_main contains 3 image files',
  'bucket 0: resolution (512, 512), count: 90',
  'override steps. steps for 2 epochs is / 指定エポックまでのステップ数: 6',
  'running training / 学習開始',
  '  num train images * repeats / 学習画像の数×繰り返し回数: 3',
  '  num validation images * repeats / 学習画像の数×繰り返し回数: 0',
  '  num reg images / 正則化画像の数: 0',
  '  num batches per epoch / 1epochのバッチ数: 3',
  '  num epochs / epoch数: 2',
  '  batch size per device / バッチサイズ: 1',
  '  gradient accumulation steps / 勾配を合計するステップ数 = 1',
  '  total optimization steps / 学習ステップ数: 6',
  '',
  'epoch 1/2',
  '',
  '',
  'saving checkpoint: /runs/r1/zk-000001.safetensors',
  '',
  'saving state at epoch 1',
  'save train state to /runs/r1/zk-000001-state/train_state.json at epoch 1 step 3',
  'generating sample images at step / サンプル画像生成 ステップ: 3',
  'prompt: zk, 1girl, smile',
  '',
  'epoch 2/2',
  '',
  '',
  'saving last state.',
  'save train state to /runs/r1/zk-state/train_state.json at epoch 2 step 6',
  '',
  'saving checkpoint: /runs/r1/zk.safetensors',
  'model saved.',
  '',
].join('\n');

const BAR = (n: number, loss: string) =>
  `\rsteps: ${String(Math.round((n / 6) * 100)).padStart(3)}%|${'█'.repeat(Math.floor((n / 6) * 10)).padEnd(10)}| ${n}/6 [00:0${n}<00:0${6 - n},  1.02it/s, avr_loss=${loss}]`;

const STDERR = [
  '\r  0%|          | 0/3 [00:00<?, ?it/s]\r100%|██████████| 3/3 [00:00<00:00, 120.31it/s]\n',
  '\rsteps:   0%|          | 0/6 [00:00<?, ?it/s]',
  BAR(1, '0.117'),
  BAR(2, '0.0912'),
  BAR(3, '0.102'),
  '\r100%|██████████| 28/28 [00:02<00:00, 11.21it/s]\n',
  '\rvalidation steps:  50%|█████     | 1/2 [00:00<00:00,  3.10it/s]',
  BAR(4, '0.0988'),
  BAR(5, '0.0954'),
  BAR(6, '0.0931'),
  '\n',
].join('');

function feed(parser: KohyaProgressParser, text: string, stream: KohyaStream, size: number, events: KohyaEvent[]): void {
  const bytes = Buffer.from(text, 'utf8');
  for (let i = 0; i < bytes.length; i += size) events.push(...parser.push(bytes.subarray(i, i + size), stream));
}

function run(size: number): { events: KohyaEvent[]; parser: KohyaProgressParser } {
  const parser = new KohyaProgressParser();
  const events: KohyaEvent[] = [];
  feed(parser, STDOUT, 'stdout', size, events);
  feed(parser, STDERR, 'stderr', size, events);
  events.push(...parser.end());
  return { events, parser };
}

const of = <T extends KohyaEvent['type']>(events: KohyaEvent[], type: T) => events.filter((e): e is Extract<KohyaEvent, { type: T }> => e.type === type);

describe('kohya console parser', () => {
  it.each([1, 3, 7, 64, 100_000])('finds the same events whatever the chunk size (%i bytes, UTF-8 split mid-character)', (size) => {
    const { events } = run(size);
    expect(of(events, 'totals')).toEqual([
      { type: 'totals', epochs: 2, totalSteps: 6 },
      { type: 'totals', imagesWithRepeats: 3 },
      { type: 'totals', stepsPerEpoch: 3 },
      { type: 'totals', epochs: 2 },
      { type: 'totals', totalSteps: 6 },
    ]);
    expect(of(events, 'epoch')).toEqual([
      { type: 'epoch', epoch: 1, total: 2 },
      { type: 'epoch', epoch: 2, total: 2 },
    ]);
    expect(of(events, 'checkpoint')).toEqual([
      { type: 'checkpoint', path: '/runs/r1/zk-000001.safetensors', epoch: 1 },
      { type: 'checkpoint', path: '/runs/r1/zk.safetensors' },
    ]);
    expect(of(events, 'state')).toEqual([
      { type: 'state', epoch: 1 },
      { type: 'state', path: '/runs/r1/zk-000001-state', epoch: 1, step: 3 },
      { type: 'state', last: true },
      { type: 'state', path: '/runs/r1/zk-state', epoch: 2, step: 6 },
    ]);
    expect(of(events, 'samples')).toEqual([{ type: 'samples', step: 3 }]);
    expect(of(events, 'saved')).toHaveLength(1);
    // one event per redraw of the main bar: not the image-size, sampling or validation bars
    const progress = of(events, 'progress');
    expect(progress.map((p) => p.step)).toEqual([0, 1, 2, 3, 4, 5, 6]);
    expect(progress.every((p) => p.total === 6)).toBe(true);
    expect(progress[0]).toEqual({ type: 'progress', step: 0, total: 6, percent: 0, rate: null, elapsed: '00:00', remaining: '?' });
    expect(progress[2]).toEqual({ type: 'progress', step: 2, total: 6, percent: 33, rate: 1.02, elapsed: '00:02', remaining: '00:04', loss: 0.0912 });
    expect(of(events, 'nan')).toEqual([]);
    expect(of(events, 'error')).toEqual([]);
  });

  it('reports a bar redraw as soon as it is complete, before the next \\r arrives', () => {
    const parser = new KohyaProgressParser();
    expect(parser.push('\rsteps:  10%|█         | 12/120 [00:06<00:54,  2.00it/s, avr_loss=0.1', 'stderr')).toEqual([]);
    const now = parser.push('23]', 'stderr');
    expect(now).toEqual([{ type: 'progress', step: 12, total: 120, percent: 10, rate: 2, elapsed: '00:06', remaining: '00:54', loss: 0.123 }]);
    // the terminator (and tqdm's padding) doesn't report it twice
    expect(parser.push('  \r', 'stderr')).toEqual([]);
    expect(parser.push('steps:  11%|█         | 13/120 [00:06<00:53,  2.00it/s, avr_loss=0.122]\n', 'stderr').map((e) => e.type)).toEqual(['progress']);
  });

  it('reads s/it rates, sorted postfix keys and CRLF line ends', () => {
    expect(
      parseProgressLine('steps:  12%|█▏        | 120/1000 [06:25<47:05,  3.21s/it, Average key norm=0.412, Keys Scaled=0, avr_loss=0.0912]'),
    ).toMatchObject({
      step: 120,
      total: 1000,
      rate: 1 / 3.21,
      loss: 0.0912,
    });
    const parser = new KohyaProgressParser();
    expect(parser.push('\r\nepoch 3/8\r\n', 'stdout')).toEqual([{ type: 'epoch', epoch: 3, total: 8 }]);
  });

  it('does not take other bars or lines for the main bar or an epoch banner', () => {
    for (const line of [
      'validation steps:  50%|█████     | 1/2 [00:00<00:00,  3.10it/s, val_avg_loss=0.1]',
      'epoch validation steps: 100%|██████████| 2/2 [00:00<00:00,  3.10it/s]',
      '100%|██████████| 30/30 [00:02<00:00, 11.21it/s]',
      'read caption: 100%|██████████| 6/6 [00:00<00:00, 5000.00it/s]',
    ]) {
      expect(parseProgressLine(line)).toBeNull();
    }
    const parser = new KohyaProgressParser();
    expect(parser.push('saving state at epoch 1 / epoch 1/8 stays\nskipping epoch 1 because initial_step (multiplied) is 30\n')).toEqual([
      { type: 'state', epoch: 1 },
    ]);
  });

  it('emits nan once, the first time avr_loss reads nan', () => {
    const parser = new KohyaProgressParser();
    const events = [
      ...parser.push('\rsteps:  50%|█████     | 5/10 [00:05<00:05,  1.00it/s, avr_loss=0.1]', 'stderr'),
      ...parser.push('\rsteps:  60%|██████    | 6/10 [00:06<00:04,  1.00it/s, avr_loss=nan]', 'stderr'),
      ...parser.push('\rsteps:  70%|███████   | 7/10 [00:07<00:03,  1.00it/s, avr_loss=nan]', 'stderr'),
    ];
    expect(events.map((e) => e.type)).toEqual(['progress', 'progress', 'nan', 'progress']);
    expect(events.find((e) => e.type === 'nan')).toEqual({ type: 'nan', step: 6 });
    const last = of(events, 'progress').at(-1);
    expect(Number.isNaN(last?.loss)).toBe(true);
  });

  it('turns a traceback glued to the last bar redraw into an error event', () => {
    const parser = new KohyaProgressParser();
    const stderr = [
      '\rsteps:  40%|████      | 4/10 [00:04<00:06,  1.00it/s, avr_loss=0.1]Traceback (most recent call last):\n',
      '  File "/sd-scripts/train_network.py", line 1458, in train\n',
      '    noise_pred = self.call_unet(\n',
      'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB\n',
      'Traceback (most recent call last):\n',
      '  File "/venv/bin/accelerate", line 8, in <module>\n',
      "subprocess.CalledProcessError: Command '['/venv/bin/python', 'train_network.py']' returned non-zero exit status 1.\n",
    ].join('');
    const events = parser.push(stderr, 'stderr');
    const errors = of(events, 'error');
    expect(errors.map((e) => e.exception)).toEqual(['torch.OutOfMemoryError', 'subprocess.CalledProcessError']);
    expect(errors[0]?.message).toBe('CUDA out of memory. Tried to allocate 20.00 MiB');
    expect(errors[1]?.message).toContain('non-zero exit status 1');
    expect(of(events, 'progress').map((p) => p.step)).toEqual([4]);
    // the same bytes arriving in two writes: the redraw is reported once, when it arrives
    const streamed = new KohyaProgressParser();
    const cut = stderr.indexOf('Traceback');
    const first = streamed.push(stderr.slice(0, cut), 'stderr');
    const rest = streamed.push(stderr.slice(cut), 'stderr');
    expect(first.map((e) => e.type)).toEqual(['progress']);
    expect(rest.map((e) => e.type)).toEqual(['error', 'error']);
  });

  it('reads a stderr traceback whatever stdout lines arrive in the middle of it', () => {
    // The two pipes are read independently, so any merge that keeps each stream's own order can happen.
    // The stderr pieces cut lines in the middle, as pipe reads do.
    const stdout = ['epoch 2/2\n', '  num epochs / epoch数: 2\n', 'saving checkpoint: /runs/r1/zk-000002.safetensors\n', 'prompt: zk\n'];
    const stderr = [
      'Traceback (most recent call last):\n  File "/sd-scripts/train_network.py", li',
      'ne 1458, in train\n',
      '    raise ValueError(msg)\n',
      'voluptuous.error.MultipleInvalid: extra keys not allowed @ ',
      "data['general']['shufle_caption']\n",
    ];
    const merges: Array<Array<[KohyaStream, string]>> = [];
    const merge = (i: number, j: number, acc: Array<[KohyaStream, string]>): void => {
      if (i === stdout.length && j === stderr.length) {
        merges.push(acc);
        return;
      }
      if (i < stdout.length) merge(i + 1, j, [...acc, ['stdout', stdout[i] ?? '']]);
      if (j < stderr.length) merge(i, j + 1, [...acc, ['stderr', stderr[j] ?? '']]);
    };
    merge(0, 0, []);
    expect(merges).toHaveLength(126); // C(9, 4)
    for (const order of merges) {
      const parser = new KohyaProgressParser();
      const events = order.flatMap(([stream, chunk]) => parser.push(chunk, stream));
      events.push(...parser.end());
      const label = order.map(([stream]) => stream[3]).join('');
      expect(of(events, 'error'), label).toEqual([
        { type: 'error', exception: 'voluptuous.error.MultipleInvalid', message: "extra keys not allowed @ data['general']['shufle_caption']" },
      ]);
      expect(of(events, 'epoch'), label).toEqual([{ type: 'epoch', epoch: 2, total: 2 }]);
      expect(of(events, 'checkpoint'), label).toEqual([{ type: 'checkpoint', path: '/runs/r1/zk-000002.safetensors', epoch: 2 }]);
    }
  });

  it('reads an AssertionError and the dataset config error of sd-scripts', () => {
    const parser = new KohyaProgressParser();
    const events = parser.push(
      "Invalid user config / ユーザ設定の形式が正しくないようです\nTraceback (most recent call last):\n  File \"x.py\", line 1, in <module>\nvoluptuous.error.MultipleInvalid: extra keys not allowed @ data['general']['foo']\n" +
        'Traceback (most recent call last):\n  File "x.py", line 2\nAssertionError: caption file is empty / キャプションファイルが空です: /s/1_a/x.txt\n',
      'stderr',
    );
    expect(of(events, 'error')).toEqual([
      { type: 'error', exception: 'voluptuous.error.MultipleInvalid', message: "extra keys not allowed @ data['general']['foo']" },
      { type: 'error', exception: 'AssertionError', message: 'caption file is empty / キャプションファイルが空です: /s/1_a/x.txt' },
    ]);
  });

  it('keeps the last 30 lines for failure reports, bar redraws collapsed, the unterminated one included', () => {
    const parser = new KohyaProgressParser();
    for (let i = 0; i < 50; i++) parser.push(`line ${i}\n`, 'stdout');
    for (let i = 1; i <= 5; i++) parser.push(`\rsteps:  ${i}0%|█         | ${i}/10 [00:0${i}<00:09,  1.00it/s, avr_loss=0.1]`, 'stderr');
    const tail = parser.tail();
    expect(tail).toHaveLength(30);
    expect(tail[0]).toBe('line 21');
    expect(tail.at(-2)).toBe('line 49');
    expect(tail.at(-1)).toContain('5/10');
    const { parser: full } = run(13);
    const lines = full.tail();
    // redraws collapse until another line comes between (here the sampling and validation bars)
    expect(lines.filter((l) => l.startsWith('steps:'))).toEqual([expect.stringContaining('3/6'), expect.stringContaining('6/6')]);
    expect(lines.at(-1)).toContain('6/6');
    expect(lines).toContain('model saved.');
  });

  it('strips terminal colour codes', () => {
    const parser = new KohyaProgressParser();
    expect(parser.push('\x1b[32mepoch 1/4\x1b[0m\n')).toEqual([{ type: 'epoch', epoch: 1, total: 4 }]);
  });
});
