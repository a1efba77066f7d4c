# syntax=docker/dockerfile:1
# The bundled server, `llmguard serve`, in a slim image that runs as a user without privileges.
#   docker build -t llmguard .
#   docker run --rm -p 8000:8000 --env-file .env llmguard
# Configured by environment variables only (docs/deploy/docker.md); /healthz is its health check.
# tests/test_deploy.py checks this file; tests/test_deploy_e2e.py runs its RUN, CMD and HEALTHCHECK
# outside a container, in a clean virtualenv.
ARG PYTHON_VERSION=3.12

# Build: the package and its extras in a virtualenv, which the runtime stage copies whole, so the
# image holds no source tree, pip cache or build dependency (every dependency ships as a wheel).
# The base image's pip installs into the virtualenv, which gets no pip of its own: nothing in the
# image installs packages at run time (a derived image can: python -m pip --python /opt/llmguard/bin/python).
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/llmguard
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY llmguard ./llmguard
# redis: STORAGE_URL=redis://… for several replicas; speed: uvloop, httptools and aiohttp's pool.
RUN python -m venv --without-pip "$VIRTUAL_ENV" \
 && python -m pip --python "$VIRTUAL_ENV/bin/python" install --no-cache-dir ".[redis,speed]"

# Runtime: the same base image (the virtualenv points at its interpreter) and the virtualenv.
FROM python:${PYTHON_VERSION}-slim
LABEL org.opencontainers.image.title="llmguard" \
      org.opencontainers.image.description="A safe LLM proxy for front-end apps" \
      org.opencontainers.image.licenses="MIT"
ENV VIRTUAL_ENV=/opt/llmguard
# HOST: listen on every interface, as a container must to be reached through its published port.
# The port is PORT when the platform sets one (Render, Railway, Cloud Run), else 8000.
ENV PATH="$VIRTUAL_ENV/bin:$PATH" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOST=0.0.0.0
# A numeric user, so that Kubernetes' runAsNonRoot can tell it is not root; it owns no file here.
RUN groupadd --gid 10001 llmguard \
 && useradd --uid 10001 --gid llmguard --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin llmguard
COPY --from=build /opt/llmguard /opt/llmguard
USER 10001:10001
EXPOSE 8000
# Python's urllib, as slim images have no curl; a non-2xx answer or no answer exits non-zero.
# /healthz answers 200 while the process lives, also when Redis is down ("status": "degraded"):
# restarting llmguard would not bring Redis back.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + (os.environ.get('PORT') or '8000') + '/healthz', timeout=4)"]
CMD ["llmguard", "serve"]
