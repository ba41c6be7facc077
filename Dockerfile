# Concord server image: the `concord` binary plus the web client (demo page, ES modules, WASM).
# Build: docker build -t concord .      Run: see docker-compose.yml

FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-unknown-unknown
# Toolchain for the browser module; versions match engine-wasm's pinned wasm-bindgen.
RUN cargo install wasm-bindgen-cli --version 0.2.130 && cargo install wasm-pack --version 0.15.1 --locked
COPY . .
RUN cargo build --release -p concord-server --bin concord --bin concord-load \
 && bash scripts/build-wasm.sh --force

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/concord --create-home concord
COPY --from=build /src/target/release/concord /src/target/release/concord-load /usr/local/bin/
COPY --from=build /src/web/demo.html /srv/concord/web/demo.html
COPY --from=build /src/web/src /srv/concord/web/src
COPY --from=build /src/web/pkg /srv/concord/web/pkg
USER concord
WORKDIR /var/lib/concord
ENV CONCORD_WEB_DIR=/srv/concord/web HOST=0.0.0.0 PORT=8080 RUST_LOG=info,sqlx=warn
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=2s CMD ["/bin/sh", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && grep -q ok <&3"]
CMD ["concord"]
