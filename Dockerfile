# natpmp-bridge: the NAT-PMP bridge (and the natpmp client) in a small Node 20 image.
#
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 -t natpmp-bridge .
#   docker run --rm --env-file /etc/natpmp-bridge.env -p 5351:5351/udp --stop-timeout 30 natpmp-bridge
#   docker run --rm --env-file /etc/natpmp-bridge.env natpmp-bridge check --bridge-host 172.17.0.2
#
# The bins are esbuild bundles of plain JavaScript (no native addon), so they are built once on the build machine's
# platform and the runtime stage only adds Node. The V8 code cache that makes the bins start fast depends on the CPU
# architecture, so the runtime stage writes it for its own platform. SIGTERM starts the graceful shutdown (own rules
# and VPN mappings removed within SHUTDOWN_TIMEOUT, 10s): give `docker stop` more than that (--stop-timeout 30).

ARG NODE_IMAGE=node:20-alpine

# ---- build: npm ci and the bundled bins (packages/cli/dist/bin) ----
FROM --platform=$BUILDPLATFORM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json tsconfig.json ./
COPY packages/core/package.json packages/core/tsconfig.json packages/core/
COPY packages/server/package.json packages/server/tsconfig.json packages/server/
COPY packages/cli/package.json packages/cli/tsconfig.json packages/cli/build.mjs packages/cli/
# no install scripts: the root `prepare` would build before the sources are here
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY packages/core/src packages/core/src
COPY packages/server/src packages/server/src
COPY packages/cli/src packages/cli/src
RUN node packages/cli/build.mjs

# ---- runtime: Node and the two bundles, nothing else ----
FROM ${NODE_IMAGE}
LABEL org.opencontainers.image.title="natpmp-bridge" \
      org.opencontainers.image.description="NAT-PMP server for double NAT: a MikroTik router behind a NAT-PMP VPN" \
      org.opencontainers.image.licenses="MIT"
WORKDIR /app
# package.json gives the bins' loaders their module type ("type": "module")
COPY --from=build /src/packages/cli/package.json ./package.json
COPY --from=build /src/packages/cli/dist/bin/natpmp-bridge.js /src/packages/cli/dist/bin/natpmp-bridge.cjs ./dist/bin/
COPY --from=build /src/packages/cli/dist/bin/natpmp.js /src/packages/cli/dist/bin/natpmp.cjs ./dist/bin/
# V8's heap sized for a long-running bridge (see the README, "Memory"): a young generation of at most 16 MB, an old
# generation of at most 512 MB (on 64-bit grown to at most 1.4× its live size; musl's malloc needs no arena limit).
# Set before the code caches are written: V8 accepts a cache only under the flags it was written with.
ENV NODE_OPTIONS="--max-semi-space-size=8 --max-old-space-size=512"
# the code caches for this platform (written as root, read-only for the user that runs the bridge)
RUN NATPMP_CLI_WRITE_CODE_CACHE=1 node /app/dist/bin/natpmp-bridge.js --help >/dev/null \
 && NATPMP_CLI_WRITE_CODE_CACHE=1 node /app/dist/bin/natpmp.js --help >/dev/null \
 && ln -s /app/dist/bin/natpmp-bridge.js /usr/local/bin/natpmp-bridge \
 && ln -s /app/dist/bin/natpmp.js /usr/local/bin/natpmp
ENV NODE_ENV=production
# the node image's unprivileged user; port 5351 needs no capability
USER node
EXPOSE 5351/udp
ENTRYPOINT ["node", "/app/dist/bin/natpmp-bridge.js"]
CMD ["serve"]
