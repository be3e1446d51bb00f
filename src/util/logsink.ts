/**
 * The destination of the JSON-lines log: lines are queued and written to a
 * file descriptor (stdout) once per turn of the event loop, together (in
 * writes of whole lines up to PIPE_BUF bytes, which pipes never interleave
 * with other processes' writes), so a flood of denial lines costs a write per
 * dozen lines, not one per line.
 *
 * Writes are synchronous (like pino's default destination): nothing is ever
 * in flight on another thread, so what is queued when the process exits is
 * written by the `exit` handler and no line is lost. When the descriptor is
 * non-blocking and full (EAGAIN: a pipe whose reader is behind), the rest is
 * retried on a timer instead of blocking the event loop.
 *
 * Why not pino's sonic-boom: its `write` measures the byte length of the
 * whole pending batch for every line it appends, which under load made the
 * log line about a fifth of a denied request's instructions (BENCHMARKS.md).
 */
import { writeSync } from "node:fs";

/** Default for the pending characters past which new lines are dropped (and counted) instead of queued: a stuck stdout must not exhaust memory. */
export const MAX_PENDING_CHARS = 64 * 1024 * 1024;

const RETRY_MS = 10;
/** Linux's PIPE_BUF: a pipe write of at most this many bytes is never interleaved with another process's. */
const PIPE_BUF = 4096;

/**
 * Where the next write of `buf` should end: after the last whole line within
 * PIPE_BUF bytes, so lines from cluster workers sharing one stdout pipe never
 * interleave mid-line (a single line longer than that goes alone).
 */
function atomicEnd(buf: Buffer): number {
  if (buf.length <= PIPE_BUF) return buf.length;
  const nl = buf.lastIndexOf(0x0a, PIPE_BUF - 1);
  if (nl >= 0) return nl + 1;
  const next = buf.indexOf(0x0a, PIPE_BUF);
  return next < 0 ? buf.length : next + 1;
}
const NAP = new Int32Array(new SharedArrayBuffer(4));

/** What a {@link LineSink} reports about itself. */
export interface LineSinkEvents {
  /** `n` lines were dropped because the destination did not keep up; called once it takes lines again. */
  dropped?(n: number): void;
}

/** Writes strings to `fd` in order, batched per event-loop turn; {@link flushSync} before exiting. */
export class LineSink {
  private queue: string[] = [];
  private queuedChars = 0;
  /** Bytes taken from the queue but not yet accepted by the descriptor (after EAGAIN or a partial write). */
  private unwritten: Buffer | undefined;
  private scheduled = false;
  private retryTimer: NodeJS.Timeout | undefined;
  private waiters: Array<() => void> = [];
  private droppedLines = 0;
  private broken = false;
  private readonly turn = (): void => {
    this.scheduled = false;
    this.retryTimer = undefined;
    this.writeOut();
  };

  constructor(
    private readonly fd: number,
    private readonly events: LineSinkEvents = {},
    private readonly maxPendingChars = MAX_PENDING_CHARS,
  ) {}

  /** Queues `line` (already terminated); false when it was dropped (queue over its limit, or the destination failed). */
  write(line: string): boolean {
    if (this.broken) return false;
    if (this.queuedChars + line.length > this.maxPendingChars) {
      this.droppedLines++;
      return false;
    }
    this.queue.push(line);
    this.queuedChars += line.length;
    if (!this.scheduled && this.retryTimer === undefined) {
      this.scheduled = true;
      setImmediate(this.turn);
    }
    return true;
  }

  /** Calls `cb` once every line queued so far is written (or the destination failed). */
  flush(cb: () => void): void {
    if (this.idle()) cb();
    else this.waiters.push(cb);
  }

  /**
   * Writes everything queued now, for the process's `exit` event: a full
   * non-blocking pipe is waited out (1 ms naps) for up to `timeoutMs`.
   */
  flushSync(timeoutMs = 5000): void {
    const deadline = Date.now() + timeoutMs;
    this.writeOut();
    while (!this.broken && !this.idle() && Date.now() < deadline) {
      Atomics.wait(NAP, 0, 0, 1);
      this.writeOut();
    }
  }

  private idle(): boolean {
    return this.unwritten === undefined && this.queue.length === 0;
  }

  /** Writes what it can now; on EAGAIN schedules a retry. */
  private writeOut(): void {
    if (this.unwritten === undefined && this.queue.length > 0) {
      this.unwritten = Buffer.from(this.queue.length === 1 ? (this.queue[0] as string) : this.queue.join(""));
      this.queue = [];
      this.queuedChars = 0;
    }
    while (this.unwritten !== undefined) {
      const buf = this.unwritten;
      let n: number;
      try {
        n = writeSync(this.fd, buf, 0, atomicEnd(buf));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code === "EAGAIN") {
          this.retryTimer ??= setTimeout(this.turn, RETRY_MS);
          return;
        }
        // EPIPE, EBADF…: nowhere left to log to; stop trying.
        this.broken = true;
        this.unwritten = undefined;
        this.queue = [];
        this.queuedChars = 0;
        break;
      }
      this.unwritten = n < buf.length ? buf.subarray(n) : undefined;
    }
    if (this.droppedLines > 0 && !this.broken) {
      const n = this.droppedLines;
      this.droppedLines = 0;
      this.events.dropped?.(n);
    }
    if (this.idle() || this.broken) {
      const waiters = this.waiters;
      this.waiters = [];
      for (const w of waiters) w();
    }
  }
}
