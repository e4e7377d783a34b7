# logstream-operator: multi-stage build, small runtime image (distroless: no shell, no
# package manager). Runs as the distroless nonroot user (65532).
# Build from the repository root: docker build -f docker/operator.Dockerfile -t ghcr.io/logstream/operator:0.1.0 .
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p logstream-operator --bin logstream-operator \
    && install -D target/release/logstream-operator /out/logstream-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/logstream-operator /usr/local/bin/logstream-operator
USER nonroot:nonroot
ENTRYPOINT ["/usr/local/bin/logstream-operator"]
