# One image for the API, the workers and the beat scheduler; the command picks the role.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    UNLEARN_VAR_DIR=/var/lib/unlearn HOST=0.0.0.0 PORT=8000
WORKDIR /app

COPY pyproject.toml README.md ./
COPY service ./service
COPY workers ./workers
COPY models ./models
COPY migrations ./migrations
RUN pip install . && useradd --system --home /var/lib/unlearn unlearn \
    && mkdir -p /var/lib/unlearn && chown unlearn /var/lib/unlearn

USER unlearn
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request,os; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/healthz')"
CMD ["unlearn", "api"]
