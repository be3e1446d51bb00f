/**
 * A real `redis-server` for one test file (its own free port on loopback, no
 * persistence: `--save "" --appendonly no`), and a TCP relay in front of it
 * that a test can cut for one client only.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createServer, connect, type Server, type Socket } from "node:net";
import { after, before } from "node:test";
import type { KeyRecord } from "../../src/store/keysfile.js";
import { connectOnce, importRecords } from "../../src/store/redis/io.js";

/** A running redis-server. */
export interface RedisServer {
  readonly port: number;
  readonly url: string;
  /** Kills the server (SIGKILL: no save, like a crash) and waits for it to exit. */
  kill(): Promise<void>;
  /** Starts it again on the same port (empty: no persistence). */
  start(): Promise<void>;
}

/** A port free on 127.0.0.1 right now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      s.close(() => resolve(typeof addr === "object" && addr !== null ? addr.port : 0));
    });
  });
}

/** Starts `binary` on a free port, with `extraArgs` (`--requirepass pw`); resolves once it accepts connections (up to 10 s). */
export async function startRedis(binary: string, extraArgs: readonly string[] = []): Promise<RedisServer> {
  const port = await freePort();
  let child: ChildProcess | undefined;
  const launch = async (): Promise<void> => {
    const c = spawn(
      binary,
      [
        ...["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning"],
        ...extraArgs,
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    child = c;
    let out = "";
    c.stdout?.on("data", (d: Buffer) => (out += d.toString()));
    c.stderr?.on("data", (d: Buffer) => (out += d.toString()));
    const end = Date.now() + 10_000;
    for (;;) {
      if (await accepts(port)) return;
      if (c.exitCode !== null || Date.now() > end) {
        c.kill("SIGKILL"); // never leave a server behind a failed start
        throw new Error(`redis-server did not start:\n${out}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  };
  await launch();
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    async kill() {
      const c = child;
      if (c === undefined || c.exitCode !== null) return;
      const exited = new Promise((r) => c.once("exit", r));
      c.kill("SIGKILL");
      await exited;
    },
    start: launch,
  };
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.write("PING\r\n");
    });
    s.once("data", (d: Buffer) => {
      s.destroy();
      // Ready: PONG, or NOAUTH from a server with a password (still loading would be -LOADING).
      resolve(/^(\+PONG|-NOAUTH)/.test(d.toString()));
    });
    s.once("error", () => resolve(false));
  });
}

/**
 * A TCP relay to a port; `cut()` drops every connection and refuses new ones
 * until `restore()`; `hold()` keeps every connection open but passes no byte
 * either way (a Redis that hangs, as a stopped process does) until `release()`.
 */
export interface Relay {
  readonly url: string;
  cut(): void;
  restore(): void;
  hold(): void;
  release(): void;
  close(): Promise<void>;
}

/** Starts a relay on a free port to 127.0.0.1:`target`. */
export async function startRelay(target: number): Promise<Relay> {
  const sockets = new Set<Socket>();
  const pairs = new Set<[Socket, Socket]>();
  let open = true;
  let held = false;
  const join = ([client, upstream]: [Socket, Socket]): void => {
    client.pipe(upstream);
    upstream.pipe(client);
  };
  const server: Server = createServer((client) => {
    if (!open) {
      client.destroy();
      return;
    }
    const upstream = connect(target, "127.0.0.1");
    const pair: [Socket, Socket] = [client, upstream];
    sockets.add(client);
    sockets.add(upstream);
    pairs.add(pair);
    const drop = (): void => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
      pairs.delete(pair);
    };
    client.on("error", drop);
    upstream.on("error", drop);
    client.on("close", drop);
    upstream.on("close", drop);
    if (!held) join(pair);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const addr = server.address();
  const port = typeof addr === "object" && addr !== null ? addr.port : 0;
  return {
    url: `redis://127.0.0.1:${port}`,
    cut() {
      open = false;
      for (const s of sockets) s.destroy();
      sockets.clear();
    },
    restore() {
      open = true;
    },
    hold() {
      held = true;
      for (const [client, upstream] of pairs) {
        client.unpipe(upstream);
        upstream.unpipe(client);
        client.pause();
        upstream.pause();
      }
    },
    release() {
      held = false;
      for (const pair of pairs) join(pair);
    },
    async close() {
      open = false;
      for (const s of sockets) s.destroy();
      await new Promise((r) => server.close(r));
    },
  };
}

/** A one-off Redis connection, as `keyfence keys` opens one. */
export type RedisClient = Awaited<ReturnType<typeof connectOnce>>;

/** The redis-server of one suite, with a fresh key prefix per test and the store set-up steps tests share. */
export interface RedisFixture {
  readonly server: RedisServer;
  readonly url: string;
  readonly port: number;
  /** A key prefix no other test of the suite has used. */
  newPrefix(): string;
  /** Initializes the store under `prefix` with `records` (as `keyfence keys import` does). */
  seed(prefix: string, records?: readonly KeyRecord[]): Promise<void>;
  /** Runs `work` on a one-off connection, closed afterwards. */
  withClient<T>(work: (client: RedisClient) => Promise<T>): Promise<T>;
}

/**
 * Registers hooks in the calling `describe` block that start `binary` (from
 * `needBinary`) before its tests and kill it after them; prefixes start with
 * `tag`.
 */
export function redisFixture(binary: string | undefined, tag: string): RedisFixture {
  let server: RedisServer | undefined;
  let prefixes = 0;
  before(async () => {
    server = await startRedis(binary ?? "redis-server");
  });
  after(async () => {
    await server?.kill();
  });
  const ready = (): RedisServer => {
    if (server === undefined) throw new Error("redisFixture: used outside its suite's tests");
    return server;
  };
  const withClient = async <T>(work: (client: RedisClient) => Promise<T>): Promise<T> => {
    const c = await connectOnce(ready().url);
    try {
      return await work(c);
    } finally {
      c.destroy();
    }
  };
  return {
    get server() {
      return ready();
    },
    get url() {
      return ready().url;
    },
    get port() {
      return ready().port;
    },
    newPrefix: () => `${tag}${++prefixes}:`,
    seed: async (prefix, records = []) => {
      await withClient((c) => importRecords(c, prefix, records));
    },
    withClient,
  };
}
