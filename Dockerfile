# One image holds otp-api, otp-dispatcher and fake-plivo; each container picks its command.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p otp-api -p otp-dispatcher -p fake-plivo \
 && mkdir -p /out \
 && cp target/release/otp-api target/release/otp-dispatcher target/release/fake-plivo /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home otp
COPY --from=build /out/ /usr/local/bin/
USER otp
ENV LOG_FORMAT=json
EXPOSE 3000 3001
CMD ["otp-api"]
