# keyfence: reverse-proxy sidecar that pins API keys to trusted networks.
# Node 26 is the current Active LTS line (October 2026).
ARG NODE_IMAGE=node:26-slim

FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build:prod \
 && npm ci --omit=dev --ignore-scripts --no-audit --no-fund

FROM ${NODE_IMAGE}
ENV NODE_ENV=production \
    KEYFENCE_CONFIG=/etc/keyfence/keyfence.yaml \
    KEYFENCE_LISTEN=0.0.0.0:8080 \
    KEYFENCE_ADMIN_LISTEN=0.0.0.0:9090
WORKDIR /app
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist/src ./dist/src
COPY package.json ./
# The example configuration; mount your own directory over /etc/keyfence.
# The management API writes the keys file there, so it must be writable by uid 1000 (node).
COPY --chown=node:node config/ /etc/keyfence/
USER node
VOLUME ["/etc/keyfence"]
EXPOSE 8080 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9090/healthz').then(r => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["node", "dist/src/cli/main.js"]
CMD ["serve"]
