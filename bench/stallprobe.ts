/**
 * Preloaded into a keyfence started by a benchmark (`node --import
 * dist/bench/stallprobe.js`): measures the process's longest event-loop stall
 * with {@link stallMonitor} (a 1 ms timer, so a reading is the stall plus at
 * most 1 ms) and, on SIGUSR2, writes the longest stall since the last reading
 * to the file named by `KEYFENCE_STALL_FILE`, then starts over. prom-client's
 * `nodejs_eventloop_lag_max_seconds` cannot stand in: its histogram records
 * the whole interval between ticks of a 10 ms timer, so it reads 10 ms with
 * no stall at all and up to 10 ms more than the stall.
 */
import { writeFileSync } from "node:fs";
import { stallMonitor } from "./stall.js";

const file = process.env["KEYFENCE_STALL_FILE"];
if (file !== undefined) {
  let monitor = stallMonitor();
  let reading = 0;
  process.on("SIGUSR2", () => {
    const stall = monitor.stop();
    monitor = stallMonitor();
    writeFileSync(file, JSON.stringify({ reading: ++reading, ...stall }));
  });
}
