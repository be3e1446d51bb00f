/**
 * The longest event-loop stall measured two ways: wall time between ticks of
 * a 1 ms timer (what a request waiting in the queue sees, machine load
 * included), and the main thread's own CPU time between those ticks (from
 * Linux's /proc/thread-self/schedstat: the work the code did in one turn,
 * whatever the neighbours do). On a loaded machine the first measures the
 * machine; the second measures the code.
 */
import { readFileSync } from "node:fs";

/** The main thread's on-CPU and run-queue-wait nanoseconds so far (undefined off Linux). */
function schedstat(): [number, number] | undefined {
  try {
    const [cpu, wait] = readFileSync("/proc/thread-self/schedstat", "utf8").split(" ");
    return [Number(cpu), Number(wait)];
  } catch {
    return undefined;
  }
}

/**
 * Samples until stopped (never keeping the process alive); `stop()` returns
 * the longest gaps in ms (wall, and main-thread CPU), and how much of the
 * longest wall gap the thread spent waiting for a core.
 */
export function stallMonitor(): { stop(): { wallMs: number; cpuMs: number; waitMs: number } } {
  let last = performance.now();
  let lastStat = schedstat();
  let wallMs = 0;
  let cpuMs = 0;
  let waitMs = 0;
  let running = true;
  const tick = (): void => {
    if (!running) return;
    const now = performance.now();
    const stat = schedstat();
    if (now - last > wallMs) {
      wallMs = now - last;
      if (stat !== undefined && lastStat !== undefined) waitMs = (stat[1] - lastStat[1]) / 1e6;
    }
    if (stat !== undefined && lastStat !== undefined) cpuMs = Math.max(cpuMs, (stat[0] - lastStat[0]) / 1e6);
    last = now;
    lastStat = stat;
    setTimeout(tick, 1).unref();
  };
  setTimeout(tick, 1).unref();
  return {
    stop() {
      running = false;
      return { wallMs, cpuMs: lastStat === undefined ? NaN : cpuMs, waitMs: lastStat === undefined ? NaN : waitMs };
    },
  };
}
