/**
 * `workers: N` (or "auto"): a node:cluster of proxy workers sharing the public
 * port, and a primary that runs the admin listener. Every worker loads and
 * watches the same keys file; after each management API write the primary
 * has every worker load it and waits for all of them before answering, so a
 * change is in force on every worker when the API says it is. Metrics and
 * observed sources are gathered from every process on demand.
 */
import cluster, { type Worker } from "node:cluster";
import type { Logger } from "pino";
import { AggregatorRegistry, type MetricObjectWithValues, type MetricValue, type Registry } from "prom-client";
import type { Config } from "../config/config.js";
import type { ObservedSource } from "../metrics/sources.js";
import { flushLogger, logListening, startSidecar, type ClusterLink, type Sidecar } from "./sidecar.js";

/** A request from the primary to a worker. */
type Request =
  | { kf: "req"; id: number; op: "reload" | "metrics" | "stop" }
  | { kf: "req"; id: number; op: "sources"; keyId: string };

/** Messages from a worker. */
type Reply =
  | { kf: "res"; id: number; ok: boolean; data?: unknown; error?: string }
  | { kf: "ready"; port: number; decisionPort?: number };

/** How long the primary waits for a worker's answer (a reload of a large file included). */
const REQUEST_TIMEOUT_MS = 30_000;

/** Merges the observed sources of several workers by network. */
export function mergeSources(lists: readonly ObservedSource[][]): ObservedSource[] {
  const by = new Map<string, ObservedSource>();
  for (const list of lists) {
    for (const s of list) {
      const prev = by.get(s.network);
      by.set(
        s.network,
        prev === undefined
          ? s
          : {
              network: s.network,
              requests: prev.requests + s.requests,
              denied: prev.denied + s.denied,
              first_seen: prev.first_seen < s.first_seen ? prev.first_seen : s.first_seen,
              last_seen: prev.last_seen > s.last_seen ? prev.last_seen : s.last_seen,
            },
      );
    }
  }
  return [...by.values()].sort((a, b) => (a.last_seen < b.last_seen ? 1 : a.last_seen > b.last_seen ? -1 : 0));
}

/** Runs this process as a cluster worker: the proxy only, answering the primary's requests. */
export async function runWorker(config: Config, log: Logger): Promise<Sidecar> {
  const sidecar = await startSidecar(config, log.child({ worker: cluster.worker?.id }), { role: "worker" });
  const send = (m: Reply): void => {
    if (process.connected) process.send?.(m);
  };
  process.on("message", (raw: unknown) => {
    const m = raw as Request;
    if (m.kf !== "req") return;
    const answer = (p: Promise<unknown>): void => {
      p.then(
        (data) => send({ kf: "res", id: m.id, ok: true, data }),
        (err: unknown) => send({ kf: "res", id: m.id, ok: false, error: (err as Error).message }),
      );
    };
    switch (m.op) {
      case "reload":
        answer(sidecar.store.refresh());
        break;
      case "metrics":
        answer(sidecar.registry.getMetricsAsJSON());
        break;
      case "sources":
        answer(Promise.resolve(sidecar.sources.sources(m.keyId)));
        break;
      case "stop":
        answer(sidecar.stop());
        break;
    }
  });
  // The primary gone means nobody can manage this worker any more.
  process.on("disconnect", () => {
    void sidecar
      .stop()
      .then(() => flushLogger(log))
      .then(() => process.exit(0));
  });
  send({ kf: "ready", port: sidecar.proxyAddress?.port ?? 0, decisionPort: sidecar.decisionAddress?.port });
  return sidecar;
}

/** The primary's workers: forking (and re-forking when one exits), and requests to them over IPC. */
class WorkerPool {
  readonly workers = new Set<Worker>();
  private readonly pending = new Map<
    number,
    { resolve: (v: unknown) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }
  >();
  private seq = 0;
  /** Set when stopping: exited workers are no longer replaced. */
  stopping = false;
  /** The proxy port the workers share. */
  port = 0;
  /** The decision port the workers share, if any. */
  decisionPort: number | undefined;

  constructor(private readonly log: Logger) {}

  /** Sends `op` to worker `w`; rejects when it fails or takes longer than {@link REQUEST_TIMEOUT_MS}. */
  request(w: Worker, op: Request["op"], extra: { keyId?: string } = {}): Promise<unknown> {
    return new Promise((resolve, reject) => {
      const id = ++this.seq;
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`worker ${w.id} did not answer ${op} within ${REQUEST_TIMEOUT_MS} ms`));
      }, REQUEST_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      w.send({ kf: "req", id, op, ...extra });
    });
  }

  /** Forks a worker; resolves when it is ready, rejects when it exits before. */
  fork(): Promise<Worker> {
    return new Promise((resolve, reject) => {
      const w = cluster.fork({ KEYFENCE_WORKER: "1" });
      const onExit = (code: number | null, signal: string | null): void => {
        this.workers.delete(w);
        reject(new Error(`worker exited before it was ready (code ${code ?? signal})`));
      };
      w.once("exit", onExit);
      w.on("message", (m: Reply) => {
        if (m.kf === "ready") {
          this.port = m.port;
          this.decisionPort = m.decisionPort;
          w.off("exit", onExit);
          this.workers.add(w);
          w.once("exit", (code, signal) => this.exited(w, code, signal));
          resolve(w);
        } else if (m.kf === "res") {
          const p = this.pending.get(m.id);
          if (!p) return;
          this.pending.delete(m.id);
          clearTimeout(p.timer);
          if (m.ok) p.resolve(m.data);
          else p.reject(new Error(m.error ?? "worker request failed"));
        }
      });
    });
  }

  /** How the primary's sidecar reaches the workers; `own` is the primary's registry. */
  link(own: () => Registry): ClusterLink {
    return {
      metrics: async () => {
        const mine = await own().getMetricsAsJSON();
        const others = (await Promise.all(
          [...this.workers].map((w) => this.request(w, "metrics")),
        )) as MetricObjectWithValues<MetricValue<string>>[][];
        return AggregatorRegistry.aggregate([mine, ...others]).metrics();
      },
      sources: async (keyId) =>
        mergeSources(
          (await Promise.all(
            [...this.workers].map((w) => this.request(w, "sources", { keyId })),
          )) as ObservedSource[][],
        ),
      syncWorkers: async () => {
        const results = await Promise.allSettled([...this.workers].map((w) => this.request(w, "reload")));
        for (const r of results) {
          if (r.status === "rejected")
            this.log.error(
              { event: "worker_sync_failed", err: r.reason as Error },
              "a worker did not confirm the reload",
            );
        }
      },
    };
  }

  /** Stops every worker: drained when it answers, killed when it does not. */
  async stopAll(): Promise<void> {
    this.stopping = true;
    await Promise.all(
      [...this.workers].map(
        (w) =>
          new Promise<void>((resolve) => {
            w.once("exit", () => resolve());
            this.request(w, "stop").then(
              () => w.disconnect(),
              () => w.kill("SIGKILL"),
            );
          }),
      ),
    );
  }

  private exited(w: Worker, code: number | null, signal: string | null): void {
    this.workers.delete(w);
    if (this.stopping) return;
    this.log.error({ event: "worker_exited", worker: w.id, code, signal }, "worker exited; starting a new one");
    setTimeout(() => {
      if (!this.stopping) this.fork().catch((err: unknown) => this.log.error({ err }, "cannot restart worker"));
    }, 1000).unref();
  }
}

/** Runs this process as the cluster primary: forks `config.workers` proxies, then serves the admin listener. */
export async function runPrimary(config: Config, log: Logger): Promise<{ stop(): Promise<void> }> {
  // Workers accept connections themselves (the kernel spreads them); the primary never relays.
  cluster.schedulingPolicy = cluster.SCHED_NONE;
  cluster.setupPrimary({ exec: process.argv[1] ?? "", args: process.argv.slice(2) });
  const pool = new WorkerPool(log);
  await Promise.all(Array.from({ length: config.workers }, () => pool.fork()));

  const sidecar: Sidecar = await startSidecar(config, log, {
    role: "primary",
    cluster: pool.link(() => sidecar.registry),
  });
  logListening(log, config, {
    proxy: { host: config.listen.host, port: pool.port },
    admin: sidecar.adminAddress,
    decision:
      config.decision && pool.decisionPort !== undefined
        ? { host: config.decision.listen.host, port: pool.decisionPort }
        : undefined,
    snapshot: sidecar.store.snapshot,
    workers: config.workers,
  });

  return {
    async stop() {
      pool.stopping = true;
      log.info(
        { event: "draining", timeout_ms: config.drainTimeoutMs, workers: pool.workers.size },
        "stopping: draining workers",
      );
      await pool.stopAll();
      await sidecar.stop();
    },
  };
}
