# hemostat images for machines that can pull from a registry (the online path):
#   docker compose build          (or: docker build --target hemostat -t hemostat:local .)
# Machines with no registry use scripts/build-images.sh instead, which builds the same images
# FROM scratch from binaries compiled on the host (docker/Dockerfile.local).

# ---- build: static binaries, so the runtime images need no libc ----
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked \
        --target x86_64-unknown-linux-gnu \
        -p hemostat-monitor -p hemostat-analyzer -p hemostat-responder -p hemostat-alert \
        -p hemostat-dashboard \
        -p hemostat-patient \
    && mkdir -p /out \
    && cp target/x86_64-unknown-linux-gnu/release/hemostat-monitor \
          target/x86_64-unknown-linux-gnu/release/hemostat-analyzer \
          target/x86_64-unknown-linux-gnu/release/hemostat-responder \
          target/x86_64-unknown-linux-gnu/release/hemostat-alert \
          target/x86_64-unknown-linux-gnu/release/hemostat-dashboard /out/ \
    && strip /out/* \
    && cp target/x86_64-unknown-linux-gnu/release/hemostat-patient /patient && strip /patient

# ---- hemostat: every agent in one minimal image; compose picks the command ----
FROM scratch AS hemostat
LABEL org.opencontainers.image.title=hemostat
# reqwest (rustls) loads the system CA store and cannot start without one.
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/ /usr/local/bin/
ENV PATH=/usr/local/bin SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
EXPOSE 9311 9312 9313 9314 9315 8080

# ---- patient: the demo and test container ----
FROM scratch AS patient
LABEL org.opencontainers.image.title=hemostat-patient
COPY --from=build /patient /patient
ENTRYPOINT ["/patient"]
