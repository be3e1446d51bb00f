// @ts-check
import js from "@eslint/js";
import tseslint from "typescript-eslint";

/** Modules the core may not import: I/O, listeners, metrics and logging. */
const IO = [
  "node:http",
  "node:https",
  "node:net",
  "node:tls",
  "node:fs",
  "node:fs/promises",
  "node:child_process",
  "node:worker_threads",
  "node:cluster",
  "prom-client",
  "pino",
  "undici",
  "redis",
  "js-yaml",
  "yaml",
];

/**
 * A flat-config entry that forbids files matching `files` to import the
 * folders of src/ named in `folders` (at any depth of relative path) and the
 * modules in `modules`.
 */
function layer(files, folders, modules = []) {
  const patterns = folders.map((f) => ({
    group: [`../${f}/*`, `../../${f}/*`, `../../../${f}/*`],
    message: `layering: this folder may not import src/${f} (docs/ARCHITECTURE.md)`,
  }));
  const paths = modules.map((name) => ({ name, message: "layering: the core imports no I/O (docs/ARCHITECTURE.md)" }));
  return [{ files: [files], rules: { "no-restricted-imports": ["error", { patterns, paths }] } }];
}

export default tseslint.config(
  { ignores: ["dist/", "node_modules/", "coverage/", "**/*.mjs", "eslint.config.js", "src/admin/assets/*.js"] },
  js.configs.recommended,
  ...tseslint.configs.strictTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      "@typescript-eslint/no-floating-promises": "error",
      "@typescript-eslint/no-misused-promises": "error",
      "@typescript-eslint/no-explicit-any": "error",
      "@typescript-eslint/restrict-template-expressions": ["error", { allowNumber: true }],
      "@typescript-eslint/no-non-null-assertion": "off",
      "@typescript-eslint/no-unnecessary-condition": "off",
      "@typescript-eslint/no-confusing-void-expression": "off",
      "@typescript-eslint/no-extraneous-class": "off",
    },
  },
  // Functions in src/ stay under 100 lines: split by concern (parseConfig per section, the route groups).
  {
    files: ["src/**/*.ts"],
    rules: { "max-lines-per-function": ["error", { max: 100, skipBlankLines: true, skipComments: true }] },
  },
  // Layers (docs/ARCHITECTURE.md): imports point inward only. The core (ip,
  // clientip, policy) knows plain values; util is a leaf of helpers that
  // imports no other folder; the store knows no listener; the shells never
  // reach into each other.
  ...layer("src/util/**/*.ts", [
    "ip",
    "clientip",
    "policy",
    "store",
    "metrics",
    "config",
    "proxy",
    "decision",
    "admin",
    "cli",
  ]),
  ...layer(
    "src/ip/**/*.ts",
    ["clientip", "policy", "store", "metrics", "config", "proxy", "decision", "admin", "cli", "util"],
    IO,
  ),
  ...layer(
    "src/clientip/**/*.ts",
    ["policy", "store", "metrics", "config", "proxy", "decision", "admin", "cli", "util"],
    IO,
  ),
  ...layer("src/policy/**/*.ts", ["store", "metrics", "config", "proxy", "decision", "admin", "cli", "util"], IO),
  ...layer("src/store/**/*.ts", ["metrics", "proxy", "decision", "admin", "cli"]),
  ...layer("src/metrics/**/*.ts", ["config", "proxy", "decision", "admin", "cli"]),
  ...layer("src/config/**/*.ts", ["metrics", "proxy", "decision", "admin", "cli"]),
  ...layer("src/net/**/*.ts", ["policy", "store", "metrics", "config", "proxy", "decision", "admin", "cli"]),
  ...layer("src/proxy/**/*.ts", ["decision", "admin", "cli"]),
  ...layer("src/decision/**/*.ts", ["proxy", "admin", "cli"]),
  ...layer("src/admin/**/*.ts", ["proxy", "decision", "cli"]),
  {
    files: ["test/**/*.ts", "bench/**/*.ts"],
    rules: {
      "@typescript-eslint/no-floating-promises": [
        "error",
        {
          allowForKnownSafeCalls: [
            {
              from: "package",
              package: "node:test",
              name: ["test", "describe", "it", "before", "after", "beforeEach", "afterEach"],
            },
          ],
        },
      ],
      "@typescript-eslint/no-unsafe-assignment": "off",
      "@typescript-eslint/no-unsafe-member-access": "off",
      "@typescript-eslint/no-misused-spread": "off",
    },
  },
);
