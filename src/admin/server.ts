/**
 * The admin listener: health, metrics, and (issue 3) the management API.
 * The public listener never answers these routes.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Logger } from "pino";
import type { Registry } from "prom-client";
import { readBearer } from "../policy/credential.js";
import { SERVER_LIMITS } from "../proxy/server.js";
import { sendJson } from "../util/http.js";

/** What the admin listener needs. */
export interface AdminDeps {
  readonly registry: Registry;
  readonly log: Logger;
}

type Handler = (req: IncomingMessage, res: ServerResponse) => void | Promise<void>;

/** The admin listener. */
export class AdminServer {
  readonly server: Server;
  private readonly routes = new Map<string, Partial<Record<string, Handler>>>();

  constructor(private readonly deps: AdminDeps) {
    this.server = createServer({
      maxHeaderSize: SERVER_LIMITS.maxHeaderSize,
      headersTimeout: SERVER_LIMITS.headersTimeout,
      requestTimeout: 60_000,
      keepAliveTimeout: 5_000,
    });
    this.route("/healthz", "GET", (_req, res) => sendJson(res, 200, { status: "ok" }));
    this.route("/metrics", "GET", async (_req, res) => {
      const text = await this.deps.registry.metrics();
      res.writeHead(200, { "content-type": this.deps.registry.contentType, "cache-control": "no-store" });
      res.end(text);
    });
    this.server.on("request", (req: IncomingMessage, res: ServerResponse) => {
      this.dispatch(req, res).catch((err: unknown) => {
        this.deps.log.error({ err, event: "admin_error", path: req.url }, "admin request failed");
        sendJson(res, 500, { message: "internal error" });
      });
    });
    this.server.on("clientError", (_err, socket) => socket.destroy());
  }

  /** Registers a handler for an exact path and method. */
  route(path: string, method: string, handler: Handler): void {
    const byMethod = this.routes.get(path) ?? {};
    byMethod[method] = handler;
    this.routes.set(path, byMethod);
  }

  /** Starts listening; resolves with the bound address. */
  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(port, host, () => {
        this.server.off("error", reject);
        const a = this.server.address();
        resolve(typeof a === "object" && a !== null ? { host: a.address, port: a.port } : { host, port });
      });
    });
  }

  /** Stops the listener and its connections. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    await closed;
  }

  private async dispatch(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const bearer = readBearer(req.rawHeaders);
    if (bearer.kind === "invalid" && bearer.reason === "multiple_authorization") {
      sendJson(
        res,
        400,
        { message: "multiple Authorization headers" },
        { "x-keyfence-reason": "multiple_authorization" },
      );
      return;
    }
    const url = req.url ?? "/";
    const q = url.indexOf("?");
    const path = q < 0 ? url : url.slice(0, q);
    const byMethod = this.routes.get(path);
    if (byMethod === undefined) {
      sendJson(res, 404, { message: "not found" });
      return;
    }
    const method = req.method === "HEAD" ? "GET" : (req.method ?? "GET");
    const handler = byMethod[method];
    if (handler === undefined) {
      sendJson(
        res,
        405,
        { message: `method ${req.method ?? ""} not allowed` },
        { allow: Object.keys(byMethod).join(", ") },
      );
      return;
    }
    await handler(req, res);
  }
}
