# keyfence: reverse-proxy sidecar that pins API keys to trusted networks.
# Node 26 is the current Active LTS line (since October 2026). Without a
# Docker engine or registry access, deploy/image-check.sh makes an equivalent
# base locally and passes it as --build-arg NODE_IMAGE=...
ARG NODE_IMAGE=node:26-slim

FROM ${NODE_IMAGE} AS build
# Behind a TLS-intercepting proxy, npm needs its CA: pass a file with
# --build-arg NODE_EXTRA_CA_CERTS=PATH and mount it there (build stage only).
ARG NODE_EXTRA_CA_CERTS
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build:prod \
 && npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM ${NODE_IMAGE}
ENV NODE_ENV=production \
    KEYFENCE_CONFIG=/etc/keyfence/keyfence.yaml
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist/src ./dist/src
COPY package.json ./
# The built-in configuration: the proxy on 0.0.0.0:8080, an empty keys file,
# no admin listener. Owned by root and read-only to keyfence: with an admin
# section keyfence writes the keys directory, so it refuses to start until a
# writable directory is mounted there (never writing into the container layer,
# where changes would vanish with the container). No VOLUME for the same reason.
COPY deploy/container/ /etc/keyfence/
# Numeric, so Kubernetes' runAsNonRoot can verify it (uid 1000 is "node").
USER 1000:1000
EXPOSE 8080
# Follows the configuration: the admin listener's /healthz, else the proxy's ping path.
HEALTHCHECK --interval=10s --timeout=10s --start-period=5s --retries=3 \
  CMD ["node", "/app/dist/src/cli/main.js", "healthcheck"]
ENTRYPOINT ["node", "/app/dist/src/cli/main.js"]
CMD ["serve"]
