/** A dependency-free SVG chart: two horizontal bar panels side by side, one row per contender. */
import { escapeHtml } from "../src/admin/dashboard/html.js";

/** One row: `a` in the left panel, `b` in the right one. */
export interface Row {
  readonly label: string;
  readonly a: number;
  readonly b: number;
}

/** Renders the rows as an SVG document. */
export function barChart(title: string, rows: readonly Row[], aTitle: string, bTitle: string): string {
  const rowH = 26;
  const labelW = 270;
  const panelW = 300;
  const top = 56;
  const width = labelW + 2 * panelW + 60;
  const height = top + rows.length * rowH + 20;
  const maxA = Math.max(...rows.map((r) => (Number.isFinite(r.a) ? r.a : 0)), 1);
  const maxB = Math.max(...rows.map((r) => (Number.isFinite(r.b) ? r.b : 0)), 1);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="10" y="20" font-size="15" font-weight="bold">${escapeHtml(title)}</text>`,
    `<text x="${labelW}" y="44" fill="#555">${escapeHtml(aTitle)}</text>`,
    `<text x="${labelW + panelW + 30}" y="44" fill="#555">${escapeHtml(bTitle)}</text>`,
  ];
  rows.forEach((r, i) => {
    const y = top + i * rowH;
    const keyfence = r.label.startsWith("keyfence,");
    parts.push(`<text x="${labelW - 8}" y="${y + 15}" text-anchor="end">${escapeHtml(r.label)}</text>`);
    if (Number.isFinite(r.a)) {
      const w = Math.max(1, (r.a / maxA) * (panelW - 60));
      parts.push(
        `<rect x="${labelW}" y="${y + 4}" width="${w.toFixed(1)}" height="16" fill="${keyfence ? "#1f883d" : "#8c959f"}"/>`,
      );
      parts.push(
        `<text x="${(labelW + w + 4).toFixed(1)}" y="${y + 16}">${Math.round(r.a).toLocaleString("en-US")}</text>`,
      );
    }
    const x0 = labelW + panelW + 30;
    if (Number.isFinite(r.b)) {
      const w = Math.max(1, (r.b / maxB) * (panelW - 60));
      parts.push(
        `<rect x="${x0}" y="${y + 4}" width="${w.toFixed(1)}" height="16" fill="${keyfence ? "#0969da" : "#8c959f"}"/>`,
      );
      parts.push(`<text x="${(x0 + w + 4).toFixed(1)}" y="${y + 16}">${r.b.toFixed(1)}</text>`);
    }
  });
  parts.push("</svg>");
  return `${parts.join("\n")}\n`;
}
