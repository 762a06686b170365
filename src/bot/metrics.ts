/**
 * A tiny Prometheus registry (text exposition format 0.0.4), enough for the bot's /metrics:
 * counters and gauges with labels, rendered with `# HELP` and `# TYPE` lines. No dependency.
 */

export const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

export type Labels = Record<string, string>;

function escapeHelp(text: string): string {
  return text.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}

function escapeLabelValue(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  return String(value);
}

function labelKey(labelNames: readonly string[], labels: Labels): string {
  for (const name of Object.keys(labels)) {
    if (!labelNames.includes(name)) throw new TypeError(`unknown label ${name}`);
  }
  return labelNames
    .map((name) => {
      const v = labels[name];
      if (v === undefined) throw new TypeError(`missing label ${name}`);
      return `${name}="${escapeLabelValue(v)}"`;
    })
    .join(',');
}

abstract class Metric {
  protected readonly values = new Map<string, number>();

  constructor(
    readonly name: string,
    readonly help: string,
    readonly labelNames: readonly string[],
  ) {
    if (!METRIC_NAME.test(name)) throw new TypeError(`invalid metric name ${name}`);
    for (const l of labelNames) if (!LABEL_NAME.test(l) || l.startsWith('__')) throw new TypeError(`invalid label name ${l}`);
  }

  abstract readonly type: 'counter' | 'gauge';

  get(labels: Labels = {}): number {
    return this.values.get(labelKey(this.labelNames, labels)) ?? 0;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`];
    for (const [key, value] of this.values) lines.push(`${this.name}${key.length > 0 ? `{${key}}` : ''} ${formatValue(value)}`);
    return lines.join('\n');
  }
}

export class Counter extends Metric {
  readonly type = 'counter' as const;

  inc(labels: Labels = {}, by = 1): void {
    if (!(by >= 0)) throw new RangeError('a counter only goes up');
    const key = labelKey(this.labelNames, labels);
    this.values.set(key, (this.values.get(key) ?? 0) + by);
  }
}

export class Gauge extends Metric {
  readonly type = 'gauge' as const;

  set(labels: Labels, value: number): void {
    this.values.set(labelKey(this.labelNames, labels), value);
  }

  /** Forgets every labelled value (before a fresh collection). */
  reset(): void {
    this.values.clear();
  }
}

export class MetricsRegistry {
  private readonly metrics = new Map<string, Metric>();

  counter(name: string, help: string, labelNames: readonly string[] = []): Counter {
    return this.add(new Counter(name, help, labelNames));
  }

  gauge(name: string, help: string, labelNames: readonly string[] = []): Gauge {
    return this.add(new Gauge(name, help, labelNames));
  }

  /** Every metric, each with its HELP and TYPE lines; ends with a newline. */
  render(): string {
    const blocks = [...this.metrics.values()].map((m) => m.render());
    return blocks.length > 0 ? `${blocks.join('\n')}\n` : '';
  }

  private add<M extends Metric>(metric: M): M {
    if (this.metrics.has(metric.name)) throw new TypeError(`metric ${metric.name} is registered twice`);
    this.metrics.set(metric.name, metric);
    return metric;
  }
}
