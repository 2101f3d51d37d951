# syntax=docker/dockerfile:1
#
# canaryd's container image: `docker build -t canaryd:0.1.0 .`
#
# Two stages. The builder turns canaryd and its dependencies into wheels and installs them into a
# virtualenv; the runtime stage copies only that virtualenv onto a fresh slim Python, adds the two
# programs canaryd runs (git, ssh) and nothing else: no compiler, no pip cache, no apt lists.
# For reproducible builds pin the base image by digest too: python:3.12-slim-bookworm@sha256:...

FROM python:3.12-slim-bookworm AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Metadata first, then the code (README.md is the package's long description). constraints.txt is the
# tested dependency set (scripts/lock.sh): the image runs the versions CI ran. PIP_CONSTRAINT (not -c)
# reaches pip's isolated build environment too. No extras: the sandbox's dependencies stay out.
COPY pyproject.toml README.md constraints.txt ./
COPY canaryd ./canaryd

RUN PIP_CONSTRAINT=/src/constraints.txt python -m pip wheel --wheel-dir /wheels . \
 && python -m venv /opt/canaryd \
 && /opt/canaryd/bin/pip install --no-index --find-links /wheels --compile canaryd \
 && /opt/canaryd/bin/pip uninstall --yes pip


FROM python:3.12-slim-bookworm AS runtime

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="canaryd" \
      org.opencontainers.image.description="GitOps canary controller for KServe InferenceServices" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# canaryd shells out to git (and git to ssh for SSH config repos). Nothing else is installed.
RUN apt-get update \
 && apt-get install --yes --no-install-recommends git openssh-client \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*

# A fixed numeric user, so Kubernetes can check runAsNonRoot without a passwd lookup.
RUN groupadd --system --gid 10001 canaryd \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin canaryd

COPY --from=builder /opt/canaryd /opt/canaryd

# The root filesystem may be read-only (the Helm chart makes it so): git and ssh write under $HOME
# and $TMPDIR only, which the chart mounts as emptyDirs. The bytecode was compiled at build time.
ENV PATH=/opt/canaryd/bin:$PATH \
    HOME=/tmp \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

USER 10001:10001
WORKDIR /tmp

# /healthz /readyz /metrics and the push webhook /hooks/git, all on one port (server.port).
EXPOSE 8080

# For `docker run`; Kubernetes uses the chart's liveness/readiness probes instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=4).status == 200 else 1)"]

ENTRYPOINT ["canaryd"]
CMD ["run"]
