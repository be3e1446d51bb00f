/**
 * Request bodies before forwarding (SPEC §4 `limits`): a small body is read
 * whole before an upstream connection is taken, so a client that drips its
 * body holds no upstream connection; a larger one is streamed. Either way a
 * body that sends nothing for `idleMs` ends the request.
 */
import type { IncomingMessage } from "node:http";
import { Readable } from "node:stream";

/** Thrown into the upstream request when the client's body stalls past the idle limit. */
export class BodyIdleError extends Error {
  constructor(idleMs: number) {
    super(`request body sent nothing for ${idleMs} ms`);
    this.name = "BodyIdleError";
  }
}

/** What reading the start of a body gave. */
export type BodyStart =
  | { readonly kind: "whole"; readonly body: Buffer }
  | { readonly kind: "stream"; readonly body: Readable }
  | { readonly kind: "idle" }
  | { readonly kind: "aborted" };

/**
 * Reads `req`'s body up to `maxBytes`: `done` gets the whole body when it
 * ends within that, a stream (what was read, then the rest, still under the
 * idle limit) when it is longer, `idle` when it stalls for `idleMs`, and
 * `aborted` when the client leaves. A Content-Length above `maxBytes` streams
 * at once. `done` is called once.
 */
export function readBody(
  req: IncomingMessage,
  maxBytes: number,
  idleMs: number,
  done: (start: BodyStart) => void,
): void {
  const declared = req.headers["content-length"];
  if (declared !== undefined && Number(declared) > maxBytes) {
    done({ kind: "stream", body: Readable.from(streamRest([], req, idleMs), { objectMode: false }) });
    return;
  }
  const chunks: Buffer[] = [];
  let size = 0;
  const settle = (start: BodyStart): void => {
    clearTimeout(timer);
    req.off("data", onData);
    req.off("end", onEnd);
    req.off("close", onClose);
    done(start);
  };
  const onData = (chunk: Buffer): void => {
    chunks.push(chunk);
    size += chunk.length;
    if (size > maxBytes) {
      req.pause();
      settle({ kind: "stream", body: Readable.from(streamRest(chunks, req, idleMs), { objectMode: false }) });
    } else timer.refresh();
  };
  const onEnd = (): void => {
    settle({ kind: "whole", body: chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks, size) });
  };
  const onClose = (): void => {
    if (!req.complete) settle({ kind: "aborted" });
  };
  const timer = setTimeout(() => settle({ kind: "idle" }), idleMs);
  req.on("data", onData);
  req.on("end", onEnd);
  req.on("close", onClose);
}

/** Yields `first`, then the rest of `req`; waiting more than `idleMs` for the client's next chunk throws {@link BodyIdleError}. */
async function* streamRest(first: readonly Buffer[], req: IncomingMessage, idleMs: number): AsyncGenerator<Buffer> {
  yield* first;
  // Not destroyed on an early return: keyfence still answers on that connection.
  const it = req.iterator({ destroyOnReturn: false })[Symbol.asyncIterator]();
  for (;;) {
    let timer: NodeJS.Timeout | undefined;
    const stalled = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new BodyIdleError(idleMs)), idleMs);
    });
    let next: IteratorResult<unknown>;
    try {
      next = await Promise.race([it.next(), stalled]);
    } finally {
      clearTimeout(timer);
    }
    if (next.done === true) return;
    yield next.value as Buffer;
  }
}
