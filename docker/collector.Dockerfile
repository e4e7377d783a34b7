# logstream-collector: multi-stage build, small runtime image (distroless: no shell, no
# package manager). Runs as uid 0 with every capability dropped by the chart: kubelet writes container logs 0640 root:root.
# Build from the repository root: docker build -f docker/collector.Dockerfile -t ghcr.io/logstream/collector:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p logstream-collector --bin logstream-collector \
    && install -D target/release/logstream-collector /out/logstream-collector

FROM gcr.io/distroless/cc-debian12
COPY --from=build /out/logstream-collector /usr/local/bin/logstream-collector
USER 0:0
ENTRYPOINT ["/usr/local/bin/logstream-collector"]
