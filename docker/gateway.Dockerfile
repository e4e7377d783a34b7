# logstream-gateway: multi-stage build, small runtime image (distroless: no shell, no
# package manager). Runs as the distroless nonroot user (65532).
# Build from the repository root: docker build -f docker/gateway.Dockerfile -t ghcr.io/logstream/gateway:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p logstream-gateway --bin logstream-gateway \
    && install -D target/release/logstream-gateway /out/logstream-gateway

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/logstream-gateway /usr/local/bin/logstream-gateway
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/logstream-gateway"]
