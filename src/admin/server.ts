/**
 * The admin listener: health, metrics, the management API and the dashboard.
 * A small router (exact paths and `:param` segments) with JSON errors; the
 * public listener never answers these routes.
 */
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { Logger } from "pino";
import { Registry } from "prom-client";
import { readBearer } from "../policy/credential.js";
import { createLimitedServer, listenOn, sendJson } from "../util/http.js";
import { StoreUnavailableError } from "../store/store.js";
import { ApiError, storeUnavailable } from "./errors.js";

/** What the admin listener needs. */
export interface AdminDeps {
  /** The Prometheus text of `/metrics` (in a cluster: every process merged). */
  readonly metrics: () => Promise<string>;
  readonly log: Logger;
  /** Whether the key store is reachable (`GET /readyz`, SPEC §6); always ready when absent. */
  readonly ready?: () => { up: boolean; reason: string; store: string };
}

/** Content type of the Prometheus text exposition format. */
const PROMETHEUS_CONTENT_TYPE = Registry.PROMETHEUS_CONTENT_TYPE;

/** Path parameters of a matched route. */
export type Params = Readonly<Record<string, string>>;

/**
 * How a route authenticates its caller before its handler runs: `check`
 * resolves the caller, throws the {@link ApiError} to refuse with, or answers
 * the request itself (a redirect to sign-in) and resolves `undefined`.
 */
export interface RouteAuth<C> {
  /** The name in the route table: `public`, `operator`, `session`, ... */
  readonly name: string;
  readonly check: (req: IncomingMessage, res: ServerResponse) => Promise<C | undefined>;
}

/** No authentication: the handler's caller is `null`. */
export const PUBLIC: RouteAuth<null> = { name: "public", check: () => Promise.resolve(null) };

/** What a handler gets besides the request and response. */
export interface RouteContext<C> {
  readonly params: Params;
  readonly url: URL;
  /** The caller its route's {@link RouteAuth} resolved. */
  readonly caller: C;
}

/** A route handler; throwing an {@link ApiError} answers it as JSON. */
export type Handler<C> = (req: IncomingMessage, res: ServerResponse, ctx: RouteContext<C>) => void | Promise<void>;

/** One declared route, as the route table lists it. */
export interface RouteInfo {
  readonly method: string;
  readonly path: string;
  /** The name of its {@link RouteAuth}. */
  readonly auth: string;
}

/** A declared method of a path: its authentication, then its handler. */
type Endpoint = (req: IncomingMessage, res: ServerResponse, params: Params, url: URL) => Promise<void>;

interface Route {
  readonly path: string;
  readonly segments: readonly string[];
  readonly methods: Partial<Record<string, { auth: string; run: Endpoint }>>;
}

/** Answers an API error as JSON with its reason header. */
export function sendError(res: ServerResponse, err: ApiError): void {
  // Do not read the rest of a body that was refused for its size.
  if (err.status === 413) res.shouldKeepAlive = false;
  sendJson(res, err.status, err.body(), { "x-keyfence-reason": err.code, ...err.headers });
}

/** The admin listener. */
export class AdminServer {
  readonly server: Server;
  private readonly routes: Route[] = [];

  constructor(private readonly deps: AdminDeps) {
    this.server = createLimitedServer({ requestTimeout: 60_000, keepAliveTimeout: 5_000 });
    this.route("GET", "/healthz", { auth: PUBLIC }, (_req, res) => sendJson(res, 200, { status: "ok" }));
    this.route("GET", "/readyz", { auth: PUBLIC }, (_req, res) => {
      const r = this.deps.ready?.();
      if (r === undefined || r.up) sendJson(res, 200, { status: "ready" });
      else sendJson(res, 503, { status: "unavailable", store: r.store, message: r.reason });
    });
    this.route("GET", "/metrics", { auth: PUBLIC }, async (_req, res) => {
      const text = await this.deps.metrics();
      res.writeHead(200, { "content-type": PROMETHEUS_CONTENT_TYPE, "cache-control": "no-store" });
      res.end(text);
    });
    this.server.on("request", (req: IncomingMessage, res: ServerResponse) => {
      this.dispatch(req, res).catch((err: unknown) => {
        if (err instanceof ApiError) {
          sendError(res, err);
          return;
        }
        if (err instanceof StoreUnavailableError) {
          sendError(res, storeUnavailable(err));
          return;
        }
        this.deps.log.error(
          { err, event: "admin_error", method: req.method, path: (req.url ?? "").split("?")[0] },
          "admin request failed",
        );
        sendJson(res, 500, { message: "internal error" });
      });
    });
    this.server.on("clientError", (_err, socket) => socket.destroy());
  }

  /**
   * Declares `method path`: `auth` authenticates every request before
   * `handler` runs; `path` segments starting with ":" capture a parameter.
   */
  route<C>(method: string, path: string, options: { readonly auth: RouteAuth<C> }, handler: Handler<C>): void {
    const segments = path.split("/");
    let r = this.routes.find((x) => x.path === path);
    if (r === undefined) {
      r = { path, segments, methods: {} };
      this.routes.push(r);
    }
    const { auth } = options;
    r.methods[method] = {
      auth: auth.name,
      run: async (req, res, params, url) => {
        const caller = await auth.check(req, res);
        if (caller !== undefined) await handler(req, res, { params, url, caller });
      },
    };
  }

  /** Every declared route with the name of its authentication, in declaration order. */
  routeTable(): RouteInfo[] {
    return this.routes.flatMap((r) =>
      Object.entries(r.methods).map(([method, m]) => ({ method, path: r.path, auth: m?.auth ?? "" })),
    );
  }

  /** Starts listening; resolves with the bound address. */
  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return listenOn(this.server, host, port);
  }

  /** Stops the listener and its connections. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
  }

  private match(path: string): { route: Route; params: Record<string, string> } | undefined {
    const parts = path.split("/");
    outer: for (const route of this.routes) {
      if (route.segments.length !== parts.length) continue;
      const params: Record<string, string> = {};
      for (let i = 0; i < parts.length; i++) {
        const seg = route.segments[i] as string;
        const part = parts[i] as string;
        if (seg.startsWith(":")) {
          if (part === "") continue outer;
          try {
            params[seg.slice(1)] = decodeURIComponent(part);
          } catch {
            continue outer;
          }
        } else if (seg !== part) continue outer;
      }
      return { route, params };
    }
    return undefined;
  }

  private async dispatch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const bearer = readBearer(req.rawHeaders);
    if (bearer.kind === "invalid" && bearer.reason === "multiple_authorization") {
      throw new ApiError("multiple_authorization");
    }
    let url: URL;
    try {
      url = new URL(req.url ?? "/", "http://admin.invalid");
    } catch {
      throw new ApiError("invalid_request", "malformed request target");
    }
    const found = this.match(url.pathname);
    if (found === undefined) throw new ApiError("not_found");
    const method = req.method === "HEAD" ? "GET" : (req.method ?? "GET");
    const endpoint = found.route.methods[method];
    if (endpoint === undefined) {
      throw new ApiError("method_not_allowed", `method ${req.method ?? ""} not allowed`, {
        headers: { allow: Object.keys(found.route.methods).join(", ") },
      });
    }
    await endpoint.run(req, res, found.params, url);
  }
}
