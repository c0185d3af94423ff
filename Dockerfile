# syntax=docker/dockerfile:1
# One build, three small runtime images: docker build --target auth-service|chat-service|gateway;
# and the public entry, nginx with the browser app: docker build --target nginx
# The build needs no database: sqlx reads its query metadata from .sqlx/ (SQLX_OFFLINE=true).

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
ENV SQLX_OFFLINE=true CARGO_TERM_COLOR=never
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p auth-service -p chat-service -p gateway \
 && install -m 0755 target/release/auth-service target/release/chat-service target/release/gateway /usr/local/bin/

# The documentation viewers (/docs, /redoc), from the lock file: served by chat-service, so the
# pages need no internet access.
FROM node:20-bookworm-slim AS docs
WORKDIR /docs
COPY web/docs/package.json web/docs/package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund \
 && mkdir -p /out/@scalar/api-reference/dist/browser /out/redoc/bundles \
 && cp node_modules/@scalar/api-reference/dist/browser/standalone.js /out/@scalar/api-reference/dist/browser/ \
 && cp node_modules/redoc/bundles/redoc.standalone.js /out/redoc/bundles/

# The browser app (web/, on the SDK in clients/typescript), built by Vite into static files.
FROM node:20-bookworm-slim AS web
WORKDIR /src
COPY clients/typescript/package.json clients/typescript/package-lock.json clients/typescript/
COPY web/package.json web/package-lock.json web/
RUN npm ci --prefix clients/typescript --ignore-scripts --no-audit --no-fund \
 && npm ci --prefix web --ignore-scripts --no-audit --no-fund
COPY clients/typescript clients/typescript
COPY web web
RUN cd web && node_modules/.bin/vite build --logLevel warn

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin chatsphere
USER 10001:10001
ENV HOST=0.0.0.0

FROM runtime AS auth-service
COPY --from=build /usr/local/bin/auth-service /usr/local/bin/
ENV PORT=8001
EXPOSE 8001
HEALTHCHECK --interval=10s --timeout=4s --start-period=30s --retries=3 CMD ["auth-service", "health"]
ENTRYPOINT ["auth-service"]

FROM runtime AS chat-service
COPY --from=build /usr/local/bin/chat-service /usr/local/bin/
COPY --from=docs /out /usr/share/chatsphere/docs
ENV PORT=8002 DOCS_ASSETS_DIR=/usr/share/chatsphere/docs
EXPOSE 8002
HEALTHCHECK --interval=10s --timeout=4s --start-period=30s --retries=3 CMD ["chat-service", "health"]
ENTRYPOINT ["chat-service"]

FROM runtime AS gateway
COPY --from=build /usr/local/bin/gateway /usr/local/bin/
ENV PORT=8003
EXPOSE 8003
HEALTHCHECK --interval=10s --timeout=4s --start-period=10s --retries=3 CMD ["gateway", "health"]
ENTRYPOINT ["gateway"]

# nginx with the routes of deploy/nginx (filled in from the environment by the image's
# envsubst templates) and the browser app at /.
FROM nginx:1.27-bookworm AS nginx
COPY deploy/nginx/chatsphere.conf.template /etc/nginx/templates/chatsphere.conf.template
COPY --from=web /src/web/dist /usr/share/chatsphere/web
ENV WEB_ROOT=/usr/share/chatsphere/web
