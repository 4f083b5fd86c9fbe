# Heimdall container: build with the locked dependency set, run as a non-root user.
# Build:  docker build -t heimdall .
# Run:    docker run -p 8080:8080 -e HEIMDALL__AUTH__ADMIN_TOKENS=... -e HEIMDALL__AUTH__GATEWAY_TOKENS=... heimdall
# (Without tokens Heimdall refuses to listen on 0.0.0.0.)

FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, so that source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src benches && echo 'fn main() {}' > src/main.rs && echo '' > src/lib.rs \
    && for b in engine flush grpc; do echo 'fn main() {}' > "benches/$b.rs"; done \
    && cargo build --release --locked --bin heimdall \
    && rm -rf src benches
COPY src ./src
COPY benches ./benches
COPY migrations ./migrations
# The dashboard's files are compiled into the binary (src/http/ui.rs).
COPY ui ./ui
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin heimdall

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 heimdall \
    && useradd --system --uid 10001 --gid heimdall --home-dir /var/lib/heimdall --create-home heimdall
COPY --from=build /src/target/release/heimdall /usr/local/bin/heimdall
COPY config.example.toml /etc/heimdall/config.example.toml
USER heimdall:heimdall
WORKDIR /var/lib/heimdall
ENV HEIMDALL_LISTEN=0.0.0.0:8080 \
    HEIMDALL_DATABASE_URL=sqlite:///var/lib/heimdall/heimdall.db
VOLUME ["/var/lib/heimdall"]
# 8080: the API, /metrics and the dashboard at /ui/.
# 8081: Envoy's rate limit service, when HEIMDALL__GRPC_LISTEN=0.0.0.0:8081 is set.
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/heimdall"]
CMD ["serve"]
