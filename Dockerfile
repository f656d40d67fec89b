# ws-gateway: the four processes, the supervisord eventlistener (and, with BYBIT_ENV=sim,
# the simulator) under supervisord as PID 1.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GW_HOME=/app \
    GW_PYTHON=/usr/local/bin/python \
    GW_RUN_DIR=/run/ws-gateway \
    GW_LOG_DIR=/var/log/ws-gateway \
    GW_LOG_MAXBYTES=50MB \
    GW_LOG_BACKUPS=5 \
    GW_SIM_AUTOSTART=false \
    GW_ENV_FILE= \
    PROMETHEUS_MULTIPROC_DIR=/run/ws-gateway/metrics \
    API_BIND=0.0.0.0:4400

WORKDIR /app
# Runtime packages only (pyproject.toml's dependencies; its dev and bench extras stay out of the
# image), at the versions the lock pins. A layer of their own: a code change does not redo it.
COPY pyproject.toml requirements.txt ./
RUN python -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"], sep="\n")' \
      > /tmp/runtime.txt \
 && pip install --no-cache-dir -c requirements.txt -r /tmp/runtime.txt \
 && rm /tmp/runtime.txt

COPY common ./common
COPY ingest ./ingest
COPY publisher ./publisher
COPY persister ./persister
COPY api ./api
COPY ops ./ops
COPY bybitsim ./bybitsim
# The project itself, so every program and script imports its packages by name from any
# directory; no tests/ or bench/ here, so only the gateway's packages are found.
RUN pip install --no-cache-dir --no-deps . \
 && rm -rf build ./*.egg-info
COPY sql ./sql
COPY scripts ./scripts
COPY supervisord.conf ./

# A fixed numeric uid/gid, so volume ownership and `USER` resolve the same on every host.
RUN groupadd --system --gid 10001 gw \
 && useradd --system --uid 10001 --gid gw --home-dir /app --no-create-home gw \
 && mkdir -p /run/ws-gateway /var/log/ws-gateway \
 && chown -R gw:gw /run/ws-gateway /var/log/ws-gateway \
 && chmod 0700 /run/ws-gateway
USER 10001:10001

EXPOSE 4400
# Healthy while supervisord runs every program it should (one an operator stopped counts as
# down), none of ingest/publisher/persister is stalled (status file older than
# GW_STALL_AFTER_S; the eventlistener restarts it meanwhile) and the API answers /health.
# Prints one JSON line naming what is wrong.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-m", "ops", "health"]

# Applies migrations, wipes stale metrics, then execs supervisord in the foreground (PID 1
# reaps children; SIGTERM from `docker stop` stops every program in priority order).
ENTRYPOINT ["/app/scripts/docker-entrypoint.sh"]
