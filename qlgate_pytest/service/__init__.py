"""The gate as an HTTP service: ``python -m qlgate_pytest serve``.

``POST /evaluate`` runs the same gate CI runs (pytest with the qlgate plugin, in a subprocess per
job) and answers 200 (approved), 409 (rejected) or 500 (the run failed), or 202 with a job id to
poll under ``?async=true``. Modules, one concern each:

    app.py         FastAPI app factory: routes, status codes, OpenAPI (behind the token)
    schemas.py     request / response bodies (pydantic, the I/O boundary)
    jobs.py        bounded queue, one worker per device, the gate subprocess per job
    job.py         one job: its spec, state and stored record
    store.py       job state on disk: a restarted service answers for earlier jobs
    reaper.py      runs each gate so nothing it starts outlives the job or the service
    auth.py        bearer-token check
    paths.py       confinement of request paths (and the trees under them) to the roots
    references.py  confinement of the paths an adapter's own files name (base model, data)
    metrics.py     the service's own Prometheus metrics for ``/metrics``
    server.py      uvicorn's h11 protocol with header and body read deadlines
    cli.py         ``serve``: arguments, refusing unsafe set-ups, the server

Request bodies are capped by FastAPI's own ``max_body_size`` (413), not by code here.
"""
