# The recsys service image: `docker build -t recsys .`, then
# `docker run -p 8000:8000 -v /path/to/artifacts:/artifacts recsys` serves what /artifacts/CURRENT names.
FROM python:3.11-slim

WORKDIR /app
# Dependencies first (a layer that changes only with setup.cfg / constraints.txt)
COPY setup.cfg pyproject.toml constraints.txt README.md ./
COPY recsys/__init__.py recsys/__init__.py
RUN pip install --no-cache-dir -c constraints.txt tensorflow tf-keras tensorflow-recommenders "scann[tf]" \
        "apache-beam[dataframe,tfrecord]" pandas pyarrow numpy PyYAML fastapi fastapi-offline uvicorn uvloop \
        httptools pydantic prometheus-client matplotlib scipy
COPY recsys recsys
COPY pipelines pipelines
COPY serving serving
RUN pip install --no-cache-dir --no-deps . && useradd --create-home recsys
USER recsys

EXPOSE 8000
VOLUME ["/artifacts"]
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz').status != 200)"
ENTRYPOINT ["recsys", "serve", "--root", "/artifacts", "--host", "0.0.0.0", "--port", "8000"]
