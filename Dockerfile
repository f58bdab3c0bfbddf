# Two images from one build:
#   docker build .                    -> the production image: otp-api and otp-dispatcher only
#   docker build --target fake-plivo  -> the fake provider for local stacks (it prints codes)
FROM rust:1.95-slim-bookworm AS build
# The git revision to report in otp_build_info (docker build --build-arg OTP_REVISION=$(git rev-parse --short HEAD) .)
ARG OTP_REVISION=unknown
ENV OTP_REVISION=$OTP_REVISION
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p otp-api -p otp-dispatcher -p fake-plivo \
 && mkdir -p /out \
 && cp target/release/otp-api target/release/otp-dispatcher target/release/fake-plivo /out/

FROM debian:bookworm-slim AS base
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home otp

# Development only: never deploy it, it prints every message it "sends", codes included.
FROM base AS fake-plivo
COPY --from=build /out/fake-plivo /usr/local/bin/
USER 10001:10001
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s CMD ["fake-plivo", "healthcheck"]
CMD ["fake-plivo"]

# The production image (the default target): each container picks its command.
FROM base AS runtime
COPY --from=build /out/otp-api /out/otp-dispatcher /usr/local/bin/
# Numeric, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
ENV LOG_FORMAT=json
EXPOSE 3000 3001 9464
CMD ["otp-api"]
