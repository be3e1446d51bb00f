/**
 * Lean Prometheus metrics for the request path: at most one label with values
 * known up front, so recording is an array increment (prom-client's counters
 * and histograms cost about 2 µs per request under load). They export
 * themselves through a prom-client registry in the usual text format and merge
 * across cluster processes like any counter or histogram.
 */
import type { MetricObjectWithValues, MetricType, MetricValueWithName, Registry } from "prom-client";

/** Registers a lean metric: prom-client reads any object with name, help, type and get(); its types only list its own classes. */
function register(registry: Registry, metric: object): void {
  registry.registerMetric(metric as Parameters<Registry["registerMetric"]>[0]);
}

/** What prom-client's registry expects from get(), every lean metric merging by sum. */
function exported(
  name: string,
  help: string,
  type: "counter" | "histogram",
  values: MetricValueWithName<string>[],
): Promise<MetricObjectWithValues<MetricValueWithName<string>>> {
  // MetricType is a type-only enum in prom-client's typings; its runtime value is the string.
  return Promise.resolve({
    name,
    help,
    type: type as unknown as MetricType,
    values,
    aggregator: "sum",
    collect: () => undefined,
  });
}

/** One labelled series of a {@link LeanHistogram}. */
export class HistogramSeries {
  /** Per-bucket (not cumulative) counts; the last slot is +Inf. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(private readonly bounds: Float64Array) {
    this.counts = new Float64Array(bounds.length + 1);
  }

  /** Records one value. */
  observe(v: number): void {
    const b = this.bounds;
    let i = 0;
    while (i < b.length && v > (b[i] as number)) i++;
    (this.counts as { [k: number]: number })[i] = (this.counts[i] ?? 0) + 1;
    this.sum += v;
    this.count++;
  }
}

/** A histogram with series created up front, registered on `registry`. */
export class LeanHistogram<L extends string = never> {
  private readonly bounds: Float64Array;
  private readonly series = new Map<string, HistogramSeries>();

  constructor(
    registry: Registry,
    readonly name: string,
    readonly help: string,
    buckets: readonly number[],
    private readonly labelName?: L,
    labelValues: readonly string[] = [],
  ) {
    this.bounds = Float64Array.from([...buckets].sort((a, b) => a - b));
    for (const v of labelName === undefined ? [""] : labelValues) this.series.set(v, new HistogramSeries(this.bounds));
    // prom-client reads any object with name, help, type and get(); its types only list its own classes.
    register(registry, this);
  }

  /** The series of a label value (or the only series). */
  child(labelValue = ""): HistogramSeries {
    const s = this.series.get(labelValue);
    if (s === undefined) throw new Error(`internal: ${this.name} has no series ${labelValue}`);
    return s;
  }

  /** Prometheus values: cumulative buckets, sum and count per series. */
  get(): Promise<MetricObjectWithValues<MetricValueWithName<string>>> {
    const values: MetricValueWithName<string>[] = [];
    for (const [labelValue, s] of this.series) {
      const base: Record<string, string> = this.labelName === undefined ? {} : { [this.labelName]: labelValue };
      let acc = 0;
      this.bounds.forEach((le, i) => {
        acc += s.counts[i] ?? 0;
        values.push({ metricName: `${this.name}_bucket`, labels: { ...base, le }, value: acc });
      });
      values.push({ metricName: `${this.name}_bucket`, labels: { ...base, le: "+Inf" }, value: s.count });
      values.push({ metricName: `${this.name}_sum`, labels: base, value: s.sum });
      values.push({ metricName: `${this.name}_count`, labels: base, value: s.count });
    }
    return exported(this.name, this.help, "histogram", values);
  }

  /** Clears every series (prom-client's registry.resetMetrics). */
  reset(): void {
    for (const s of this.series.values()) {
      s.counts.fill(0);
      s.sum = 0;
      s.count = 0;
    }
  }
}

/** A counter with one label whose values are known up front. */
export class LeanCounter<L extends string> {
  private readonly values: Float64Array;
  private readonly index = new Map<string, number>();

  constructor(
    registry: Registry,
    readonly name: string,
    readonly help: string,
    private readonly labelName: L,
    private readonly labelValues: readonly string[],
  ) {
    this.values = new Float64Array(labelValues.length);
    labelValues.forEach((v, i) => this.index.set(v, i));
    register(registry, this);
  }

  /** The slot of a label value, for {@link incAt}. */
  slot(labelValue: string): number {
    const i = this.index.get(labelValue);
    if (i === undefined) throw new Error(`internal: ${this.name} has no series ${labelValue}`);
    return i;
  }

  /** Adds one to the series in `slot`. */
  incAt(slot: number): void {
    (this.values as { [k: number]: number })[slot] = (this.values[slot] ?? 0) + 1;
  }

  /** Prometheus values, every series (zeros included). */
  get(): Promise<MetricObjectWithValues<MetricValueWithName<string>>> {
    const values = this.labelValues.map((v, i) => ({ labels: { [this.labelName]: v }, value: this.values[i] ?? 0 }));
    return exported(this.name, this.help, "counter", values);
  }

  /** Clears every series. */
  reset(): void {
    this.values.fill(0);
  }
}
