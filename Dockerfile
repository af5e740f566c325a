# drover as a container entrypoint: a static (musl) binary on a small
# Debian base. See docs/container.md.
#
#   docker build -t drover .
#   docker run --rm -v "$PWD/configs:/etc/drover:ro" drover
#
# To put drover into an image of your own, copy the binary out of this one:
#
#   COPY --from=drover /usr/local/bin/drover /usr/local/bin/drover
#   ENTRYPOINT ["/usr/local/bin/drover", "run", "/etc/drover"]

# ---- build: exactly what CI runs, then the static binary -------------------
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# .ci/run installs what its steps need (python3, util-linux, g++,
# redis-server, musl-tools, binutils), adds the musl target, and runs
# fmt, clippy, rustdoc, the tests, the static build and its PID-1 tests,
# the chaos soak and the fuzzers. A failing step fails the image build.
RUN bash .ci/run
RUN cargo build --release --target x86_64-unknown-linux-musl --quiet \
    && strip -o /drover target/x86_64-unknown-linux-musl/release/drover

# ---- runtime ----------------------------------------------------------------
# The binary needs nothing from the image (no libc, no loader); the base
# is there for the programs drover runs. Any image works, `scratch` too
# if your children are static as well.
FROM debian:bookworm-slim
COPY --from=build /drover /usr/local/bin/drover
# The control socket (`drover status` inside the container) and the
# durable queues' store default to these paths for root.
RUN mkdir -p /etc/drover /var/lib/drover
# Ask drover to stop the way `docker stop` does; drover stops its groups
# in order and exits 0, or 3 when something had to be SIGKILLed.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/drover", "run", "/etc/drover"]
