"""The gate as an HTTP service: ``python -m qlgate_pytest serve``.

``POST /evaluate`` runs the same gate CI runs (pytest with the qlgate plugin, in a subprocess per
job) and answers 200 (approved), 409 (rejected) or 500 (the run failed), or 202 with a job id to
poll under ``?async=true``. Modules, one concern each:

    app.py      FastAPI app factory: routes, status codes, OpenAPI
    schemas.py  request / response bodies (pydantic, the I/O boundary)
    jobs.py     bounded queue, one worker per device, the gate subprocess per job
    auth.py     bearer-token check
    paths.py    confinement of request paths to the configured roots
    metrics.py  the service's own Prometheus metrics for ``/metrics``
    cli.py      ``serve``: arguments, refusing unsafe set-ups, uvicorn

Request bodies are capped by FastAPI's own ``max_body_size`` (413), not by code here.
"""
