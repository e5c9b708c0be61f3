# The image that `orchestrator schedule` manifests run (default tag numerics-orchestrator:0.1.0):
#   docker build -t numerics-orchestrator:0.1.0 .
FROM rayproject/ray:2.60.0-py311-gpu
WORKDIR /app
COPY --chown=ray:users . /app
RUN pip install --no-cache-dir -e /app
