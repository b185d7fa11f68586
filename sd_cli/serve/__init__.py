"""`sd-cli serve`: the model stays loaded and AUTOMATIC1111's HTTP API (/sdapi/v1/*) is served.

- settings.py: what the `serve` command configures (address, auth, model folders, limits);
- schemas.py: the request bodies, with AUTOMATIC1111's field names and defaults (pydantic);
- translate.py: an API request -> sd_cli's RunRequest, refusing what sd_cli cannot honour;
- worker.py: the queue (one render at a time), /progress, interrupt and skip;
- models.py: the checkpoints a client may name, and the loaded ones kept warm;
- rendering.py: a RunRequest rendered to PNG bytes with the CLI's parameters text;
- app.py: the FastAPI application; command.py: the command itself (uvicorn).

fastapi and uvicorn are an optional extra (`pip install "sd-cli[serve]"`); nothing here is imported by
`sd-cli --help`.
"""
