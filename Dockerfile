FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
# Pango: WeasyPrint renders the signed case report as PDF.
RUN apt-get update && apt-get install -y --no-install-recommends libpango-1.0-0 libpangoft2-1.0-0 \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
RUN useradd --create-home wbc && mkdir -p /data && chown wbc /data
USER wbc
EXPOSE 8000
CMD ["uvicorn", "wbcportal.asgi:application", "--host", "0.0.0.0", "--port", "8000"]
