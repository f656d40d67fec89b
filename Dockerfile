# ws-gateway: the four processes (and optionally the simulator) under supervisord.
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
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY common ./common
COPY ingest ./ingest
COPY publisher ./publisher
COPY persister ./persister
COPY api ./api
COPY bybitsim ./bybitsim
COPY sql ./sql
COPY scripts ./scripts
COPY supervisord.conf ./

RUN groupadd --system gw && useradd --system --gid gw --home-dir /app --no-create-home gw \
 && mkdir -p /run/ws-gateway /var/log/ws-gateway \
 && chown -R gw:gw /run/ws-gateway /var/log/ws-gateway
USER gw

EXPOSE 4400
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os,urllib.request,sys; h,p=os.environ['API_BIND'].rsplit(':',1); h='127.0.0.1' if h in ('0.0.0.0','') else h; sys.exit(0 if urllib.request.urlopen(f'http://{h}:{p}/health', timeout=2).status==200 else 1)"]

# Applies migrations, then execs supervisord in the foreground (PID 1 reaps children).
ENTRYPOINT ["/app/scripts/docker-entrypoint.sh"]
