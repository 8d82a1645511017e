# The recsys service image: `docker build -t recsys .`, then
# `docker run -p 8000:8000 -v /path/to/artifacts:/artifacts recsys` serves what /artifacts/CURRENT names.
# It installs the project's own metadata with its `serve` extra (no Beam, TFRS, matplotlib: the service
# never imports them) at the versions of constraints.txt. Estimated size: docs/OPERATIONS.md.
# Artifacts in a bucket: `docker build --build-arg EXTRAS=serve,gcp` (or serve,aws) adds Beam's filesystem,
# then `docker run recsys-gcp --root gs://bucket/recsys` (a later --root wins over the one below).
FROM python:3.11-slim
ARG EXTRAS=serve

WORKDIR /app
# Dependencies first: a layer that changes only with setup.cfg / constraints.txt
COPY setup.cfg pyproject.toml constraints.txt README.md ./
COPY recsys/__init__.py recsys/__init__.py
RUN pip install --no-cache-dir -c constraints.txt ".[${EXTRAS}]" && pip uninstall --yes recsys
COPY recsys recsys
COPY pipelines pipelines
COPY serving serving
RUN pip install --no-cache-dir --no-deps . && useradd --create-home --uid 10001 recsys
USER 10001

EXPOSE 8000
VOLUME ["/artifacts"]
# ready = a version is loaded (/healthz is 200 with nothing loaded)
HEALTHCHECK --interval=30s --timeout=3s --start-period=120s \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz').status != 200)"]
ENTRYPOINT ["recsys", "serve", "--root", "/artifacts", "--host", "0.0.0.0", "--port", "8000"]
